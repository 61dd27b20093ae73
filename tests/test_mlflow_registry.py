"""The Model Registry through the real CLI against a real SQLite store: `train --register` with an
alias, streaming from models:/NAME@champion, `rnnkit register` from a bundle directory, a run URI
and a run id, `rnnkit models list/alias`, the version-keyed download cache (a pinned version
starts without MLflow), and the refusals (failed parity, unknown names, non-rnnkit models)."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import TINY, heavy_modules_after, rnnkit, toy_data

pytestmark = pytest.mark.mlflow  # real stores, servers and CLI processes: `make mlflow-test`

MESSAGE = json.dumps({"stream": "s", "tokens": ["a", "b", "c", "a"]}) + "\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh SQLite store and download cache for this module, in the environment every
    `rnnkit` process of these tests inherits."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.MlflowClient(uri).create_experiment("rnnkit", artifact_location=str(root / "artifacts"))
    previous = mlflow.get_tracking_uri()  # in this process too: MLflow resolves models:/ URIs with it
    mlflow.set_tracking_uri(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RNNKIT_CACHE", str(root / "cache"))
        try:
            yield {"uri": uri, "root": root, "cache": root / "cache"}
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def trained(store):
    """`rnnkit train --register toy --alias champion`: one command trains, exports, verifies,
    logs and registers."""
    data = toy_data(store["root"], "classify")["data"]
    out = store["root"] / "run"
    proc = rnnkit("train", "--task", "classify", "--data", data, "--out", out, *TINY,
                  "--register", "toy", "--alias", "champion", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print("registered", summary["registered"], "run", summary["mlflow"]["run_id"])
    assert summary["registered"] == {"name": "toy", "version": 1, "aliases": ["champion"]}
    return {"out": out, "run_id": summary["mlflow"]["run_id"], "bundle": out / "bundle"}


def stream(model: str, *extra: str):
    return rnnkit("stream", model, "--device", "cpu", *extra, input=MESSAGE)


def outputs(proc) -> list:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[0])["outputs"]


def test_train_register_champion_then_stream_from_the_alias(store, trained):
    """Done-when of the registry issue: train -> register with alias champion -> stream from
    models:/toy@champion through the real CLI, equal to streaming the run's own bundle."""
    local = stream(str(trained["bundle"]))
    first = stream("models:/toy@champion")
    print(first.stderr.strip())
    assert outputs(first) == outputs(local)
    assert "downloading models:/toy/1" in first.stderr and "version 1 of 'toy'" in first.stderr
    again = stream("models:/toy@champion")
    assert outputs(again) == outputs(local)
    assert "downloading" not in again.stderr, "the second start downloaded again"
    entries = list(store["cache"].glob("*/models/toy/*"))
    print("cache entries:", [str(p.relative_to(store["cache"])) for p in entries])
    assert [p.name for p in entries] == ["1"]


def test_a_cached_pinned_version_starts_without_mlflow(store, trained):
    assert outputs(stream("models:/toy/1"))  # downloads on first use (or finds the alias's copy)
    assert heavy_modules_after(["stream", "models:/toy/1", "--device", "cpu"], MESSAGE) == []


def test_register_from_directory_run_uri_and_run_id_then_move_the_alias(store, trained):
    from mlflow import MlflowClient

    made = []
    for source in (str(trained["bundle"]), f"runs:/{trained['run_id']}/model", trained["run_id"]):
        proc = rnnkit("register", source, "--name", "toy", "--json")
        assert proc.returncode == 0, proc.stderr
        made.append(json.loads(proc.stdout.strip().splitlines()[-1])["version"])
    print("versions", made)
    assert made == [2, 3, 4]
    client = MlflowClient(store["uri"])
    linked = client.get_model_version("toy", "2")
    assert linked.run_id == trained["run_id"], "a bundle in a run directory is linked to its run"

    moved = rnnkit("models", "alias", "toy", "2", "champion")
    assert moved.returncode == 0, moved.stderr
    print(moved.stdout.strip())
    assert "was version 1" in moved.stdout
    listed = rnnkit("models", "list", "toy", "--json")
    assert listed.returncode == 0, listed.stderr
    versions = {v["version"]: v for v in json.loads(listed.stdout)["versions"]}
    for n, v in versions.items():
        print(n, v["aliases"], v["parity_passed"], v["parity_max_abs"], sorted(v["metrics"]))
    assert sorted(versions) == [1, 2, 3, 4]
    assert versions[2]["aliases"] == ["champion"] and versions[1]["aliases"] == []
    assert all(v["parity_passed"] is True and v["parity_max_abs"] < 1e-5 for v in versions.values())
    assert {"val_loss", "val_accuracy"} <= set(versions[1]["metrics"]) and {"val_loss"} <= set(versions[2]["metrics"])
    table = rnnkit("models", "list", "toy")
    print(table.stdout)
    assert table.returncode == 0 and "champion" in table.stdout and "passed" in table.stdout
    everything = rnnkit("models", "list", "--json")
    assert {"name": "toy", "latest": 4, "aliases": {"champion": 2}} in json.loads(everything.stdout)["models"]

    now = stream("models:/toy@champion")
    assert "version 2 of 'toy'" in now.stderr
    assert outputs(now) == outputs(stream(str(trained["bundle"])))


