"""Training: every cell x direction x task trains and its loss falls; exact resume; run files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import CELLS, TASKS, make_config
from toolkit.core.config import Config
from toolkit.core.errors import CheckpointError, ConfigError
from toolkit.train.checkpoint import load_model
from toolkit.train.loop import train


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("task", TASKS)
def test_every_combination_trains_and_loss_falls(tmp_path, task, cell, nonlinearity, bidirectional):
    cfg = make_config(tmp_path, task, cell, nonlinearity, bidirectional)
    if task == "lm" and bidirectional:
        with pytest.raises(ConfigError, match="bidirectional"):
            train(cfg, progress=False, log=lambda m: None)
        return
    result = train(cfg, progress=False, log=lambda m: None)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    print(f"{task} {cell}/{nonlinearity} bi={bidirectional}: train loss {first:.4f} -> {last:.4f}; best {result.best}")
    assert math.isfinite(last)
    assert last < 0.8 * first
    for name in ("config.json", "spec.json", "model.pt", "state.pt", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name
    model, config, inp, out = load_model(tmp_path / "run")
    assert config.task == cfg.task and model.cfg.cell == cell


def test_resume_after_interrupt_gives_the_same_weights(tmp_path):
    """An interrupted-then-resumed run ends with the same weights as an uninterrupted one."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a = make_config(tmp_path / "a", "tag", "gru", epochs=4, schedule="cosine")
    cfg_a.model.dropout = 0.3  # exercises the torch RNG, which must be restored on resume
    full = train(cfg_a, progress=False, log=lambda m: None)

    cfg_b = make_config(tmp_path / "b", "tag", "gru", epochs=4, schedule="cosine")
    cfg_b.model.dropout = 0.3

    def interrupt(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, progress=False, log=lambda m: None, on_epoch_end=interrupt)
    assert json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())["history"][-1]["epoch"] == 2
    resumed = train(
        Config.load(tmp_path / "b" / "run" / "config.json"), resume=True, progress=False, log=lambda m: None
    )
    assert resumed.epochs_run == 4

    a = torch.load(tmp_path / "a" / "run" / "state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "run" / "state.pt", weights_only=False)["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |uninterrupted - resumed| over all weights: {worst:.3e}")
    assert worst == 0.0
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


class RunsCode:
    """What an attacker would put in a state.pt: unpickling it runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_resume_does_not_unpickle_a_crafted_state_file(tmp_path):
    cfg = make_config(tmp_path, "classify", "gru", epochs=1)
    train(cfg, progress=False, log=lambda m: None)
    state = tmp_path / "run" / "state.pt"
    good = torch.load(state, weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**good, "history": RunsCode(marker)}, state)
    resumed = Config.load(tmp_path / "run" / "config.json")
    resumed.train.epochs = 2
    with pytest.raises(CheckpointError) as refused:
        train(resumed, resume=True, progress=False, log=lambda m: None)
    print(refused.value)
    assert not marker.exists(), "resuming ran the crafted file's code"
    assert "does not unpickle" in str(refused.value) and "state.pt" in str(refused.value)
    torch.save([1, 2], state)
    with pytest.raises(CheckpointError, match="not an rnnkit training state"):
        train(resumed, resume=True, progress=False, log=lambda m: None)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_resume_with_more_epochs_replans_the_schedule(tmp_path, schedule):
    """A 4-epoch run resumed with --epochs 8 takes, from epoch 5 on, the learning rates of a run
    planned for 8 epochs (the restored schedule alone would keep the 4-epoch plan: cosine climbs
    back up after epoch 4)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    planned = train(make_config(tmp_path / "a", "tag", "gru", epochs=8, schedule=schedule), progress=False, log=print)
    short = make_config(tmp_path / "b", "tag", "gru", epochs=4, schedule=schedule)
    train(short, progress=False, log=print)
    longer = Config.load(tmp_path / "b" / "run" / "config.json")
    longer.train.epochs = 8
    resumed = train(longer, resume=True, progress=False, log=print)
    want = [h["lr"] for h in planned.history]
    got = [h["lr"] for h in resumed.history]
    print("planned for 8:", [f"{v:.5f}" for v in want])
    print("4, resumed to 8:", [f"{v:.5f}" for v in got])
    assert got[4:] == pytest.approx(want[4:], rel=1e-9)


def test_existing_run_directory_is_not_overwritten(tmp_path):
    cfg = make_config(tmp_path, "classify", epochs=1)
    train(cfg, progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, progress=False, log=lambda m: None)


def test_early_stopping_stops(tmp_path):
    # too small a rate to gain more than min_delta in validation loss
    cfg = make_config(tmp_path, "classify", epochs=50, patience=2, lr=1e-6, monitor="loss", min_delta=0.01)
    result = train(cfg, progress=False, log=lambda m: None)
    print(f"early stop after {result.epochs_run} epochs, best epoch {result.best_epoch}")
    assert result.stopped_early and result.epochs_run < 50
    assert result.epochs_run - result.best_epoch == 2
    assert result.stop_reason == "patience" and "gains over 0.01" in result.selection


def test_lm_reports_perplexity_and_bpc_and_samples(tmp_path):
    cfg = make_config(tmp_path, "lm", epochs=4)
    result = train(cfg, progress=False, log=lambda m: None)
    best = result.best
    print(f"lm: {best}; sample {result.sample!r}")
    assert best["perplexity"] == pytest.approx(math.exp(best["cross_entropy"]), rel=1e-6)
    assert best["bpc"] == pytest.approx(best["cross_entropy"] / math.log(2), rel=1e-6)
    assert isinstance(result.sample, str) and len(result.sample) > 0


def test_truncated_bptt_carries_state_between_windows(tmp_path):
    """Evaluating a stream in short windows (state carried) equals evaluating it in one window."""
    from toolkit.core.data import load_data, stream_windows
    from toolkit.core.tasks import metrics_for
    from toolkit.train.loop import run_pass

    cfg = make_config(tmp_path, "lm", epochs=3)
    prepared = load_data(cfg)
    train(cfg, progress=False, log=lambda m: None)  # trained, so that context matters
    model = load_model(tmp_path / "run")[0].double()
    with torch.no_grad():
        whole = run_pass(model, "lm", prepared.train, metrics_for("lm", None), batch_size=4, bptt=10**6)
        windows = run_pass(model, "lm", prepared.train, metrics_for("lm", None), batch_size=4, bptt=7)
        no_carry = run_pass(model, "lm", prepared.train, metrics_for("lm", None), batch_size=4, bptt=1)
    print(f"cross-entropy whole {whole['cross_entropy']:.10f}, windows of 7 {windows['cross_entropy']:.10f}")
    # Control: a fresh state in every window (what a missing carry would compute) is far off.
    cold = []
    for inputs, targets in stream_windows(prepared.train, 4, 7):
        y, _ = model(torch.from_numpy(inputs))
        cold.append(
            torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), torch.from_numpy(targets).reshape(-1))
        )
    cold_ce = float(torch.stack(cold).mean().detach())
    print(f"without the carry: {cold_ce:.6f}")
    assert abs(cold_ce - whole["cross_entropy"]) > 1e-3
    # float32 loss sums: equal to ~1e-7; without the carry the windows of 7 would differ by far more
    assert windows["cross_entropy"] == pytest.approx(whole["cross_entropy"], rel=1e-6)
    assert no_carry["cross_entropy"] == pytest.approx(whole["cross_entropy"], rel=1e-6)


def test_forecasting_a_real_csv_series(tmp_path):
    """Airline passengers (monthly, 1949-1960; ships in the aeon wheel): truncated BPTT on a CSV series."""
    from toolkit.core.data import example_path
    from toolkit.core.errors import DataError

    try:
        airline = example_path("Airline.csv")
    except DataError as e:
        pytest.skip(str(e))
    cfg = Config(task="regress")
    cfg.data.data, cfg.data.val_fraction = str(airline), 0.2
    cfg.model.hidden_size = 32
    cfg.train.epochs, cfg.train.batch_size, cfg.train.bptt, cfg.train.lr = 40, 4, 12, 0.01
    cfg.train.device, cfg.train.out = "cpu", str(tmp_path / "run")
    result = train(cfg, progress=False, log=lambda m: None)
    first, best = result.history[0]["val_rmse"], result.best["rmse"]
    print(f"Airline: val RMSE (passengers, thousands) first epoch {first:.1f} -> best {best:.1f}; notes {result.notes}")
    assert best < 0.7 * first
    assert any("Date" in note for note in result.notes)  # the date column is skipped, and says so
