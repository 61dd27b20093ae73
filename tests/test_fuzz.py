"""Fuzzing with a bounded budget: hostile traffic against a real server (the longer run is
`python -m benchmarks.fuzz_serve`), and property tests of the two parsers of hostile input, the
message codec and the bundle manifest."""

from __future__ import annotations

import copy
import json
import shutil
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_serve import WIDTH, failures, fuzz
from benchmarks.models import feature_bundle
from toolkit.core.bundle import BundleError, read_manifest
from toolkit.runtime import binary
from toolkit.runtime.engine import Engine
from toolkit.runtime.messages import Codec, MessageError

MANIFEST = {"input": {"kind": "features", "num_features": 3}, "output": {"name": "values"}}
VOCAB = ["<pad>", "<unk>", "<bos>", "<eos>", "a"]
TOKENS = {"input": {"kind": "tokens", "vocab": VOCAB, "vocab_size": len(VOCAB)}, "output": {"name": "logits"}}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return feature_bundle(tmp_path_factory.mktemp("fuzz"), bidirectional=False, hidden=16, layers=1, features=WIDTH)


def test_hostile_traffic_never_stops_the_server(bundle, tmp_path):
    result = fuzz(bundle, messages=800, seed=3, log_path=tmp_path / "server.log")
    print(json.dumps(result))
    assert result["messages"] > 800 and result["closed_1009"] > 0 and result["refused"] > 0
    assert failures(result) == [], (failures(result), (tmp_path / "server.log").read_text()[-3000:])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
MESSAGES = st.fixed_dictionaries(
    {"stream": st.text(min_size=1, max_size=5)},
    optional={"features": JSON, "tokens": JSON, "reset": JSON, "end": JSON, "x": JSON},
)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200) | MESSAGES.map(json.dumps))
def test_any_text_is_a_message_or_a_400_and_every_reply_encodes(text):
    """What broke the server: a message accepted whose reply could not be encoded."""
    for codec in (Codec(MANIFEST, max_chunk=4), Codec(TOKENS, max_chunk=4)):
        try:
            msg = codec.parse(text)
        except MessageError as e:
            assert e.code in (400, 413)
            orjson.dumps({"stream": e.stream, "error": str(e)})
            continue
        orjson.dumps({"stream": msg.stream, "steps": 0})  # raises on a name no reply could carry


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=64)
    | st.builds(
        lambda head, name, body: struct.pack("<BBHI", *head) + name + body,
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 6), st.integers(0, 5)),
        st.binary(max_size=6),
        st.binary(max_size=48),
    )
)
def test_any_bytes_are_a_binary_message_or_a_refusal_and_every_reply_packs(data):
    for manifest in (MANIFEST, TOKENS):
        try:
            msg = binary.parse(data, manifest["input"], 4)
        except MessageError as e:
            assert e.code in (400, 413)
            orjson.dumps({"stream": e.stream, "error": str(e)})
            continue
        if msg.chunk is not None:
            assert 1 <= len(msg.chunk) <= 4 and (msg.chunk.dtype == np.int64 or np.isfinite(msg.chunk).all())
        binary.reply(msg.kind, msg.stream, 0, np.zeros((1, 3), np.float32), 0, 0)


@settings(max_examples=300, deadline=None)
@given(frame=st.lists(MESSAGES | JSON, min_size=1, max_size=6))
def test_an_array_frame_gives_one_result_per_element(frame):
    codec = Codec(MANIFEST, max_chunk=4)
    results = codec.messages(frame)
    assert len(results) == len(frame)
    for result in results:
        if not isinstance(result, MessageError):
            orjson.dumps({"stream": result.stream})


def _paths(node, at=()):
    yield at
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*at, key))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_manifest_with_any_field_replaced_is_read_or_refused_by_name(bundle, tmp_path_factory, data):
    """Replace one node anywhere in a real manifest with any JSON value (or drop it): reading the
    bundle, and starting an engine on it, gives the manifest or a BundleError, nothing else."""
    original = json.loads((bundle / "manifest.json").read_text())
    paths = sorted((p for p in _paths(original) if p), key=repr)
    path = data.draw(st.sampled_from(paths), label="path")
    manifest = copy.deepcopy(original)
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="drop") and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON, label="value")
    b = tmp_path_factory.mktemp("m") / "bundle"
    shutil.copytree(bundle, b)
    try:
        text = json.dumps(manifest)
    except ValueError:
        return
    (b / "manifest.json").write_text(text)
    try:
        read_manifest(b)
        Engine(b, device="cpu")
    except BundleError as e:
        assert str(b) in str(e)