def test_a_version_whose_parity_failed_is_refused_unless_allowed(store, trained):
    from mlflow import MlflowClient

    client = MlflowClient(store["uri"])
    client.create_registered_model("doubtful")
    # The artifact location, not the models:/m-... source: MLflow resolves that one with its
    # process-global tracking URI instead of this client's.
    location = client.get_model_version_download_uri("toy", "1")
    version = client.create_model_version("doubtful", location, run_id=trained["run_id"]).version
    client.set_model_version_tag("doubtful", version, "parity_passed", "false")
    client.set_model_version_tag("doubtful", version, "parity_max_abs", "0.3")
    refused = stream(f"models:/doubtful/{version}")
    print(refused.stderr.strip())
    assert refused.returncode == 1 and "failed its parity check" in refused.stderr
    assert "--allow-unverified" in refused.stderr
    assert not list(store["cache"].glob("*/models/doubtful")), "a refused version was downloaded"
    assert outputs(stream(f"models:/doubtful/{version}", "--allow-unverified"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stream", "models:/toy@nobody"], "alias nobody not found"),
        (["stream", "models:/toy/99"], "version=99"),
        (["stream", "models:/toy/"], "accepted: a bundle directory, models:/NAME/VERSION"),
        (["infer", "runs:/0123abc/model", "--input", "x", "--output", "y"], "Run with id=0123abc not found"),
        (["register", "no/such/dir", "--name", "toy"], "accepted: a bundle directory, runs:/RUN_ID/PATH"),
        (["models", "alias", "toy", "42", "champion"], "version=42"),
        (["models", "list", "nobody"], "nobody"),
    ],
    ids=["alias", "version", "malformed", "run", "register-source", "alias-version", "list"],
)
def test_unresolvable_models_get_a_clear_error(store, trained, args, expected):
    proc = rnnkit(*args)
    print(proc.stderr.strip())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert expected in proc.stderr
    assert not list(store["cache"].glob("**/.partial-*")), "a failed download left a partial entry"


def test_a_model_that_is_not_rnnkit_is_refused(store, tmp_path):
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    experiment = mlflow.get_experiment_by_name("rnnkit").experiment_id
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo())
    proc = rnnkit("register", f"runs:/{run.info.run_id}/model", "--name", "echo")
    print(proc.stderr.strip())
    assert proc.returncode == 1 and "is not an rnnkit model" in proc.stderr
    served = stream(f"runs:/{run.info.run_id}/model")
    print(served.stderr.strip())
    assert served.returncode != 0 and "not an rnnkit model" in served.stderr


def test_verify_and_infer_take_model_uris(store, trained, tmp_path):
    verified = rnnkit("verify", "models:/toy/1", "--seed", "0", "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout.strip().splitlines()[-1])
    print("verify models:/toy/1:", report["summary"])
    assert report["summary"]["passed"] is True
    data = toy_data(tmp_path, "classify", n=8)["data"]
    runs = rnnkit("infer", f"runs:/{trained['run_id']}/model", "--input", data, "--output", tmp_path / "a.jsonl")
    local = rnnkit("infer", trained["bundle"], "--input", data, "--output", tmp_path / "b.jsonl")
    assert runs.returncode == 0 and local.returncode == 0, runs.stderr + local.stderr
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_a_damaged_cache_entry_is_not_trusted(store, trained):
    """An entry that lost its manifest (removed by hand, disk trouble) is downloaded again."""
    outputs(stream("models:/toy/1"))
    [entry] = list(store["cache"].glob("*/models/toy/1"))
    os.remove(entry / "bundle" / "manifest.json")
    again = stream("models:/toy/1")
    print(again.stderr.strip())
    assert "downloading" in again.stderr and outputs(again)
    assert (entry / "bundle" / "manifest.json").is_file()


def test_registry_queries_import_no_torch(store, trained):
    """`rnnkit models list` read three MLflow settings from the training module, which imports
    torch: seconds of start-up for a registry query."""
    assert "torch" not in heavy_modules_after(["models", "list"])
    assert "torch" not in heavy_modules_after(["models", "list", "--help"])
    assert "torch" not in heavy_modules_after(["models", "alias", "toy", "1", "champion"])


def test_an_alias_on_a_dead_tracking_server_fails_in_seconds(tmp_path, monkeypatch):
    """The models:/NAME@ALIAS lookup missed the capped retries: a dead server cost minutes."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    started = time.monotonic()
    proc = rnnkit("stream", "models:/toy@champion", timeout=600, input=MESSAGE)
    took = time.monotonic() - started
    print(f"dead tracking server: exit {proc.returncode} after {took:.1f} s: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "error: " in proc.stderr and took < 60
