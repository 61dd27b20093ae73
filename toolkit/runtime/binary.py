"""Binary stream messages for `/v1/streams`: a fixed little-endian header, the stream's name and
the raw values, so that a client sending one small step per message (a sensor, an audio frame)
pays neither JSON encoding nor parsing. Checked as strictly as JSON messages: the same refusals
(width, finite values, token range, --max-chunk) with what was wrong and what is accepted.

A message (client -> server), all integers little-endian:

    offset  size  field
    0       1     version: 1
    1       1     kind: 0 chunk, 1 reset, 2 end
    2       2     n: bytes of the stream name (uint16, 1..256)
    4       4     steps (uint32): the chunk's steps; 0 for reset and end
    8       n     the stream name, UTF-8
    8+n     ...   a chunk's values: float32 [steps, F] row by row (features) or int32 [steps]
                  token ids (tokens); nothing for reset and end

A reply to a binary message is binary:

    0       1     version: 1
    1       1     kind: 0 outputs (a chunk, or an end: its last frame's output, if any), 1 reset
    2       2     n: bytes of the stream name
    4       4     step: the index of the chunk's first step (an end: the steps the stream ran)
    8       4     rows: outputs that follow (a chunk's steps; frames completed for frame-stacked)
    12      4     width: values per output (the output's K)
    16      4     frame: the first output's frame (frame-stacked models; else = step)
    20      4     buffered: steps waiting for their frame (frame-stacked models; else 0)
    24      n     the stream name
    24+n    ...   float32 [rows, width] outputs

Refusals stay JSON text frames ({"message", "stream", "error", "code"}), as for JSON messages.
"""

from __future__ import annotations

import struct

import numpy as np

from toolkit.runtime.messages import MAX_NAME, Message, MessageError

VERSION = 1
HEADER = struct.Struct("<BBHI")
REPLY = struct.Struct("<BBHIIIII")
KINDS = ("chunk", "reset", "end")
REPLY_KINDS = {"chunk": 0, "end": 0, "reset": 1}


def parse(data: bytes, input_spec: dict, max_chunk: int) -> Message:
    """One binary message -> a Message, or a MessageError saying what is wrong."""
    if len(data) < HEADER.size:
        raise MessageError(f"a binary message starts with an {HEADER.size}-byte header; got {len(data)} bytes")
    version, kind, size, steps = HEADER.unpack_from(data)
    if version != VERSION:
        raise MessageError(f"binary message version {version}; accepted: {VERSION}")
    if kind >= len(KINDS):
        raise MessageError(f"binary message kind {kind}; accepted: 0 chunk, 1 reset, 2 end")
    if not 1 <= size <= MAX_NAME or len(data) < HEADER.size + size:
        raise MessageError(f"binary message: a stream name of {size} bytes; accepted: 1..{MAX_NAME}, all present")
    try:
        stream = data[HEADER.size : HEADER.size + size].decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("binary message: the stream name is not UTF-8") from None
    body = memoryview(data)[HEADER.size + size :]
    try:
        return Message(stream, KINDS[kind], _values(body, KINDS[kind], steps, input_spec, max_chunk), binary=True)
    except MessageError as e:
        e.stream = stream
        raise


def _values(body: memoryview, kind: str, steps: int, spec: dict, max_chunk: int) -> np.ndarray | None:
    if kind != "chunk":
        if steps or len(body):
            raise MessageError(f"a binary {kind} carries no steps; got steps {steps} and {len(body)} bytes of values")
        return None
    if steps == 0:
        raise MessageError("a binary chunk needs at least one step (header steps is 0)")
    if steps > max_chunk:
        raise MessageError(f"a binary chunk of {steps} steps; at most {max_chunk} per message", code=413)
    tokens = spec["kind"] == "tokens"
    width = 1 if tokens else spec["num_features"]
    what = "int32 token ids" if tokens else f"float32 values ({width} per step)"
    want = steps * width * 4
    if len(body) != want:
        raise MessageError(f"a binary chunk of {steps} steps holds {want} bytes of {what}; got {len(body)}")
    if tokens:
        ids = np.frombuffer(body, dtype="<i4").astype(np.int64)
        bad = (ids < 0) | (ids >= spec["vocab_size"])
        if bad.any():
            step, top = int(np.argmax(bad)), spec["vocab_size"] - 1
            raise MessageError(f"step {step + 1}: token id {ids[step]} is outside the vocabulary (0..{top})")
        return ids
    x = np.frombuffer(body, dtype="<f4").reshape(steps, width).astype(np.float32)
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise MessageError(f"step {row + 1}, feature {col + 1}: {x[row, col]} is not a finite number")
    return x


def reply(kind: str, stream: str, step: int, outputs: np.ndarray, frame: int, waiting: int) -> bytes:
    """The binary reply to a binary message: outputs [rows, width] (rows may be 0)."""
    name = stream.encode("utf-8")
    values = np.ascontiguousarray(outputs, dtype="<f4")
    rows, width = values.shape
    head = REPLY.pack(VERSION, REPLY_KINDS[kind], len(name), step, rows, width, frame, waiting)
    return head + name + values.tobytes()
