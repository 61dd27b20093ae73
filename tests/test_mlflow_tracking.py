"""`rnnkit train` records its run in MLflow (real SQLite store, real `mlflow server`), registers
the model with an alias, and keeps training going when the tracking server is down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, free_port, rnnkit, start, toy_data

pytestmark = pytest.mark.mlflow  # real stores, servers and CLI processes: `make mlflow-test`


def train(tmp_path: Path, uri: str, *extra) -> subprocess.CompletedProcess:
    data = toy_data(tmp_path, "classify")["data"]
    args = ["train", "--task", "classify", "--data", data, "--out", tmp_path / "run", *TINY, "--json"]
    return rnnkit(*args, "--tracking-uri", uri, *extra)


def test_train_records_run_model_and_registered_version(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("tests", artifact_location=str(tmp_path / "artifacts"))
    proc = train(tmp_path, uri, "--experiment", "tests", "--register", "toy", "--alias", "champion")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(summary["mlflow"], summary["registered"])
    assert summary["mlflow"]["failed"] is None
    client = MlflowClient(uri)
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["task"] == "classify" and run.data.params["model.cell"] == "lstm"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.hidden_size"] == "8"
    tags = run.data.tags
    assert tags["task"] == "classify" and tags["cell"] == "lstm" and tags["directions"] == "1"
    assert len(tags["data_sha256"]) == 64
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    for key in ("val_accuracy", "lr", "train_grad_norm", "train_steps_per_s"):
        assert {m.step for m in client.get_metric_history(run.info.run_id, key)} == {1, 2}, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    run_files = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    print(sorted(artifacts), sorted(run_files))
    assert {"parity.json", "training_curve.png", "run"} <= artifacts
    assert {"run/config.json", "run/model.pt", "run/vocab.json", "run/labels.json"} <= run_files
    model = client.get_logged_model(summary["mlflow"]["model_uri"].split("/")[-1])
    print("logged model", model.model_id, "from run", model.source_run_id, {m.key: m.value for m in model.metrics})
    assert {m.key for m in model.metrics} >= {"val_accuracy", "val_loss"}
    version = client.get_model_version_by_alias("toy", "champion")
    assert int(version.version) == summary["registered"]["version"]
    assert version.tags["parity_passed"] == "true"


def test_train_at_int8_records_the_metric_drop(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = train(tmp_path, uri, "--precision", "int8")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    client = MlflowClient(uri)
    run = client.get_run(summary["mlflow"]["run_id"])
    metrics = run.data.metrics
    print({k: v for k, v in metrics.items() if "int8" in k or "fp32" in k or "drop" in k})
    assert run.data.params["precision"] == "int8"
    assert {"fp32_accuracy", "int8_accuracy", "precision_metric_drop"} <= set(metrics)
    assert metrics["precision_metric_drop"] == pytest.approx(metrics["fp32_accuracy"] - metrics["int8_accuracy"])
    model = client.get_logged_model(summary["mlflow"]["model_uri"].split("/")[-1])
    assert model.tags["rnnkit.precision"] == "int8" and "rnnkit.metric_drop" in model.tags
    assert "int8 err" not in proc.stdout and "fp32 " in proc.stdout  # the summary line names both metrics


def test_tracking_server_down_training_goes_on_and_keeps_everything(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    started = time.perf_counter()
    proc = train(tmp_path, down)
    took = time.perf_counter() - started
    print(proc.stderr.strip().splitlines()[-1], f"({took:.0f} s)")
    assert proc.returncode == 0, proc.stderr
    assert "MLflow tracking at" in proc.stderr and "training goes on" in proc.stderr
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "bundle" / "manifest.json").is_file()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["mlflow"]["failed"]
    (tmp_path / "again").mkdir()
    registered = train(tmp_path / "again", down, "--register", "toy")
    assert registered.returncode == 1
    assert "not registered" in registered.stderr and "rnnkit register" in registered.stderr
    assert (tmp_path / "again" / "run" / "model.pt").is_file()


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"),
            "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the server forks workers: stop the whole group
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
    yield proc, url
    stop_group(proc, signal.SIGTERM)


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_train_against_a_real_tracking_server(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    _, url = mlflow_server
    proc = train(tmp_path, url, "--register", "served", "--alias", "champion")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    client = MlflowClient(url)
    assert client.get_run(summary["mlflow"]["run_id"]).info.status == "FINISHED"
    assert int(client.get_model_version_by_alias("served", "champion").version) == 1


def test_tracking_server_dies_mid_run_training_finishes_and_keeps_everything(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    server, url = mlflow_server
    data = toy_data(tmp_path, "classify")["data"]
    args = ["train", "--task", "classify", "--data", data, "--out", tmp_path / "run", *TINY, "--epochs", "6"]
    train = start(*args, "--json", "--tracking-uri", url)
    lines = []
    for line in train.stderr:  # the run has started on the server: now the server dies
        lines.append(line)
        if line.startswith("MLflow: run"):
            stop_group(server, signal.SIGKILL)
            break
    out, rest = train.communicate(timeout=300)
    stderr = "".join(lines) + rest
    print([line for line in stderr.splitlines() if line.startswith("warning: MLflow")])
    assert train.returncode == 0, stderr
    assert "warning: MLflow tracking at" in stderr and "training goes on" in stderr
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["mlflow"]["failed"] and summary["mlflow"]["run_id"]
    run_dir = tmp_path / "run"
    assert (run_dir / "model.pt").is_file() and (run_dir / "bundle" / "manifest.json").is_file()
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == summary["mlflow"]["run_id"]
    # What the store did get stays readable: the run exists, its params were logged.
    client = MlflowClient(f"sqlite:///{tmp_path}/server.db")
    assert client.get_run(summary["mlflow"]["run_id"]).data.params["task"] == "classify"


def test_ctrl_c_during_an_mlflow_call_is_delivered_when_the_call_returns():
    """Interrupted mid-write, a SQLite store keeps its transaction open and ending the run as
    KILLED then fails with "database is locked"; so a Ctrl-C waits for the call, a second one not."""
    from toolkit.tracking.training import interrupts_deferred

    finished = []

    def call(interrupts: int):
        for _ in range(interrupts):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is handled here, mid-call
        finished.append(interrupts)

    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        call(1)
    assert finished == [1], "the call was cut short by the first Ctrl-C"
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        call(2)
    assert finished == [1], "a second Ctrl-C did not stop the call at once"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
