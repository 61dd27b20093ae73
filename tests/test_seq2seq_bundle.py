"""Seq2seq bundles (encoder.onnx + decoder_step.onnx): the certificate passes on a trained model
and fails on broken graphs (the detection suite); the manifest is checked; `rnnkit infer`,
`rnnkit serve` (POST /v1/infer) and the MLflow pyfunc model decode with greedy or beam search and
answer the same; `verify` re-certifies against the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper

from tests import helpers
from tests.serving import http, server
from tests.test_seq2seq import config, reverse_pairs
from toolkit.core.bundle import BundleError, read_manifest
from toolkit.core.search import Search
from toolkit.export import seq2seq_parity
from toolkit.export.exporter import certify_seq2seq, export
from toolkit.runtime.engine import Engine, InputError
from toolkit.runtime.infer import result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A biLSTM encoder with additive attention, trained on the letter-reversal pairs, exported."""
    from toolkit.train.loop import train

    root = tmp_path_factory.mktemp("s2s")
    train(config(root, "lstm", True, "additive", epochs=6), progress=False, log=lambda m: None)
    exported = export(root / "run", root / "bundle", seed=0)
    assert exported.written, [c.reason for c in exported.report.failures]
    test = reverse_pairs(root / "test.jsonl", n=40, seed=11)
    return {"root": root, "run": root / "run", "bundle": root / "bundle", "report": exported.report, "test": test}


def test_the_certificate_covers_both_graphs_padding_and_decoding(trained):
    report = trained["report"]
    names = [c.name for c in report.cases]
    for c in report.cases:
        extra = f" identical {c.identical}, near-ties {len(c.near_ties)}" if hasattr(c, "identical") else ""
        print(f"{c.name:<52} {c.graph:<32} {c.max_abs:.1e} budget {c.budget:.1e} margin {c.margin:.3f}{extra}")
    assert report.passed
    assert {c.graph for c in report.cases} >= {"encoder.onnx", "decoder_step.onnx"}
    for output in ("memory", "keys", "mask", "h", "c", "logprobs", "attention", "h_next", "c_next"):
        assert any(n.endswith(f": {output}") for n in names), output
    assert "padded batch vs one at a time: logprobs" in names
    decoded = [c for c in report.cases if isinstance(c, seq2seq_parity.DecodeCase)]
    assert [c.shapes["beam"] for c in decoded] == [1, 5]
    assert all(c.identical + len(c.near_ties) == seq2seq_parity.DECODED for c in decoded)
    certificate = json.loads((trained["bundle"] / "parity.json").read_text())
    assert certificate["summary"]["passed"] and len(certificate["cases"]) == len(report.cases)


def test_the_manifest_describes_the_encoder_decoder(trained):
    manifest = read_manifest(trained["bundle"])
    assert set(manifest["graphs"]) == {"encoder.onnx", "decoder_step.onnx"}
    assert manifest["task"] == "seq2seq" and manifest["output"]["name"] == "logprobs"
    assert manifest["output"]["vocab"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert manifest["model"]["decoder"] == {"cell": "lstm", "num_layers": 1, "hidden_size": 24}
    assert manifest["model"]["attention"] == "additive" and manifest["reader"]["target_level"] == "word"
    assert [s["name"] for s in manifest["state"]] == ["h", "c"] and manifest["state"][0]["shape"] == [1, "batch", 24]
    assert manifest["graphs"]["decoder_step.onnx"]["inputs"] == ["previous", "h", "c", "memory", "keys", "mask"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m["state"][0].update(shape=[2, "batch", 24]), "state must be the decoder's"),
        (lambda m: m["graphs"].pop("decoder_step.onnx"), "encoder.onnx and decoder_step.onnx"),
        (lambda m: m["output"].pop("vocab"), "vocab and vocab_size go together"),
        (lambda m: m["model"].pop("decoder"), "names its decoder"),
    ],
    ids=["state-shape", "no-decoder-graph", "no-target-vocab", "no-decoder-info"],
)
def test_a_tampered_manifest_is_refused(trained, tmp_path, change, expected):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=expected) as info:
        Engine(bundle, device="cpu")
    print(info.value)


