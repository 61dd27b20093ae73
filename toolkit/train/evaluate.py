"""Score a trained run on a labelled file (a held-out test set), in torch, with the task's metrics."""

from __future__ import annotations

from pathlib import Path

import torch

from toolkit.core.data import load_file
from toolkit.core.tasks import metrics_for
from toolkit.train.checkpoint import load_model
from toolkit.train.loop import pick_device, run_pass


def evaluate(run_dir: str | Path, data: str | Path, batch_size: int = 64, device: str = "auto") -> dict[str, float]:
    """Metrics of the run's best model on `data` (same format rules as training data)."""
    model, config, input_spec, output_spec = load_model(run_dir)
    dataset = load_file(data, config, input_spec, output_spec, require_target=True)
    model.to(pick_device(device))
    with torch.no_grad():
        metrics = metrics_for(config.task, output_spec.labels, config.data.level)
        return run_pass(model, config.task, dataset, metrics, batch_size=batch_size, bptt=config.train.bptt)
