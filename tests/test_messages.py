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
    codec = Codec(MANIFEST)
    for value in BAD_VALUES:
        text = (
            json.dumps({"stream": "a", "features": [[0.0, 1.0, 2.0], [0.5, value, 0.5]]})
            if value != 10**400
            else ('{"stream": "a", "features": [[0.0, 1.0, 2.0], [0.5, 1' + "0" * 400 + ", 0.5]]}")
        )
        with pytest.raises(MessageError) as alone:
            codec.parse(text)
        [in_frame] = codec.messages([json.loads(text)])
        print(f"{value!r:.20}: {alone.value}")
        assert "step 2, feature 2" in str(alone.value) and str(in_frame) == str(alone.value)
