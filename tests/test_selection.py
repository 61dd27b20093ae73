"""Best-epoch selection (tie-breaker, min_delta), class weights, warm-up and the time budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.helpers import make_config, write_jsonl
from toolkit.core.errors import ConfigError
from toolkit.train.loop import improves, train


@pytest.mark.parametrize(
    "value, loss, best, best_loss, mode, min_delta, expected",
    [
        (0.94, 0.30, 0.94, 0.35, "max", 0.0, True),  # accuracy ties, lower loss: better
        (0.94, 0.40, 0.94, 0.35, "max", 0.0, False),  # ties, higher loss
        (0.96, 0.50, 0.94, 0.35, "max", 0.0, True),  # a real gain wins whatever the loss
        (0.92, 0.10, 0.94, 0.35, "max", 0.0, False),  # worse is worse, even with a lower loss
        (0.95, 0.50, 0.94, 0.35, "max", 0.02, False),  # gains under min_delta are ties
        (0.95, 0.30, 0.94, 0.35, "max", 0.02, True),  # ... that the loss breaks
        (0.97, 0.50, 0.94, 0.35, "max", 0.02, True),
        (0.30, None, 0.35, math.inf, "min", 0.0, True),  # monitoring the loss itself: no tie-breaker
        (0.34, None, 0.35, math.inf, "min", 0.02, False),
        (float("nan"), 0.1, 0.5, 0.3, "max", 0.0, False),
        (0.5, 0.3, float("nan"), 0.3, "max", 0.0, True),
        (float("nan"), 0.3, None, math.inf, "max", 0.0, True),  # the first epoch is the best so far
    ],
)
def test_improves(value, loss, best, best_loss, mode, min_delta, expected):
    assert improves(value, loss, best, best_loss, mode, min_delta) is expected


def test_ties_are_broken_by_validation_loss(tmp_path):
    """A run whose validation accuracy plateaus keeps improving by loss: the best epoch is the
    last epoch with the top accuracy and the lowest loss among those, not the first."""
    cfg = make_config(tmp_path, "classify", epochs=8, lr=0.02)
    result = train(cfg, progress=False, log=lambda m: None)
    history = result.history
    top = max(r["val_accuracy"] for r in history)
    tied = [r for r in history if r["val_accuracy"] == top]
    chosen = min(tied, key=lambda r: r["val_loss"])
    print(f"val accuracy {[round(r['val_accuracy'], 3) for r in history]}, best epoch {result.best_epoch}")
    assert result.best_epoch == chosen["epoch"]
    assert result.selection == "val_accuracy (max), ties broken by lower val_loss"


def _imbalanced(tmp_path, n=120):
    """Label b for 1 in 6 sequences: a sequence is b when it contains a 'z'."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        toks = list(rng.choice(list("abcdef"), size=int(rng.integers(4, 10))))
        rare = i % 6 == 0
        if rare:
            toks[int(rng.integers(len(toks)))] = "z"
        rows.append({"tokens": toks, "label": "b" if rare else "a"})
    return write_jsonl(tmp_path / "imbalanced.jsonl", rows)


def test_balanced_class_weights(tmp_path):
    from toolkit.core.data import load_data
    from toolkit.train.class_weights import class_weights

    cfg = make_config(tmp_path, "classify")
    cfg.data.data, cfg.data.val_fraction = _imbalanced(tmp_path), 0.0
    prepared = load_data(cfg)
    labels = prepared.output.labels
    weights = class_weights("balanced", "classify", labels, prepared.train)
    counts = np.bincount([ex.target for ex in prepared.train.examples], minlength=len(labels))
    print(f"labels {labels}, counts {counts.tolist()}, weights {weights.tolist()}")
    assert weights[labels.index("b")] / weights[labels.index("a")] == pytest.approx(5.0, rel=1e-5)
    assert float((weights * counts).sum() / counts.sum()) == pytest.approx(1.0, rel=1e-6)
    assert class_weights("none", "classify", labels, prepared.train) is None

    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"b": 3}), encoding="utf-8")
    weights = class_weights(str(path), "classify", labels, prepared.train)
    assert weights[labels.index("b")] / weights[labels.index("a")] == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"q": 2}', "unknown label(s) 'q'"),
        ('{"b": -1}', "weight of 'b' must be a positive finite number"),
        ('{"b": true}', "weight of 'b' must be a positive finite number"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid UTF-8 JSON"),
        (None, "no such file"),
    ],
)
def test_class_weight_file_errors(tmp_path, content, message):
    cfg = make_config(tmp_path, "classify", epochs=1)
    path = tmp_path / "w.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    cfg.train.class_weight = str(path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        train(cfg, progress=False, log=lambda m: None)
    print(e.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory is written


def test_class_weights_refused_for_a_language_model(tmp_path):
    cfg = make_config(tmp_path, "lm", epochs=1, class_weight="balanced")
    with pytest.raises(ConfigError, match="classify and tag only"):
        train(cfg, progress=False, log=lambda m: None)


def test_balanced_weights_train_a_tagger(tmp_path):
    """Per-step tags are counted for the weights (padding left out), and the run says so."""
    cfg = make_config(tmp_path, "tag", epochs=2, class_weight="balanced")
    logs = []
    result = train(cfg, progress=False, log=logs.append)
    print("\n".join(logs[:3]))
    assert any(line.startswith("class weights (mean 1 over the training targets): ") for line in logs)
    assert math.isfinite(result.best["loss"])


def test_warmup_ramps_the_rate_step_by_step(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, "classify", epochs=2, warmup=1.0, lr=0.01, schedule="constant")
    seen = []
    step = torch.optim.Adam.step

    def recording(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    result = train(cfg, progress=False, log=lambda m: None)
    print(f"rates of the first 7 steps: {[round(x, 5) for x in seen[:7]]}")
    steps = math.ceil(77 / 16)  # the 96 toy sequences less the 20% held out
    assert seen[:steps] == pytest.approx([0.01 * k / steps for k in range(1, steps + 1)])
    assert seen[steps:] == pytest.approx([0.01] * (len(seen) - steps))
    assert [r["lr"] for r in result.history] == [0.01, 0.01]  # the schedule never saw the warm-up


def test_time_budget_stops_after_an_epoch_and_keeps_the_best(tmp_path):
    cfg = make_config(tmp_path, "classify", epochs=20, max_time=0.01)
    logs = []
    result = train(cfg, progress=False, log=logs.append)
    print(logs[-1])
    assert result.epochs_run == 1 and result.best_epoch == 1
    assert result.stopped_early and result.stop_reason == "time budget"
    assert (tmp_path / "run" / "model.pt").is_file()
    assert logs[-1].startswith("time budget: stopped after epoch 1")
