"""The stream message codec: its fast paths (one message, and a whole array frame in one NumPy
pass) accept and refuse exactly what the element-by-element check does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.runtime.messages import Codec, MessageError

MANIFEST = {"input": {"kind": "features", "num_features": 3}, "output": {"name": "values"}}
BAD_VALUES = [True, False, None, "1.5", [1.0], float("nan"), float("inf"), 1e39, -1e39, 10**400]


def slow(codec: Codec, obj) -> tuple:
    """What the element-by-element check says: (stream, chunk) or the error's words."""
    try:
        msg = codec.message(obj)
    except MessageError as e:
        return ("error", e.stream, str(e))
    return (msg.stream, msg.kind, None if msg.chunk is None else msg.chunk.tolist())


def as_tuple(result) -> tuple:
    if isinstance(result, MessageError):
        return ("error", result.stream, str(result))
    return (result.stream, result.kind, None if result.chunk is None else result.chunk.tolist())


@pytest.mark.parametrize("seed", range(20))
def test_array_frames_give_what_each_message_alone_gives(seed):
    codec = Codec(MANIFEST, max_chunk=4)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(int(rng.integers(1, 12))):
        steps = rng.normal(size=(int(rng.integers(1, 6)), 3)).round(3).tolist()  # 5 steps: over max_chunk
        if rng.random() < 0.15:
            steps[0][int(rng.integers(3))] = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
        if rng.random() < 0.05:
            steps[-1] = steps[-1][:2]
        items.append(
            {"stream": f"s{i}", "features": steps} if rng.random() > 0.05 else {"stream": f"s{i}", "end": True}
        )
    got = [as_tuple(r) for r in codec.messages(items)]
    assert got == [slow(codec, obj) for obj in items]
    refused = [g[2] for g in got if g[0] == "error"]
    print(f"seed {seed}: {len(items)} messages, refused: {refused}")


def test_every_bad_value_is_named_on_both_paths():
    """Values JSON can carry are named by step and feature, alone and in a frame; NaN, infinities
    and numbers beyond float64 are not JSON and are refused by the parser, with their column."""
    codec = Codec(MANIFEST)
    for value in BAD_VALUES:
        obj = {"stream": "a", "features": [[0.0, 1.0, 2.0], [0.5, value, 0.5]]}
        text = (
            json.dumps(obj)
            if value != 10**400
            else ('{"stream": "a", "features": [[0.0, 1.0, 2.0], [0.5, 1' + "0" * 400 + ", 0.5]]}")
        )
        with pytest.raises(MessageError) as alone:
            codec.parse(text)
        [in_frame] = codec.messages([obj])
        print(f"{value!r:.20}: {alone.value} | {in_frame}")
        assert "step 2, feature 2" in str(in_frame)
        if isinstance(value, float) and not abs(value) < float("inf") or value == 10**400:
            assert str(alone.value).startswith("malformed JSON: ") and "(at column " in str(alone.value)
            assert "NaN" in str(alone.value) or "Infinity" in str(alone.value) or "float64" in str(alone.value)
        else:
            assert str(in_frame) == str(alone.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"stream": "\\ud800", "features": [[1, 2, 3]]}', "no low surrogate in string"),
        ('[{"stream": "a\\udfff", "features": [[1, 2, 3]]}]', "surrogate"),
        ("[" * 5000 + "]" * 5000, "depth limit exceeded"),
        ('{"stream": "a", "features": [[1, 2, ' + "9" * 5000 + "]]}", "beyond float64's range"),
        ('{"stream": "a", "features": [[1, 2, -Infinity]]}', "-Infinity is not a JSON number"),
        ("{not json", "(at column 2)"),
    ],
)
def test_what_orjson_refuses_is_refused_with_its_column(text, words):
    """One policy: the standard library would accept a lone surrogate (which no reply can then
    encode: it ended the server's batcher), nest 5,000 deep or read a 5,000-digit integer."""
    with pytest.raises(MessageError) as refused:
        Codec(MANIFEST).parse(text)
    print(refused.value)
    assert (
        refused.value.code == 400 and str(refused.value).startswith("malformed JSON: ") and words in str(refused.value)
    )
