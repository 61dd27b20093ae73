"""Export: every cell x direction x task becomes a bundle whose parity certificate passes;
bundles are self-contained; corrupted bundles are refused with a clear message and exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import CELLS, ROOT, TASKS, VOCAB, make_model, rnnkit, trained_run
from toolkit.core.bundle import BundleError
from toolkit.export.exporter import export
from toolkit.export.verify import verify

# A bidirectional language model is refused at training time (tests/test_train.py).
COMBINATIONS = [
    pytest.param(task, cell, nl, bi, id=f"{task}-{'bi' if bi else 'uni'}-{cell}-{nl}")
    for task in TASKS
    for bi in (False, True)
    for cell, nl in CELLS
    if not (task == "lm" and bi)
]


@pytest.mark.parametrize(("task", "cell", "nonlinearity", "bidirectional"), COMBINATIONS)
def test_every_combination_exports_with_parity(tmp_path, task, cell, nonlinearity, bidirectional):
    run = trained_run(tmp_path, task, cell, nonlinearity, bidirectional)
    result = export(run, tmp_path / "bundle", seed=1)
    worst = result.report.summary()
    print(
        f"{task} {cell}/{nonlinearity} bi={bidirectional}: {worst['cases']} cases, max abs {worst['max_abs']:.2e}, "
        f"worst margin {worst['worst_margin']:.3f} ({worst['worst_case']})"
    )
    assert result.written and result.report.passed, [c for c in result.report.failures]
    names = {p.name for p in (tmp_path / "bundle").iterdir()}
    expected = {"model.onnx", "manifest.json", "parity.json"} | (set() if bidirectional else {"step.onnx"})
    assert names == expected
    graphs = {c.graph for c in result.report.cases}
    assert graphs == ({"model.onnx"} if bidirectional else {"model.onnx", "step.onnx"})
    assert any(c.name == "padded batch vs one at a time" for c in result.report.cases)


def test_bundle_runs_without_torch_or_the_run_directory(tmp_path):
    """The bundle is self-contained: verify it in a fresh interpreter after deleting the run."""
    run = trained_run(tmp_path, "tag", "gru")
    export(run, tmp_path / "bundle", seed=2)
    shutil.rmtree(run)
    code = (
        "import sys; from toolkit.export.verify import verify; r = verify(sys.argv[1], seed=3); "
        "print(r.summary()); print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules)); "
        "sys.exit(0 if r.passed else 1)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bundle")], cwd=ROOT, capture_output=True, text=True
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_step_graph_refused_for_bidirectional_with_reason():
    from toolkit.core.config import ModelConfig
    from toolkit.export.graph import build_step_graph
    from toolkit.models.model import SequenceModel

    model = make_model("tag", bidirectional=True)
    weights = {k: v.float().numpy() for k, v in model.state_dict().items()}
    assert isinstance(model.cfg, ModelConfig) and isinstance(model, SequenceModel)
    with pytest.raises(Exception, match="(?i)backward|whole sequence|future"):
        build_step_graph(weights, model.cfg, *_specs())


def _specs():
    from toolkit.core.data.types import InputSpec, OutputSpec

    return InputSpec("tokens", vocab=VOCAB), OutputSpec("tag", labels=["A", "B", "C"])


def test_cli_export_verify_and_corruptions(tmp_path):
    run = trained_run(tmp_path, "classify", "lstm")
    bundle = tmp_path / "bundle"
    proc = rnnkit("export", run, "--out", bundle, "--seed", "5")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "model.onnx" in proc.stdout and "step.onnx" in proc.stdout and "pass" in proc.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["state"][0]["name"] == "h"
    assert manifest["input"]["vocab"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and manifest["output"]["labels"]

    ok = rnnkit("verify", bundle, "--checkpoint", run, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["summary"]["passed"]

    def corrupted(name, how):
        copy = tmp_path / name
        shutil.copytree(bundle, copy)
        how(copy)
        proc = rnnkit("verify", copy)
        print(name, "->", proc.returncode, proc.stderr.strip())
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        return proc.stderr

    def flip_byte(d):
        data = bytearray((d / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / "model.onnx").write_bytes(bytes(data))

    def fix_hash(d):  # a corrupt graph whose hash was updated too: the onnx checker must catch it
        import hashlib

        (d / "model.onnx").write_bytes(b"\x08\x07garbage")
        m = json.loads((d / "manifest.json").read_text())
        m["graphs"]["model.onnx"]["sha256"] = hashlib.sha256(b"\x08\x07garbage").hexdigest()
        (d / "manifest.json").write_text(json.dumps(m))

    def bump_version(d):
        m = json.loads((d / "manifest.json").read_text())
        m["format_version"] = 99
        (d / "manifest.json").write_text(json.dumps(m))

    assert "sha256" in corrupted("hash-mismatch", flip_byte)
    assert "not a valid ONNX model" in corrupted("corrupt-graph", fix_hash)
    assert "missing" in corrupted("no-step", lambda d: (d / "step.onnx").unlink())
    assert "missing" in corrupted("no-manifest", lambda d: (d / "manifest.json").unlink())
    assert "version 99" in corrupted("other-version", bump_version)


def test_bad_checkpoints_are_refused(tmp_path):
    run = trained_run(tmp_path, "classify", "gru")
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.pt").unlink()
    proc = rnnkit("export", broken, "--out", tmp_path / "b1")
    assert proc.returncode == 2 and "model.pt" in proc.stderr and not (tmp_path / "b1").exists()

    spec = json.loads((run / "spec.json").read_text())
    spec["format_version"] = 7
    (run / "spec.json").write_text(json.dumps(spec))
    proc = rnnkit("export", run, "--out", tmp_path / "b2")
    assert proc.returncode == 2 and "version 7" in proc.stderr and not (tmp_path / "b2").exists()

    spec["format_version"] = 1
    spec["model"]["cell"] = "transformer"
    (run / "spec.json").write_text(json.dumps(spec))
    config = json.loads((run / "config.json").read_text())
    config["model"]["cell"] = "transformer"
    (run / "config.json").write_text(json.dumps(config))
    proc = rnnkit("export", run, "--out", tmp_path / "b3")
    print(proc.stderr.strip())
    assert proc.returncode == 2 and "transformer" in proc.stderr and not (tmp_path / "b3").exists()


def test_failed_parity_keeps_the_report_and_writes_no_bundle(tmp_path, monkeypatch):
    """A defect in the graph (here: a tampered weight) is caught, named, and blocks the bundle."""
    import toolkit.export.exporter as exporter

    real = exporter.build_full_graph

    def tampered(weights, *args, **kwargs):
        weights = dict(weights)
        weights["head.bias"] = weights["head.bias"] + 1e-3
        return real(weights, *args, **kwargs)

    monkeypatch.setattr(exporter, "build_full_graph", tampered)
    run = trained_run(tmp_path, "tag", "lstm")
    result = export(run, tmp_path / "bundle", seed=4)
    print([(c.name, f"{c.max_abs:.2e}") for c in result.report.failures][:3])
    assert not result.report.passed and not result.written and not (tmp_path / "bundle").exists()
    assert json.loads(result.report_path.read_text())["summary"]["passed"] is False
    forced = export(run, tmp_path / "bundle", seed=4, force=True)
    assert (
        forced.written and json.loads((tmp_path / "bundle" / "manifest.json").read_text())["parity"]["passed"] is False
    )
    with pytest.raises(BundleError):
        verify(tmp_path / "nowhere")


def test_sample_file_joins_the_certificate(tmp_path):
    run = trained_run(tmp_path, "regress")  # features in, one value per sequence out
    sample = tmp_path / "train.jsonl"  # the user's own file (labels optional)
    result = export(run, tmp_path / "bundle", sample=sample, seed=6)
    case = [c for c in result.report.cases if c.name.startswith("sample file")]
    print(case)
    assert len(case) == 1 and case[0].passed and case[0].shapes["inputs"][0] == len(sample.read_text().splitlines())


def test_interrupted_export_leaves_no_bundle_and_keeps_the_old_one(tmp_path, monkeypatch):
    import toolkit.core.bundle as bundle_module

    run = trained_run(tmp_path, "classify", "gru")
    out = tmp_path / "bundle"
    export(run, out, seed=7)
    before = (out / "manifest.json").read_bytes()
    calls = []

    def fsync_then_die(fd):
        calls.append(fd)
        if len(calls) == 2:  # after the first file of the new bundle is on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(bundle_module.os, "fsync", fsync_then_die)
    with pytest.raises(KeyboardInterrupt):
        export(run, out, seed=8)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    print("after the interrupted export:", sorted(p.name for p in out.iterdir()), "hidden leftovers:", leftovers)
    assert (out / "manifest.json").read_bytes() == before  # the old bundle, whole
    assert leftovers == []

    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        export(run, fresh, seed=9)
    assert not fresh.exists()


@pytest.mark.parametrize("opset", [17, 19])
def test_other_opsets(tmp_path, opset):
    run = trained_run(tmp_path, "tag", "lstm")
    result = export(run, tmp_path / "bundle", opset=opset, seed=10)
    print(opset, result.manifest["graphs"]["model.onnx"]["ir_version"], result.report.summary()["max_abs"])
    assert result.report.passed and result.manifest["opset"] == opset
