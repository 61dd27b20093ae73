"""Time warping of training series (train.time_warp): monotone resampling that keeps the ends,
the length and the padding; seeded; refused where a step's target would have to move."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import make_config, rnnkit
from tests.test_frames import series
from toolkit.core.errors import ConfigError
from toolkit.train.augment import time_warp
from toolkit.train.loop import train


def test_a_warp_keeps_ends_length_order_and_padding():
    ramp = torch.arange(40, dtype=torch.float32).reshape(1, 40, 1).repeat(3, 1, 2)
    ramp[:, :, 1] = torch.randn(3, 40)
    lengths = torch.tensor([40, 17, 1])
    padded = ramp.clone()
    padded[1, 17:] = 1e6  # padding: never read, never changed
    padded[2, 1:] = -1e6
    assert torch.equal(time_warp(padded, lengths, 0.0, np.random.default_rng(0)), padded)  # strength 0: as is
    warped = time_warp(padded, lengths, 0.4, np.random.default_rng(0))
    moved = float((warped[0, :, 0] - ramp[0, :, 0]).abs().max())
    print(f"strength 0.4: a ramp of 40 steps moved by up to {moved:.2f} steps")
    assert moved > 0.5
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(warped[b, n:], padded[b, n:])
        assert torch.equal(warped[b, [0, n - 1]], padded[b, [0, n - 1]])  # the ends stay
        assert (warped[b, 1:n, 0] - warped[b, : n - 1, 0] >= 0).all()  # the map is monotone
        assert (warped[b, :n, 0] >= 0).all() and (warped[b, :n, 0] <= n - 1).all()
    again = time_warp(padded, lengths, 0.4, np.random.default_rng(0))
    assert torch.equal(again, warped)  # seeded


@pytest.mark.parametrize("task", ["tag", "regress-step", "lm"])
def test_time_warp_is_refused_where_targets_are_per_step_or_tokens(tmp_path, task):
    cfg = make_config(tmp_path, task, epochs=1)
    cfg.train.time_warp = 0.2
    with pytest.raises(ConfigError, match="train.time_warp 0.2 resamples feature series .* drop --time-warp"):
        train(cfg, progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_time_warp_through_the_cli(tmp_path):
    data = series(tmp_path)
    common = ["train", "--task", "classify", "--data", data, "--hidden-size", "16", "--epochs", "2", "--no-mlflow",
              "--no-export", "--device", "cpu", "--no-progress", "--json"]  # fmt: skip
    losses = {}
    for warp in ("0", "0.3"):
        out = rnnkit(*common, "--out", tmp_path / f"run{warp}", "--time-warp", warp)
        assert out.returncode == 0, out.stderr[-2000:]
        history = json.loads((tmp_path / f"run{warp}" / "metrics.json").read_text())["history"]
        losses[warp] = history[-1]["train_loss"]
    print(f"train loss after 2 epochs: plain {losses['0']:.4f}, warped {losses['0.3']:.4f}")
    assert losses["0"] != losses["0.3"]  # the warped run saw other series
    bad = rnnkit(*common, "--out", tmp_path / "bad", "--time-warp", "3")
    assert bad.returncode == 2 and "train.time_warp must be in [0, 2]" in bad.stderr, bad.stderr[-500:]
