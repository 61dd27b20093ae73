"""model.pool: mean / max / attention over each sequence's real steps for per-sequence heads, the same in
torch, the ONNX graph and the NumPy oracle (the export's certificate); such a bundle reads whole
sequences only."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_config, rnnkit
from toolkit.core.bundle import BundleError, read_manifest
from toolkit.core.errors import ConfigError
from toolkit.export.exporter import export
from toolkit.runtime.engine import Engine
from toolkit.train.loop import train


@pytest.mark.parametrize(
    "task, pool, cell, bidirectional",
    [
        ("classify", "mean", "gru", True),
        ("classify", "max", "lstm", False),
        ("regress", "mean", "rnn", False),
        ("regress", "max", "gru", True),
        ("classify", "attention", "lstm", True),
        ("regress", "attention", "gru", False),
    ],
)
def test_pooled_model_exports_with_its_certificate(tmp_path, task, pool, cell, bidirectional):
    cfg = make_config(tmp_path, task, cell=cell, bidirectional=bidirectional, epochs=1)
    cfg.model.pool, cfg.model.num_layers = pool, 1
    train(cfg, progress=False, log=lambda m: None)
    result = export(tmp_path / "run", tmp_path / "bundle")
    report = result.report.summary()
    print(f"{task} {pool} {cell} bi={bidirectional}: {report['cases']} cases, worst {report['worst_margin']:.3f}")
    assert result.report.passed and result.written
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest["model"]["pool"] == pool and manifest["state"] is None
    assert "step.onnx" not in manifest["graphs"]
    engine = Engine(tmp_path / "bundle")
    why = "bidirectional model cannot stream" if bidirectional else "pools its outputs over time"
    assert engine.step is None and why in engine.why_not_streaming
    with pytest.raises(BundleError, match=why):
        engine.stream()
    if pool == "attention":  # the NumPy oracle attends too (torch-free verify); an LSTM also at int8
        verified = rnnkit("verify", tmp_path / "bundle")
        assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
        if cell == "lstm":
            int8 = export(tmp_path / "run", tmp_path / "int8", precision="int8")
            print(f"  int8: worst margin {int8.report.summary()['worst_margin']:.3f}")
            assert int8.report.passed and int8.written, int8.report.reasons


def test_pooling_ignores_padding_in_torch(tmp_path):
    """A sequence's pooled summary is the same alone and padded in a batch with a longer one."""
    from toolkit.core.config import ModelConfig
    from toolkit.models.encoder import RecurrentEncoder

    torch.manual_seed(0)
    for pool in ("mean", "max", "attention"):
        enc = RecurrentEncoder(3, ModelConfig(cell="gru", hidden_size=5, bidirectional=True, pool=pool)).eval()
        x = torch.randn(2, 9, 3)
        x[0, 4:] = 1e6  # padding of sequence 0, huge: must not reach its summary
        _, pooled, _ = enc(x, torch.tensor([4, 9]))
        _, alone, _ = enc(x[:1, :4], torch.tensor([4]))
        print(f"{pool}: max difference {float((pooled[0] - alone[0]).abs().max()):.2e}")
        torch.testing.assert_close(pooled[0], alone[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("task", ["tag", "lm"])
def test_pooling_is_refused_for_per_step_tasks(tmp_path, task):
    cfg = make_config(tmp_path, task, epochs=1)
    cfg.model.pool = "mean"
    with pytest.raises(ConfigError, match="model.pool mean summarises a sequence"):
        train(cfg, progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_old_manifests_pool_last():
    """Bundles written before model.pool existed read as pool last (they stream as before)."""
    from toolkit.core.manifest import ModelInfo

    info = ModelInfo(cell="lstm", num_layers=1, hidden_size=4, bidirectional=False)
    assert info.pool == "last"
