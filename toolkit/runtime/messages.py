"""Stream messages (one JSON object per line) -> validated model input, and outputs -> replies.

    {"stream": "a", "tokens": ["h", "i"]}        a chunk of tokens
    {"stream": "a", "features": [[0.1, 2.0]]}    a chunk of feature steps
    {"stream": "a", "reset": true}               start the stream again from the initial state
    {"stream": "a", "end": true}                 close the stream

A frame-stacked model (model.frame_stack: K) answers once per frame of K steps: a chunk's reply
holds one output per frame it completed (possibly none) with "frame" and "buffered"; an end
answers the steps still waiting with one last output (`Codec.tail`).

Every problem is a MessageError naming the field and what is accepted; the caller answers that
line with an error object and goes on with the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain

import numpy as np

from toolkit.core.data.encode import FLOAT32_MAX
from toolkit.core.data.vocab import Vocabulary
from toolkit.core.jsontext import JSONTextError, parse
from toolkit.core.streaming import frame_stack

FIELDS = {"stream", "tokens", "features", "reset", "end"}
MAX_NAME = 256  # bytes of a stream name in UTF-8, in JSON and binary messages alike
NUMBERS = frozenset((float, int))
FEATURE_MESSAGE = {"stream", "features"}


def loads(text: str | bytes):
    """JSON text -> object under rnnkit's one decoding policy (`toolkit.core.jsontext`), or a
    MessageError (400) saying what is wrong and where."""
    try:
        return parse(text)
    except JSONTextError as e:
        raise MessageError(f"malformed JSON: {e}") from None


def too_long(name: str) -> bool:
    """Whether a stream name is over MAX_NAME bytes (a server keeps every open stream's name)."""
    return len(name) > MAX_NAME or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME


def unknown_stream(name: str, kind: str, where: str = "") -> str:
    """The refusal of a reset or end of a stream that is not open (code 404 on a server)."""
    return f"unknown stream {name!r}{where}: a chunk opens a stream; {kind} needs an open one"


def control_reply(name: str, kind: str, steps: int, tail: dict | None = None) -> dict:
    """The reply to a reset ({"stream", "reset": true}) or an end ({"stream", "end": true, "steps":
    the steps the stream ran}, and for a frame-stacked model its `Codec.tail`)."""
    if kind == "reset":
        return {"stream": name, "reset": True}
    return {"stream": name, "end": True, "steps": steps, **(tail or {})}


class MessageError(ValueError):
    """A message that cannot be run; `stream` names its stream once known, `code` is the HTTP-style
    status a server answers with (400 malformed, 413 too large)."""

    def __init__(self, message: str, stream: str | None = None, code: int = 400):
        super().__init__(message)
        self.stream = stream
        self.code = code


@dataclass
class Message:
    stream: str
    kind: str  # "chunk" | "reset" | "end"
    chunk: np.ndarray | None = None
    unknown: int = 0  # tokens mapped to <unk>
    binary: bool = False  # came as a binary message (toolkit.runtime.binary): answered in kind


class Codec:
    """Turns messages into model input with a bundle manifest's input spec."""

    def __init__(self, manifest: dict, max_chunk: int = 4096):
        self.input = manifest["input"]
        self.output = manifest["output"]
        self.max_chunk = max_chunk
        self.frame_stack = frame_stack(manifest)
        if self.input["kind"] == "tokens":
            self.vocab = Vocabulary(self.input["vocab"])

    def parse(self, line: str | bytes) -> Message:
        return self.message(loads(line))

    def message(self, obj) -> Message:
        """A message already decoded from JSON (one element of a server's array frame, say)."""
        if not isinstance(obj, dict):
            raise MessageError(f"a message must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - FIELDS)
        if unknown:
            raise MessageError(f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(FIELDS))}")
        stream = obj.get("stream")
        if not isinstance(stream, str) or not stream:
            raise MessageError('"stream" must be a non-empty string naming the stream')
        if too_long(stream):  # refused without echoing the name
            raise MessageError(f'"stream" is a name of {len(stream)} characters; at most {MAX_NAME} bytes in UTF-8')
        try:
            return self._message(stream, obj)
        except MessageError as e:
            e.stream = stream
            raise

    def _message(self, stream: str, obj: dict) -> Message:
        kinds = [k for k in ("tokens", "features", "reset", "end") if k in obj]
        if len(kinds) != 1:
            raise MessageError('give exactly one of "tokens", "features", "reset": true or "end": true')
        kind = kinds[0]
        if kind in ("reset", "end"):
            if obj[kind] is not True:
                raise MessageError(f'"{kind}" must be true')
            return Message(stream, kind)
        return Message(stream, "chunk", *self.steps(kind, obj[kind], self.max_chunk))

    def steps(self, kind: str, values, limit: int | None = None) -> tuple[np.ndarray, int]:
        """A chunk or sequence given as "tokens" (strings) or "features" (lists of numbers), as
        model input, and the number of tokens mapped to <unk>."""
        if kind != ("tokens" if self.input["kind"] == "tokens" else "features"):
            raise MessageError(f'this model takes "{self.input["kind"]}", not "{kind}"')
        if not isinstance(values, list) or not values:
            raise MessageError(f'"{kind}" must be a non-empty list of steps')
        if limit is not None and len(values) > limit:
            raise MessageError(f'"{kind}" has {len(values)} steps; at most {limit} per message', code=413)
        if kind == "tokens":
            return self._tokens(values)
        return self._features(values), 0

    def _tokens(self, tokens: list) -> tuple[np.ndarray, int]:
        if not all(isinstance(t, str) for t in tokens):
            raise MessageError('"tokens" must be a list of strings')
        if self.input.get("lowercase"):
            tokens = [t.lower() for t in tokens]
        return self.vocab.encode(tokens), self.vocab.count_unknown(tokens)

    def _checked(self, steps: list) -> np.ndarray | None:
        """Steps as float32 [n, width], or None if any is not acceptable. As exact as the loop of
        `_features`, which names the problem: plain numbers only (no bools, no strings, which
        NumPy would convert), a rectangle of the model's width, finite in float32."""
        width = self.input["num_features"]
        if not (
            all(type(step) is list and len(step) == width for step in steps)
            and NUMBERS.issuperset(map(type, chain.from_iterable(steps)))
        ):
            return None
        try:
            x = np.array(steps, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            return None
        return x.astype(np.float32) if np.abs(x).max() <= FLOAT32_MAX else None  # False for NaN and inf

    def messages(self, items: list) -> list[Message | MessageError]:
        """The elements of an array frame -> each one's Message, or the MessageError refusing it.
        A frame of plain feature chunks (a gateway's usual frame) is checked and converted in one
        NumPy pass; anything else, element by element."""
        fast = self._feature_frame(items)
        if fast is not None:
            return fast
        out: list[Message | MessageError] = []
        for obj in items:
            try:
                out.append(self.message(obj))
            except MessageError as e:
                out.append(e)
        return out

    def _feature_frame(self, items: list) -> list[Message] | None:
        if self.input["kind"] != "features":
            return None
        for obj in items:
            if not (
                type(obj) is dict
                and obj.keys() == FEATURE_MESSAGE
                and type(obj["stream"]) is str
                and 0 < len(obj["stream"]) <= MAX_NAME // 4
                and type(obj["features"]) is list
                and 0 < len(obj["features"]) <= self.max_chunk
            ):
                return None
        x = self._checked([step for obj in items for step in obj["features"]])
        if x is None:
            return None
        out, at = [], 0
        for obj in items:
            n = len(obj["features"])
            out.append(Message(obj["stream"], "chunk", x[at : at + n]))
            at += n
        return out

    def _features(self, steps: list) -> np.ndarray:
        width = self.input["num_features"]
        x = self._checked(steps)
        if x is not None:
            return x
        for i, step in enumerate(steps, start=1):  # find and name the first bad value
            if not isinstance(step, list) or len(step) != width:
                got = len(step) if isinstance(step, list) else type(step).__name__
                raise MessageError(f"step {i} must be a list of {width} numbers, got {got}")
            for j, v in enumerate(step, start=1):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise MessageError(f"step {i}, feature {j}: expected a number, got {v!r}")
                if isinstance(v, float) and not math.isfinite(v):  # (an int is finite, maybe huge)
                    raise MessageError(f"step {i}, feature {j}: {v} is not a finite number")
                if abs(v) > FLOAT32_MAX:
                    shown = str(v) if len(str(v)) <= 24 else f"{str(v)[:12]}...({len(str(v))} digits)"
                    raise MessageError(f"step {i}, feature {j}: {shown} is beyond float32's range (±{FLOAT32_MAX:.4g})")
        raise AssertionError("unreachable: the fast path refused a valid chunk")

    def present(self, outputs: np.ndarray) -> list[dict]:
        """Outputs of a batch of chunks [rows, steps, ...] -> per row {"outputs": rounded values,
        "predictions": labels or next tokens}; one NumPy pass for the whole batch."""
        rounded = np.round(outputs.astype(np.float64), 6).tolist()
        names = self.output.get("labels")
        if names is None and self.output["name"] == "logits":  # lm: the most likely next token
            names = self.input["vocab"]
        if names is None:
            return [{"outputs": row} for row in rounded]
        best = outputs.argmax(-1).tolist()
        return [{"outputs": row, "predictions": [names[i] for i in b]} for row, b in zip(rounded, best, strict=True)]

    def reply(self, stream: str, start: int, presented: dict, unknown: int = 0, frame: int = 0, waiting: int = 0):
        """The reply to one chunk, from its row of `present`. A frame-stacked model's also says
        which frame its first output ends (`frame`: output j is the prediction for the steps up
        to (frame + j + 1) * K - 1) and how many steps wait for their frame (`buffered`)."""
        out = {"stream": stream, "step": start, **presented}
        if self.frame_stack > 1:
            out.update(frame=frame, buffered=waiting)
        if unknown:
            out["unknown_tokens"] = unknown
        return out

    def tail(self, frame: int, waiting: int, presented: dict) -> dict | None:
        """What an end adds for a frame-stacked model: the output for the steps that waited for
        their frame (`present`ed, one row, or none when no step waited), so that no accepted step
        goes unanswered; None for other models."""
        if self.frame_stack == 1:
            return None
        return {"frame": frame, "buffered": waiting, **presented}
