"""`rnnkit tune` end to end: the real CLI (in this process, through click's runner), a real MLflow
SQLite store and Optuna storage in a temporary directory, tiny classifiers on toy data.

One study is run, then resumed, and read back from both stores:
1. every trial is an MLflow child run of one parent run, with its params, per-epoch metrics and state;
2. a pruned trial (a learning rate that cannot learn, behind the median at epoch 1) ends KILLED, not FAILED;
3. the best trial's bundle carries a passed certificate and runs in toolkit.runtime;
4. a rerun with a larger --trials (and 2 worker processes) runs only the rest, and a trial that a dead
   process left RUNNING blocks nothing; a rerun with other settings is refused;
5. trials the trainer refuses are counted as failed and the study goes on;
6. a hostile or unknown search space is refused before anything runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

from tests import helpers
from toolkit.core.errors import ConfigError
from toolkit.tune.space import load_space
from toolkit.tune.study import default_storage

EXPERIMENT = "tune"
# Only the learning rate is searched: one that learns and one that cannot, so that a hopeless trial
# after a good one is behind the median validation loss at epoch 1 and is pruned (startup 1, warm-up 1).
SPACE = """\
lr: {type: categorical, choices: [0.05, 0.0000001]}
num_layers: null
dropout: null
weight_decay: null
warmup: null
class_weight: null
"""
WORDS = ["the", "a", "good", "bad", "film", "plot", "cast", "slow", "fine", "dull"]


def toy_reviews(path: Path, n: int = 120) -> str:
    """Token sequences labelled pos when they hold 'good': learnt within an epoch at lr 0.05."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        tokens = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(2, 10)))]
        rows.append({"tokens": tokens, "label": "pos" if "good" in tokens else "neg"})
    return helpers.write_jsonl(path, rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root}/store/mlflow.db"
    (root / "store").mkdir()
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    data = toy_reviews(root / "reviews.jsonl")
    (root / "space.yaml").write_text(SPACE, encoding="utf-8")
    previous, threads = mlflow.get_tracking_uri(), torch.get_num_threads()
    torch.set_num_threads(1)  # trials run in this process: as the CLI tests' OMP_NUM_THREADS=1
    yield {"root": root, "uri": uri, "data": data, "space": str(root / "space.yaml")}
    mlflow.set_tracking_uri(previous)  # the CLI ran in this process and pointed MLflow at the store
    torch.set_num_threads(threads)


def tune(store, out: str, *extra):
    argv = ["tune", "--task", "classify", "--data", store["data"], "--val-fraction", "0.25"]
    argv += ["--space", store["space"], "--hidden-size", "8", "--embedding-dim", "8", "--batch-size", "8"]
    argv += ["--epochs", "2"]
    argv += ["--device", "cpu", "--out", store["root"] / out, "--tracking-uri", store["uri"]]
    argv += ["--experiment", EXPERIMENT, "--pruner-startup-trials", "1", "--pruner-warmup-epochs", "1"]
    argv += ["--monitor", "loss"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # the worker processes of --jobs
        proc = helpers.in_process([*argv, "--json", *extra])
    print(proc.stderr)
    return proc


def summary_of(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def runs(store) -> list:
    client = MlflowClient(store["uri"])
    return client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=1000)


def trials_of(summary) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=summary["study"], storage=summary["storage"]).get_trials()


@pytest.fixture(scope="module")
def first(store):
    proc = tune(store, "study", "--trials", "3")
    assert proc.returncode == 0, proc.stderr
    assert "fixed by flags, not searched: batch_size, hidden_size" in proc.stderr
    return summary_of(proc)


