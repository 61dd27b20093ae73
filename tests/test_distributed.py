"""Data-parallel training (`rnnkit train --nproc N`, torchrun + DDP, gloo on CPU) as real processes:
two processes give the weights one process gives on the same global batch (LSTM and GRU, a
padded-batch task with an uneven last batch and a truncated-BPTT stream); rank 0 alone writes;
exact resume; a rank killed stops the group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import rnnkit, start, toy_data
from toolkit.core.devices import default_threads

# A constant rate without warm-up: a resumed run with more epochs re-plans a cosine schedule, so it
# would not (and should not) equal a run planned for all its epochs from the start.
FLAGS = ["--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "16", "--lr", "0.01", "--device", "cpu"]
FLAGS += ["--schedule", "constant", "--warmup", "0"]
FLAGS += ["--no-mlflow", "--no-export", "--no-progress", "--dropout", "0", "--json"]


def trained(tmp_path: Path, name: str, task: str, cell: str, *extra) -> tuple[Path, dict]:
    data = toy_data(tmp_path, task, n=90)["data"]  # 81 training sequences: the last batch of 16 has 1 row
    out = tmp_path / name
    proc = rnnkit("train", "--task", task, "--data", data, "--cell", cell, "--num-layers", "2",
                  "--out", out, *FLAGS, *extra, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def weights(run: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch.load(run / "model.pt", weights_only=True).items()}


@pytest.mark.ddp
@pytest.mark.parametrize("task, cell", [("tag", "lstm"), ("classify", "gru"), ("lm", "lstm")])
def test_two_processes_train_the_weights_of_one(tmp_path, task, cell):
    one, s1 = trained(tmp_path, "one", task, cell, "--epochs", "2")
    two, s2 = trained(tmp_path, "two", task, cell, "--epochs", "2", "--nproc", "2")
    a, b = weights(one), weights(two)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    h1, h2 = (json.loads((r / "metrics.json").read_text())["history"] for r in (one, two))
    losses = [(x["train_loss"], y["train_loss"]) for x, y in zip(h1, h2, strict=True)]
    print(f"{task} {cell}: max |w(2 processes) - w(1)| {worst:.2e}; train loss per epoch {losses}")
    assert worst <= 1e-5
    assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in losses)
    assert s1["metrics"].keys() == s2["metrics"].keys()
    assert (s1["threads"], s2["threads"]) == (default_threads(), default_threads(2))  # a share of the cores each


@pytest.mark.ddp
def test_rank_zero_alone_writes_and_resume_is_exact(tmp_path):
    """Dropout on (each rank its own stream): 2 epochs, then resumed to 4, equals 4 straight."""
    data = toy_data(tmp_path, "classify", n=90)["data"]
    common = ["--task", "classify", "--data", data, *FLAGS, "--dropout", "0.3", "--num-layers", "2", "--nproc", "2"]
    straight = rnnkit("train", *common, "--epochs", "4", "--out", tmp_path / "straight", timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert len([line for line in straight.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    part = rnnkit("train", *common, "--epochs", "2", "--out", tmp_path / "resumed", timeout=600)
    assert part.returncode == 0, part.stderr[-3000:]
    state = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert len(state["rank_rng"]) == 2
    quiet = ["--no-mlflow", "--no-export", "--no-progress", "--json"]
    resumed = rnnkit("train", "--resume", tmp_path / "resumed", "--epochs", "4", *quiet, "--nproc", "2", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    print(f"resumed under DDP vs straight: max |dw| {worst:.2e}")
    assert worst == 0.0
    alone = rnnkit("train", "--resume", tmp_path / "resumed", "--epochs", "5", *quiet, timeout=600)
    assert alone.returncode == 2 and "saved by 2 process(es)" in alone.stderr, alone.stderr[-2000:]


def ranks(parent: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started under `parent` (read from /proc; only this
    test's own: another run's ranks may be alive on the same machine)."""
    found = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(e.split(b"=", 1) for e in env if b"=" in e)
        if values.get(b"TORCHELASTIC_RUN_ID") and b"RANK" in values and pid != parent and _descends(pid, parent):
            found[int(values[b"RANK"])] = pid
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent's pid
        if pid == ancestor:
            return True
    return False


@contextlib.contextmanager
def training_group(tmp_path: Path):
    """`rnnkit train --nproc 2` for 500 epochs, once both ranks are in the training loop (an epoch
    is done): (the process, rank -> pid). Killed at the end if still running."""
    data = toy_data(tmp_path, "classify", n=400)["data"]
    proc = start("train", "--task", "classify", "--data", data, *FLAGS, "--epochs", "500", "--nproc", "2",
                 "--out", tmp_path / "run")  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = ranks(proc.pid)
        assert set(workers) == {0, 1}, workers
        yield proc, workers
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.ddp
def test_a_rank_killed_stops_the_others(tmp_path):
    with training_group(tmp_path) as (proc, workers):
        os.kill(workers[1], signal.SIGKILL)
        killed = time.monotonic()
        code = proc.wait(timeout=90)
        took = time.monotonic() - killed
        print(f"rank 1 killed: the group exited {code} after {took:.1f} s; rank 0 alive: {_alive(workers[0])}")
        assert code != 0 and not _alive(workers[0]) and took < 60


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    return "zombie" not in status


@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("rows", [1, 2, 7, 16, 17])
def test_every_row_goes_to_exactly_one_rank(size, rows):
    from toolkit.core.data.batching import pad_batch
    from toolkit.core.data.types import Example
    from toolkit.train.distributed import World, shard

    batch = pad_batch([Example(np.arange(1, i + 2), i % 3) for i in range(rows)], np.arange(rows))
    taken, weights = [], []
    for rank in range(size):
        part, weight = shard(batch, World(rank, size))
        weights.append(weight)
        if weight:
            taken += part.index.tolist()
            assert all((row[:n] > 0).all() for row, n in zip(part.inputs, part.lengths, strict=True))  # whole rows
    print(f"{rows} rows over {size} ranks: weights {weights}")
    assert sorted(taken) == list(range(rows))
    assert weights == [1.0] * min(size, rows) + [0.0] * max(0, size - rows)


@pytest.mark.ddp
def test_rank_zero_alone_records_the_run_with_its_world_size(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data = toy_data(tmp_path, "classify", n=90)["data"]
    flags = [f for f in FLAGS if f != "--no-mlflow"]
    out = rnnkit("train", "--task", "classify", "--data", data, *flags, "--epochs", "1", "--nproc", "2",
                 "--out", tmp_path / "run", "--tracking-uri", uri, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    print([(r.info.run_id, r.data.params.get("world_size")) for r in runs])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"


@pytest.mark.ddp
def test_sigterm_stops_every_rank(tmp_path):
    with training_group(tmp_path) as (proc, workers):
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(timeout=90)
        took = time.monotonic() - sent
        alive = [r for r, pid in workers.items() if _alive(pid)]
        print(f"SIGTERM: exit {code} after {took:.1f} s; ranks still alive: {alive}")
        assert code != 0 and not alive and took < 60