# ---- detection suite: broken graphs must fail the certificate ----------------------------------------


def _replace_node(model: onnx.ModelProto, output: str, make) -> onnx.ModelProto:
    """The graph with the node producing `output` replaced by `make(node)`."""
    graph = model.graph
    for i, node in enumerate(graph.node):
        if output in node.output:
            graph.node.remove(node)
            graph.node.insert(i, make(node))
            return model
    raise AssertionError(f"no node makes {output}")


MUTATIONS = {
    # the attention's mask ignored: padded source steps get attention weight
    "decoder ignores the mask": (
        "decoder_step.onnx",
        lambda m: _replace_node(m, "scores_masked", lambda n: helper.make_node("Identity", [n.input[1]], n.output)),
    ),
    # mask[b, t] = t <= lengths[b]: one padded step too many
    "encoder mask off by one": (
        "encoder.onnx",
        lambda m: _replace_node(m, "mask", lambda n: helper.make_node("LessOrEqual", n.input, n.output)),
    ),
    # the softmax over the batch instead of the source steps
    "attention softmax on the wrong axis": (
        "decoder_step.onnx",
        lambda m: _replace_node(m, "attention", lambda n: helper.make_node("Softmax", n.input, n.output, axis=0)),
    ),
    # the log-softmax left out: logits instead of log-probabilities
    "no log-softmax": (
        "decoder_step.onnx",
        lambda m: _replace_node(m, "logprobs", lambda n: helper.make_node("Identity", n.input, n.output)),
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_certificate_catches_a_broken_graph(trained, mutation):
    from toolkit.train.checkpoint import load_model

    model, _, inp, out = load_model(trained["run"])
    blobs = {name: (trained["bundle"] / name).read_bytes() for name in ("encoder.onnx", "decoder_step.onnx")}
    name, mutate = MUTATIONS[mutation]
    blobs[name] = mutate(onnx.load_model_from_string(blobs[name])).SerializeToString()
    report = certify_seq2seq(model, blobs, len(inp.vocab), len(out.target_vocab), seed=3)
    failed = [c.name for c in report.failures]
    print(f"{mutation}: {len(failed)}/{len(report.cases)} cases fail, e.g. {failed[:4]}")
    assert not report.passed


# ---- serving ------------------------------------------------------------------------------------------


def sources(engine: Engine, n=25, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, engine.vocab_size, int(k)) for k in rng.integers(1, 8, n)]


def test_engine_decodes_batched_as_torch_does_and_refuses_to_stream(trained):
    from toolkit.models.seq2seq import translate
    from toolkit.train.checkpoint import load_model

    engine = Engine(trained["bundle"], device="cpu")
    model = load_model(trained["run"])[0].double()
    xs = sources(engine, n=60)
    for search in (Search(), Search(beam=4, nbest=3, length_penalty=0.6)):
        got = engine.infer(xs, batch_size=16, search=search)
        want = translate(model, xs, search)
        assert [[h.tokens for h in g] for g in got] == [[h.tokens for h in w] for w in want]
        assert len(got[0]) == search.nbest
    with pytest.raises(BundleError, match="seq2seq model decodes whole sources"):
        engine.stream()
    with pytest.raises(InputError, match="nbest must be between 1 and the beam"):
        engine.infer(xs, search=Search(beam=2, nbest=3))


def test_rnnkit_infer_writes_nbest_and_its_metrics_equal_evaluate(trained, tmp_path):
    out = tmp_path / "out.jsonl"
    ran = helpers.rnnkit("infer", trained["bundle"], "--input", trained["test"], "--output", out, "--json")
    assert ran.returncode == 0, ran.stderr
    metrics = json.loads(ran.stdout)["metrics"]
    evaluated = helpers.rnnkit("evaluate", trained["run"], "--data", trained["test"], "--device", "cpu", "--json")
    torch_metrics = json.loads(evaluated.stdout)
    print(f"infer (ONNX Runtime, greedy): {metrics}\nevaluate (torch, greedy): {torch_metrics}")
    for key in ("exact_match", "error_rate", "sequence_error_rate"):
        assert metrics[key] == pytest.approx(torch_metrics[key], abs=1e-12)
    beam = helpers.rnnkit(
        "infer", trained["bundle"], "--input", trained["test"], "--output", out, "--beam", "5", "--nbest", "3"
    )
    assert beam.returncode == 0, beam.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and all(
        len(r["nbest"]) == 3 and r["prediction"] == r["nbest"][0]["prediction"] for r in rows
    )
    assert all(r["nbest"][0]["score"] >= r["nbest"][1]["score"] >= r["nbest"][2]["score"] for r in rows)
    print(rows[0])
    bad = helpers.rnnkit(
        "infer", trained["bundle"], "--input", trained["test"], "--output", out, "--beam", "2", "--nbest", "3"
    )
    assert bad.returncode == 2 and "nbest must be between 1 and the beam (2)" in bad.stderr
    stream = helpers.rnnkit("stream", trained["bundle"], input="")
    assert stream.returncode == 2 and "decodes whole sources" in stream.stderr


def test_serve_decodes_on_post_v1_infer(trained):
    engine = Engine(trained["bundle"], device="cpu")
    vocab = engine.manifest["input"]["vocab"]
    xs = sources(engine, n=12, seed=4)
    body = {"sequences": [[vocab[i] for i in x] for x in xs], "beam": 4, "nbest": 2}
    expected = [result(engine.manifest, h) for h in engine.infer(xs, search=Search(beam=4, nbest=2))]
    with server(trained["bundle"]) as (_, address):
        status, reply = http(address, "/v1/infer", body)
        assert status == 200 and reply["results"] == expected
        status, greedy = http(address, "/v1/infer", {"sequences": body["sequences"]})
        assert status == 200 and all(len(r["nbest"]) == 1 for r in greedy["results"])
        for bad, why in (
            ({"beam": 0}, "beam"),
            ({"beam": 2, "nbest": 3}, "nbest"),
            ({"beam": "5"}, "beam"),
            ({"top_k": 3}, "optionally"),
        ):
            status, refused = http(address, "/v1/infer", {"sequences": body["sequences"], **bad})
            print(bad, status, refused)
            assert status == 400 and why in refused["error"]
        status, health = http(address, "/health")
        assert status == 200 and health["streaming"] is False and health["task"] == "seq2seq"
    print(f"POST /v1/infer beam 4: {reply['results'][0]}")


def test_search_settings_out_of_their_range_are_refused_naming_it(trained, tmp_path):
    """A length penalty of 1e30 overflowed the score: HTTP 500, and a traceback with exit 1 from
    `rnnkit infer`. Every setting is bounded (`toolkit.core.search.RANGES`), NaN and inf too."""
    body = {"sequences": [["a", "b", "c"]]}
    with server(trained["bundle"]) as (proc, address):
        for bad in ({"length_penalty": 1e30}, {"max_len_a": 1e300}, {"max_len_b": 10**9}, {"beam": 65}):
            status, refused = http(address, "/v1/infer", {**body, **bad})
            print(bad, status, refused)
            [name] = bad
            assert status == 400 and f"{name} must be a" in refused["error"] and "between" in refused["error"], refused
        assert http(address, "/v1/infer", {**body, "length_penalty": 10})[0] == 200
    out = tmp_path / "out.jsonl"
    for flag, value in (("--length-penalty", "1e30"), ("--length-penalty", "nan"), ("--max-len-a", "inf")):
        ran = helpers.in_process(["infer", trained["bundle"], "--input", trained["test"], "--output", out, flag, value])
        print(flag, value, ran.returncode, ran.stderr.strip().splitlines()[-1])
        assert ran.returncode == 2 and "Traceback" not in ran.stderr
        assert "0.0<=x<=10.0" in ran.stderr or "between 0 and 10" in ran.stderr, ran.stderr


def test_the_mlflow_pyfunc_model_decodes_with_params(trained, tmp_path, monkeypatch):
    from toolkit.tracking.pyfunc import log_bundle

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RNNKIT_DEVICE", "cpu")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("s2s", artifact_location=(tmp_path / "artifacts").as_uri())
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment)
        info = log_bundle(trained["bundle"], name="g2p")
        model = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    engine = Engine(trained["bundle"], device="cpu")
    vocab = engine.manifest["input"]["vocab"]
    xs = sources(engine, n=8, seed=5)
    frame = pd.DataFrame({"tokens": [[vocab[i] for i in x] for x in xs]})
    for params, search in (({}, Search()), ({"beam": 3, "nbest": 3, "length_penalty": 0.0}, Search(3, 3, 0.0))):
        got = model.predict(frame, params=params or None).to_dict("records")
        expected = [result(engine.manifest, h) for h in engine.infer(xs, search=search)]
        assert got == expected, (got[0], expected[0])
    assert {p.name for p in model.metadata.get_params_schema().params} >= {"beam", "nbest", "length_penalty"}
    print(f"pyfunc beam 3: {got[0]}")