def test_trials_are_child_runs_of_one_parent(store, first):
    parent_id = first["mlflow"]["parent_run_id"]
    recorded = runs(store)
    assert [r.info.run_id for r in recorded if r.data.tags.get("rnnkit.kind") == "study"] == [parent_id]
    children = {r.data.tags["rnnkit.trial"]: r for r in recorded if r.data.tags.get("mlflow.parentRunId") == parent_id}
    trials = trials_of(first)
    assert sorted(children) == [str(t.number) for t in trials] == ["0", "1", "2"]
    client = MlflowClient(store["uri"])
    for t in trials:
        run = children[str(t.number)]
        state = {"COMPLETE": "complete", "PRUNED": "pruned"}[t.state.name]
        assert run.data.tags["rnnkit.trial_state"] == state
        assert run.info.status == ("FINISHED" if state == "complete" else "KILLED")
        assert float(run.data.params["train.lr"]) == t.params["lr"]
        assert run.data.params["model.hidden_size"] == "8"  # fixed by its flag
        curve = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in curve] == sorted(t.intermediate_values)  # one point per epoch, as Optuna saw
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(first["best"]["trial"])
    assert parent.data.metrics["trials_complete"] == first["trials"]["complete"]


def test_a_hopeless_trial_is_pruned_not_failed(first):
    assert first["trials"]["pruned"] >= 1 and first["trials"]["failed"] == 0
    pruned = [t for t in trials_of(first) if t.state.name == "PRUNED"]
    assert all(t.params["lr"] < 1e-6 for t in pruned)
    assert first["best"]["params"]["lr"] == 0.05


def test_the_best_trial_is_exported_with_a_passed_certificate(first):
    from toolkit.runtime.engine import Engine

    bundle = Path(first["bundle"])
    assert bundle == Path(first["out"]) / "best" / "bundle"
    certificate = json.loads((bundle / "parity.json").read_text())
    assert certificate["summary"]["passed"] is True and certificate["summary"]["failed"] == 0
    assert first["parity"]["passed"] and first["parity"]["failed"] == 0
    engine = Engine(bundle, device="cpu")
    assert engine.manifest["parity"]["passed"]
    scores = engine.infer([np.array([4, 5, 6, 7]), np.array([8, 9])])
    assert [s.shape for s in scores] == [(2,), (2,)]  # labels neg, pos
    assert first["mlflow"]["model_uri"].startswith("models:/")
    best = json.loads((Path(first["out"]) / "best" / "trial.json").read_text())
    assert best["trial"] == first["best"]["trial"] and best["run_dir"].endswith(f"trials/{best['trial']:04d}")


