"""The benchmark models: trained for one short epoch on random data, then exported, so the
timings run real bundles through the real exporter. Sizes follow the runtime issue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def feature_bundle(
    out: Path,
    bidirectional: bool,
    hidden: int = 256,
    layers: int = 2,
    features: int = 64,
    task: str = "regress",
    cell: str = "lstm",
) -> Path:
    """A `cell` (LSTM) `layers` x `hidden` on `features` inputs: train one epoch, export; returns the bundle dir."""
    from toolkit.core.config import Config
    from toolkit.export.exporter import export
    from toolkit.train.loop import train

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(64):
        x = rng.normal(size=(16, features)).round(4)
        rows.append({"features": x.tolist(), "target": np.cumsum(x[:, :1], axis=0).tolist()})
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = Config(task=task)
    cfg.data.data = str(data)
    cfg.model.cell, cfg.model.bidirectional = cell, bidirectional
    cfg.model.hidden_size, cfg.model.num_layers = hidden, layers
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device = 1, 32, "cpu"
    cfg.train.out = str(out / "run")
    train(cfg, progress=False, log=lambda m: None)
    export(out / "run", out / "bundle", seed=0, force=True)
    return out / "bundle"