def test_verify_without_torch_uses_the_oracle_and_with_the_checkpoint_torch(trained):
    """`rnnkit verify BUNDLE`: the two graphs against the NumPy oracle of the encoder-decoder,
    torch never imported; with --checkpoint the torch certificate."""
    code = (
        "import sys, json; from toolkit.export.verify import verify; "
        f"r = verify({str(trained['bundle'])!r}, seed=2); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "print(json.dumps([r.passed, len(r.cases), [c.reference for c in r.cases][:1], r.summary()['worst_margin']]))"
    )
    alone = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, capture_output=True, text=True)
    print(alone.stdout, alone.stderr[-2000:])
    assert alone.returncode == 0
    passed, cases, reference, margin = json.loads(alone.stdout.splitlines()[-1])
    assert passed and cases == len(trained["report"].cases) and reference == ["NumPy oracle fp64"]
    ok = helpers.rnnkit("verify", trained["bundle"], "--checkpoint", trained["run"], "--seed", "1")
    print(ok.stdout[-400:])
    assert ok.returncode == 0, ok.stderr


def test_the_oracle_computes_what_torch_computes(trained):
    """The torch-free oracle of the encoder-decoder, from the graphs' weights, against the torch
    model in float64: every output of both graphs on a padded batch."""
    from toolkit.export.exporter import Seq2SeqTorchReference
    from toolkit.train.checkpoint import load_model

    blobs = {name: (trained["bundle"] / name).read_bytes() for name in ("encoder.onnx", "decoder_step.onnx")}
    oracle = seq2seq_parity.OracleReference(blobs, read_manifest(trained["bundle"]), np.random.default_rng(0))
    torch_ref = Seq2SeqTorchReference(load_model(trained["run"])[0], np.random.default_rng(0))
    rng = np.random.default_rng(1)
    from toolkit.core.data.batching import pad

    ids, lengths = pad([rng.integers(4, 10, n) for n in (5, 1, 9, 3)], dtype=np.int64)
    previous = np.concatenate([np.full((4, 1), 2), rng.integers(4, 10, (4, 6))], axis=1)
    want, got = torch_ref.outputs(ids, lengths, previous)[0], oracle.outputs(ids, lengths, previous)[0]
    assert set(want) == set(got)
    mask = want["mask"]
    errors = {}
    for k in want:
        w, g = want[k], got[k]
        if k in ("memory", "keys"):
            w, g = w[mask], g[mask]
        errors[k] = float(np.abs(np.asarray(w, dtype=float) - np.asarray(g, dtype=float)).max())
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-5  # float32-stored weights on both sides; the graphs round them once