def test_a_rerun_resumes_and_a_dead_trial_blocks_nothing(store, first):
    # a trial that a killed process left RUNNING: its process is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.load_study(study_name=first["study"], storage=first["storage"])
    stale = study.ask()
    for key, value in {"pid": dead.pid, "host": socket.gethostname(), "out": "nowhere"}.items():
        stale.set_user_attr(key, value)

    proc = tune(store, "study", "--trials", "5", "--jobs", "2", "--register", "tuned", "--alias", "champion")
    assert proc.returncode == 0, proc.stderr
    assert f"trial {stale.number}: its process ({dead.pid}) is gone" in proc.stderr
    summary = summary_of(proc)
    counted = summary["trials"]
    assert counted["complete"] + counted["pruned"] + counted["failed"] == 5
    assert counted["not_counted"] == 1
    trials = trials_of(summary)
    assert len(trials) == 3 + 1 + 2  # only two new trials ran
    assert trials[stale.number].state.name == "FAIL"
    parent_id = summary["mlflow"]["parent_run_id"]
    assert parent_id == first["mlflow"]["parent_run_id"]  # the same parent run, continued
    children = [r for r in runs(store) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 5
    version = MlflowClient(store["uri"]).get_model_version_by_alias("tuned", "champion")
    assert int(version.version) == summary["registered"]["version"]
    assert version.tags["parity_passed"] == "true"

    changed = tune(store, "study", "--trials", "5", "--epochs", "4")
    line = helpers_error_line(changed)
    assert "was started with other settings" in line and "epochs" in line

    late = tune(store, "study", "--trials", "9", "--timeout", "0.001")  # no trial starts past the timeout
    assert late.returncode == 0, late.stderr
    assert len(trials_of(summary_of(late))) == len(trials) and summary_of(late)["best"] == summary["best"]


def test_an_epoch_past_the_timeout_or_with_a_nan_loss_stops_its_trial(tmp_path):
    from toolkit.core.config import Config
    from toolkit.tune.trial import Diverged, Objective, Settings, TimedOut

    class Trial:  # what the reporter asks of an Optuna trial
        reported: dict = {}

        def report(self, value, step):
            self.reported[step] = value

        def should_prune(self):
            return False

    base = Config(task="classify")
    base.train.monitor = "loss"
    settings = Settings(base.to_dict(), {}, str(tmp_path), "s", "sqlite://", "minimize", 1, 1.0, 0, 0, 0)
    report = Objective(settings, log=print)._reporter(Trial(), settings.config())  # deadline 1.0: long past
    with pytest.raises(TimedOut):
        report(1, {"train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.5})
    with pytest.raises(Diverged, match="train_loss is nan after epoch 2"):
        report(2, {"train_loss": float("nan"), "val_loss": 0.6})


def test_trials_the_trainer_refuses_fail_and_the_study_goes_on(store):
    proc = tune(store, "refused", "--trials", "2", "--monitor", "span_f1")  # not a metric of classify
    assert proc.returncode == 1
    summary = summary_of(proc)
    assert summary["trials"]["failed"] == 2 and summary["best"] is None
    parent_id = summary["mlflow"]["parent_run_id"]
    children = [r for r in runs(store) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FAILED" and run.data.tags["rnnkit.trial_state"] == "failed"
        assert "span_f1" in run.data.tags["rnnkit.trial_note"]
    assert MlflowClient(store["uri"]).get_run(parent_id).info.status == "FINISHED"


BAD_SPACES = {
    "unknown key": ("hiden_size: {type: int, low: 8, high: 64}\n", ["'hiden_size'", "searchable keys:", "hidden_size"]),
    "not searched": ("seed: {type: int, low: 0, high: 9}\n", ["'seed' is not searched"]),
    "bad type": ("hidden_size: {type: float, low: 8, high: 64}\n", ["hidden_size", "use type int or categorical"]),
    "bad field": ("lr: {type: float, low: 0.001, high: 0.1, lg: true}\n", ["lr: unknown field(s) lg", "accepted:"]),
    "bad value": ("cell: {type: categorical, choices: [lstm, grue]}\n", ["cell.choices[1]", "rnn, lstm, gru"]),
    "log at 0": ("lr: {type: float, low: 0, high: 0.1, log: true}\n", ["lr: a log scale needs low > 0"]),
    "huge model": ("hidden_size: {type: categorical, choices: [8, 100000000]}\n", ["over the 8192"]),
    "twice": ("lr: {type: float, low: 0.1, high: 0.2}\nlr: {type: float, low: 0.1, high: 0.3}\n", ["appears twice"]),
    "python tag": ("lr: !!python/object/apply:os.system [echo hi]\n", ["not valid YAML"]),
    "not a mapping": ("- lr\n- hidden_size\n", ["expected a mapping"]),
    "deep": ("lr: " + "[" * 1000 + "]" * 1000 + "\n", ["nested too deeply"]),
    "too big": ("# " + "x" * 70_000 + "\n", ["over the 65536 bytes"]),
}


def helpers_error_line(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("case", BAD_SPACES)
def test_a_bad_search_space_is_refused_before_anything_runs(store, tmp_path, case):
    text, expected = BAD_SPACES[case]
    space = tmp_path / "space.yaml"
    space.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_space(space, "classify")
    out = tmp_path / "out"
    proc = helpers.in_process(
        ["tune", "--task", "classify", "--data", store["data"], "--space", space, "--out", out, "--trials", "1"]
    )
    line = helpers_error_line(proc)
    assert all(e in line for e in expected), line
    assert str(space) in line
    assert not out.exists()


def test_storage_defaults_to_a_file_beside_an_sqlite_mlflow_store():
    assert default_storage("sqlite:////data/mlflow/mlflow.db") == "sqlite:////data/mlflow/optuna.db"
    assert default_storage("sqlite:///mlflow.db") == "sqlite:///optuna.db"
    assert default_storage("http://mlflow:5000") == "sqlite:///optuna.db"


def test_the_serving_side_never_imports_optuna():
    code = (
        "import sys, cli.main, cli.serve, cli.infer, cli.stream, toolkit.runtime.engine, toolkit.runtime.server; "
        "print('optuna' in sys.modules, 'toolkit.tune' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
