"""`--threads N` (torch intra-op threads) of `rnnkit train` and `rnnkit evaluate`, and the plain
progress line `rnnkit train` prints every `--progress-every` seconds when stderr is not a terminal
(toolkit.train.progress.ProgressLine)."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import helpers
from toolkit.core import devices
from toolkit.train.progress import ProgressLine

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# No --no-progress: these runs' stderr is a pipe (not a terminal), so the default is the plain line
QUIET = ["--hidden-size", "8", "--embedding-dim", "8", "--epochs", "2", "--device", "cpu", "--no-mlflow"]
QUIET += ["--no-export", "--json"]
LINE = re.compile(r"^(epoch \d/2|validate)  batch (\d+)/(\d+)  [\d,]+ steps/s  loss \d+\.\d{4}  \(\d+ s\)$", re.M)


def rnnkit(*args):
    return helpers.rnnkit(*args, timeout=120, env=ENV)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_line_prints_at_most_once_per_interval_with_the_pass_numbers():
    clock, lines = Clock(), []
    line = ProgressLine(10, "epoch 3/30", total=400, clock=clock, write=lines.append)
    for batch in range(1, 31):  # one batch a second: 100 steps and a summed loss of 8 over 4 targets each
        clock.now += 1
        line.update(steps=100 * batch, loss_sum=8.0 if batch <= 10 else 4.0, count=4)
    assert lines == [
        "epoch 3/30  batch 10/400  100 steps/s  loss 2.0000  (10 s)",
        "epoch 3/30  batch 20/400  100 steps/s  loss 1.5000  (20 s)",  # the running mean over the pass
        "epoch 3/30  batch 30/400  100 steps/s  loss 1.3333  (30 s)",
    ]
    clock.now += 9  # not yet a whole interval since the last line
    line.update(steps=1_234_000, loss_sum=0.0, count=0)
    assert len(lines) == 3
    clock.now += 1
    line.update(steps=1_234_000, loss_sum=0.0, count=0)
    assert lines[-1] == "epoch 3/30  batch 32/400  30,850 steps/s  loss 1.3333  (40 s)"
    unknown = ProgressLine(1, "validate", clock=clock, write=lines.append)
    clock.now += 1
    unknown.update(steps=5, loss_sum=1.0, count=2)
    assert lines[-1] == "validate  batch 1  5 steps/s  loss 0.5000  (1 s)"
    with pytest.raises(ValueError):
        ProgressLine(0, "epoch 1/1")


def test_default_threads_share_the_cores_and_keep_omp_num_threads_as_a_cap(monkeypatch):
    monkeypatch.setattr(devices, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [devices.default_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [devices.default_threads(n) for n in (1, 2, 4)] == [3, 3, 2]
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # unset in effect
    assert devices.default_threads() == 8


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_must_be_a_positive_integer(tmp_path, command, threads):
    data = helpers.toy_data(tmp_path, "classify", n=20)["data"]
    out = tmp_path / "run"
    if command == "train":
        args = ["train", "--task", "classify", "--data", data, "--out", out, *QUIET]
    else:
        args = ["evaluate", out, "--data", data]
    proc = rnnkit(*args, "--threads", threads)
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '--threads': {threads} is not in the range x>=1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "a refused --threads must not leave a run directory"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs at once on the same data: --threads 1 with progress lines every 1 ms, and
    --no-progress (which silences the lines too); stderr is a pipe for both."""
    tmp = tmp_path_factory.mktemp("threads")
    data = helpers.toy_data(tmp, "classify", n=96)["data"]
    extra = {
        "lines": ["--threads", "1", "--progress-every", "0.001"],
        "silent": ["--no-progress", "--progress-every", "0.001"],
    }
    train = ["train", "--task", "classify", "--data", data, *QUIET]
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda name: rnnkit(*train, "--out", tmp / name, *extra[name]), extra))
    return {"data": data, "dir": tmp, **dict(zip(extra, procs, strict=True))}


def test_train_with_one_thread_reports_it_in_json(runs):
    proc = runs["lines"]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["threads"] == 1 and summary["epochs_run"] == 2


def test_periodic_progress_lines_on_a_non_terminal_stderr(runs):
    proc = runs["lines"]
    assert proc.returncode == 0, proc.stderr
    print(proc.stderr)
    found = LINE.findall(proc.stderr)
    assert {"epoch 1/2", "epoch 2/2"} <= {desc for desc, _, _ in found}, "lines during each epoch"
    assert all(1 <= int(batch) <= int(total) for _, batch, total in found)
    assert len(found) == proc.stderr.count(" steps/s "), "every progress line in the documented form"
    assert "\r" not in proc.stderr, "no tqdm bar on a non-terminal stderr by default"


def test_no_progress_prints_no_progress_lines(runs):
    proc = runs["silent"]
    assert proc.returncode == 0, proc.stderr
    assert " batch " not in proc.stderr and "\r" not in proc.stderr
    assert "epoch 2: " in proc.stderr  # the per-epoch line stays


def test_evaluate_with_one_thread(runs):
    proc = rnnkit("evaluate", runs["dir"] / "lines", "--data", runs["data"], "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= json.loads(proc.stdout)["accuracy"] <= 1.0
