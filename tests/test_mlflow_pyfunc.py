"""A bundle logged as an MLflow pyfunc model (toolkit.tracking.pyfunc): loaded with
`mlflow.pyfunc.load_model` it predicts exactly what `rnnkit infer` writes, for every task and every
documented input form (DataFrame, records, dict of columns) with its params; bad input is refused
naming the row; the model loads where rnnkit is not installed; `mlflow models serve` answers every
documented JSON body with the same predictions. Real SQLite store, real server process, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from tests.helpers import ROOT, exported_bundles
from toolkit.core.bundle import BundleError
from toolkit.core.data.vocab import Vocabulary
from toolkit.core.search import Search
from toolkit.runtime.engine import Engine, InputError
from toolkit.runtime.infer import result
from toolkit.runtime.source import bundle_dir_of
from toolkit.tracking.pyfunc import BundleModel, log_bundle, predict_frame

STRAY = ("mlruns", "mlartifacts", "mlflow.db")  # what MLflow's defaults would write to the working tree


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite tracking store and an experiment whose artifacts live in a temporary directory;
    the tracking URI, experiment and device are restored afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    before = {name for name in STRAY if (ROOT / name).exists()}
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("pyfunc", artifact_location=(root / "artifacts").as_uri())
        mp.setenv("MLFLOW_EXPERIMENT_ID", experiment)  # log_model without a run lands here too
        mp.setenv("RNNKIT_DEVICE", "cpu")  # loaded models run where the reference runs
        try:
            yield {"uri": uri, "root": root, "experiment": experiment}
        finally:
            mlflow.set_tracking_uri(previous)
    assert {name for name in STRAY if (ROOT / name).exists()} == before, "MLflow wrote to the working tree"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One bundle per task (token and feature inputs, per-sequence and per-step outputs)."""
    from tests.test_seq2seq import config
    from toolkit.export.exporter import export
    from toolkit.train.loop import train

    made = exported_bundles(
        tmp_path_factory,
        "lstm",
        [
            ("classify", "classify", False),
            ("regress-step", "regress-step", False),
            ("bi-tag", "tag", True),
            ("lm", "lm", False),
            ("regress", "regress", False),
        ],
    )
    root = tmp_path_factory.mktemp("seq2seq")  # one epoch: the certificate, not accuracy, is what matters here
    train(config(root, epochs=1), progress=False, log=lambda m: None)
    assert export(root / "run", root / "bundle", seed=0).written
    return {**made, "seq2seq": root / "bundle"}


TASKS = ["classify", "bi-tag", "lm", "regress", "regress-step", "seq2seq"]


@pytest.fixture(scope="module")
def logged(store, bundles):
    """name -> ModelInfo: classify logged inside a run, the others with no active run."""
    infos = {}
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        infos["classify"] = log_bundle(bundles["classify"], step=3)
    assert infos["classify"].run_id == run.info.run_id
    for name in TASKS[1:]:
        infos[name] = log_bundle(bundles[name], name=name)
    for name, info in infos.items():
        print(f"{name}: {info.model_uri} (run {info.run_id})")
    return infos


def inputs(engine: Engine, lengths, seed=0) -> pd.DataFrame:
    """Random sequences the bundle takes: token strings (an unknown one included) or raw features."""
    rng = np.random.default_rng(seed)
    inp = engine.manifest["input"]
    if inp["kind"] == "tokens":
        words = inp["vocab"][4:] + ["never-seen"]
        return pd.DataFrame({"tokens": [[str(w) for w in rng.choice(words, size=n)] for n in lengths]})
    rows = [(rng.normal(size=(n, inp["num_features"])) * 3).tolist() for n in lengths]
    return pd.DataFrame({"features": rows})


def reference(engine: Engine, frame: pd.DataFrame, search: Search | None = None) -> list[dict]:
    """What `rnnkit infer` writes for these sequences: Engine.infer + toolkit.runtime.infer.result."""
    inp = engine.manifest["input"]
    if inp["kind"] == "tokens":
        vocab = Vocabulary(inp["vocab"])
        seqs = [vocab.encode([t.lower() if inp.get("lowercase") else t for t in row]) for row in frame["tokens"]]
    else:
        seqs = [np.asarray(row, dtype=np.float32) for row in frame["features"]]
    return [result(engine.manifest, y) for y in engine.infer(seqs, search=search)]


@pytest.mark.parametrize("name", ["classify", "regress-step", "bi-tag"])
def test_loaded_model_predicts_what_rnnkit_infer_writes(bundles, logged, name):
    engine = Engine(bundles[name], device="cpu")
    frame = inputs(engine, [5, 1, 40, 3, 17, 2])
    expected = reference(engine, frame)
    model = mlflow.pyfunc.load_model(logged[name].model_uri)
    got = model.predict(frame)
    assert list(got.columns) == list(expected[0])
    assert got.to_dict("records") == expected
    assert model.predict(frame, params={"batch_size": 2}).to_dict("records") == expected
    assert model.predict(frame.to_dict("records")).to_dict("records") == expected
    json.dumps(expected)  # JSON-serialisable, as `rnnkit infer` writes it
    print(f"{name}: {len(expected)} sequences equal; first: {json.dumps(expected[1])[:120]}")


def test_logged_model_metadata_signature_and_environment(bundles, logged):
    info = logged["classify"]
    meta = info.metadata["rnnkit"]
    print("metadata:", json.dumps(meta)[:300])
    assert meta["task"] == "classify" and meta["format"] == "rnnkit-bundle" and meta["parity"]["passed"] is True
    assert meta["input"]["kind"] == "tokens" and meta["graphs"] == ["model.onnx", "step.onnx"]
    assert info.signature.inputs.input_names() == ["tokens"]
    assert info.signature.outputs.input_names() == ["prediction", "scores"]
    assert logged["regress-step"].signature.inputs.input_names() == ["features"]
    # Any, not Array(...): MLflow reads a dict as one row when a column is an Array (see signature)
    assert [str(c.type) for c in logged["regress-step"].signature.inputs.inputs] == ["Any"]
    assert info.signature.params.params[0].name == "batch_size"
    tags = mlflow.get_logged_model(info.model_id).tags
    assert tags["rnnkit.task"] == "classify" and tags["rnnkit.parity_passed"] == "true"
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    requirements = (local / "requirements.txt").read_text().split()
    print("requirements:", requirements)
    assert any(r.startswith(("onnxruntime==", "onnxruntime-gpu==")) for r in requirements)
    assert any(r.startswith("numpy==") for r in requirements) and any(r.startswith("pandas==") for r in requirements)
    assert (local / "code" / "toolkit" / "runtime" / "engine.py").is_file()
    assert not (local / "python_model.pkl").exists()  # models from code: nothing unpickled on load
    assert bundle_dir_of(local) == local / "artifacts" / "bundle"
    assert (bundle_dir_of(local) / "model.onnx").read_bytes() == (bundles["classify"] / "model.onnx").read_bytes()


def test_bad_input_is_refused_naming_the_row(bundles, logged):
    features = mlflow.pyfunc.load_model(logged["regress-step"].model_uri)
    tokens = mlflow.pyfunc.load_model(logged["classify"].model_uri)
    good = [[0.5, 1.5], [2.5, -1.0]]
    cases = [
        (features, {"features": [good, [[1.0, 2.0, 3.0]]]}, InputError, "row 1 (features): shape [1, 3]"),
        (
            features,
            {"features": [good, good, [[1.0, float("nan")]]]},
            InputError,
            "row 2 (features): step 0, feature 1",
        ),
        (features, {"features": [[], good]}, InputError, "row 0 (features): no steps"),
        (features, {"features": [good, [[1.0], [2.0, 3.0]]]}, InputError, "row 1 (features): not a 2-D array"),
        (tokens, {"tokens": [["a"], []]}, InputError, "row 1 (tokens): no steps"),
        (tokens, {"tokens": [["a"], "abc"]}, InputError, "row 1 (tokens): a string ('abc'); accepted: a list of token"),
        (features, {"features": [good[0]]}, InputError, "row 0 (features): a list of 2 numbers, not of steps"),
        # MLflow's schema enforcement answers before the model for a missing column
        (features, {"values": [good]}, MlflowException, "missing inputs ['features']"),
    ]
    for model, columns, error, words in cases:
        for data in (pd.DataFrame(columns), columns):  # a DataFrame and the same dict of columns
            with pytest.raises(error) as e:
                model.predict(data)
            assert words in str(e.value)
        print(f"{type(e.value).__name__}: {e.value}")
    # One sequence alone in a dict: MLflow splits it into rows of bare numbers; the error says so.
    with pytest.raises(InputError, match=r'one sequence in a dict of columns is \{"features": \[\[\[') as e:
        features.predict({"features": good})
    print(e.value)
    with pytest.raises(InputError, match="batch_size: must be at least 1"):
        features.predict(pd.DataFrame({"features": [good]}), params={"batch_size": 0})
    # The model without MLflow's schema in front (BundleModel.predict as MLflow calls it): its own checks.
    engine = Engine(bundles["classify"], device="cpu")
    for bad, words in [
        ({"text": [["a"]]}, "no 'tokens'; accepted: a DataFrame, records or a dict of columns with a column 'tokens'"),
        (pd.DataFrame({"tokens": ["ab", "c"]}), "row 0 (tokens): a string ('ab'); accepted: a list of token strings"),
        ([{"tokens": ["a", 3]}], "row 0 (tokens): token 1 is 3 (type int)"),
        ("a b c", "input is a str"),
    ]:
        with pytest.raises(InputError) as e:
            predict_frame(engine, bad)
        print(f"{type(e.value).__name__}: {e.value}")
        assert words in str(e.value)


def test_input_forms_mlflow_may_pass(bundles):
    """BundleModel.predict as MLflow calls it, on the forms a caller may give without a schema."""
    model = BundleModel()
    model.load_context(type("Context", (), {"artifacts": {"bundle": str(bundles["regress-step"])}})())
    seqs = [[[0.5, 1.5], [2.5, -1.0]], [[1, 2]]]  # integers are fine here (MLflow's schema refuses them)
    expected = model.predict(None, pd.DataFrame({"features": seqs})).to_dict("records")
    assert model.predict(None, [{"features": s} for s in seqs]).to_dict("records") == expected  # records
    assert model.predict(None, {"features": seqs}).to_dict("records") == expected  # a dict of columns
    assert model.predict(None, {"features": np.array(seqs[1])}).to_dict("records") == expected[1:]  # one record
    empty = model.predict(None, pd.DataFrame({"features": []}))
    assert len(empty) == 0 and list(empty.columns) == ["values"]


def arrow_cell(row: list) -> np.ndarray:
    """A cell as Arrow's pandas conversion (spark_udf) gives it: a 1-D object array of token
    strings or of float64 step arrays."""
    cell = np.empty(len(row), dtype=object)
    for i, item in enumerate(row):
        cell[i] = item if isinstance(item, str) else np.asarray(item, dtype=np.float64)
    return cell


def documented_forms(frame: pd.DataFrame) -> list[tuple[str, Any]]:
    """The input forms README shows for `predict`, and the one spark_udf passes: (label, data
    holding `frame`'s sequences in order)."""
    column = frame.columns[0]
    return [
        ("DataFrame", frame),
        ("records", frame.to_dict("records")),
        ("dict of columns", {column: frame[column].tolist()}),
        ("DataFrame of NumPy arrays (as spark_udf gives it)", pd.DataFrame({column: frame[column].map(arrow_cell)})),
    ]


@pytest.mark.parametrize("name", TASKS)
def test_every_documented_input_form_through_the_loaded_model(bundles, logged, name):
    """`mlflow.pyfunc.load_model(...).predict` (MLflow's schema enforcement in front of the model)
    on each documented form: ragged, equal-length and single-row; params passed through."""
    engine = Engine(bundles[name], device="cpu")
    model = mlflow.pyfunc.load_model(logged[name].model_uri)
    column = "tokens" if engine.manifest["input"]["kind"] == "tokens" else "features"
    failed = []  # every form and shape tried, so that one run shows all that fail
    for lengths in ([5, 1, 3], [3, 3], [4]):
        frame = inputs(engine, lengths, seed=len(lengths))
        expected = reference(engine, frame)
        for form, data in documented_forms(frame):
            try:
                got = model.predict(data, params={"batch_size": 2}).to_dict("records")
            except MlflowException as e:
                got = f"{type(e).__name__}: ...{str(e)[-90:]}"
            if got != expected:
                failed.append(f"{form}, lengths {lengths}: {str(got)[:200]}")
    assert not failed, "\n".join(failed)
    if column == "tokens":  # a dict of one token list is one sequence, as MLflow reads a dict
        one = frame["tokens"][0]
        assert model.predict({"tokens": one}).to_dict("records") == expected[:1]
    else:  # integers are numbers too
        steps = [[1, -2]] * 3
        got = model.predict({"features": [steps]}).to_dict("records")
        assert got == reference(engine, pd.DataFrame({"features": [steps]}))
    if name == "seq2seq":
        frame = inputs(engine, [4, 2, 6], seed=7)
        params = {"beam": 3, "nbest": 2, "length_penalty": 0.5, "max_len_a": 1.5, "max_len_b": 4}
        got = model.predict({"tokens": frame["tokens"].tolist()}, params=params).to_dict("records")
        assert got == reference(engine, frame, Search(**params))
        assert all(len(row["nbest"]) == 2 for row in got)
    print(f"{name}: {len(documented_forms(frame))} forms x 3 shapes equal to rnnkit infer")


def test_failed_parity_bundle_is_not_logged(bundles, store, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(bundles["classify"], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["parity"]["passed"] = False
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="failed its parity check") as e:
        log_bundle(bad)
    print(e.value)


def test_downloaded_model_runs_where_rnnkit_is_not_installed(bundles, logged, tmp_path):
    """Downloaded, the model's bundle runs with the Engine directly (bundle_dir_of), and the model
    loads in an interpreter that cannot import rnnkit: the toolkit copy in code/ is used."""
    local = Path(mlflow.artifacts.download_artifacts(logged["bi-tag"].model_uri, dst_path=str(tmp_path / "dl")))
    engine = Engine(bundles["bi-tag"], device="cpu")
    frame = inputs(engine, [4, 9, 1], seed=3)
    expected = reference(engine, frame)
    assert reference(Engine(bundle_dir_of(local), device="cpu"), frame) == expected
    code = textwrap.dedent(
        """
        import importlib.util, json, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        sys.path[:] = [p for p in sys.path if p not in ("", sys.argv[3])]
        assert importlib.util.find_spec("toolkit") is None, "rnnkit is importable here"
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model(sys.argv[1])
        import toolkit
        print(json.dumps({"toolkit": toolkit.__file__,
                          "predictions": model.predict(pd.DataFrame(json.loads(sys.argv[2]))).to_dict("records")}))
        """
    )
    args = [sys.executable, "-c", code, str(local), json.dumps(frame.to_dict("list")), str(ROOT)]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print("toolkit loaded from", out["toolkit"])
    assert out["toolkit"].startswith(str(local / "code" / "toolkit"))
    assert out["predictions"] == expected


# ---- mlflow models serve -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Server:
    """`mlflow models serve` as a real process, one model at a time: serving another model stops
    the one before (each start costs about 5 s, so the module starts two)."""

    def __init__(self, uri: str, log_dir: Path):
        self.uri, self.log_dir, self.proc, self.model = uri, log_dir, None, None
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        # The command execs `uvicorn` from PATH: the one installed beside this interpreter.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])

    def serve(self, model_uri: str) -> str:
        """The base URL of a server of `model_uri`, started unless it is the one running."""
        if self.model == model_uri and self.proc.poll() is None:
            return self.base
        self.stop()
        port = free_port()
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
        self.stderr = self.log_dir / f"stderr-{port}"
        with open(self.log_dir / f"stdout-{port}", "w") as stdout, open(self.stderr, "w") as stderr:
            self.proc = subprocess.Popen(
                [*command, "-h", "127.0.0.1", "-p", str(port)],
                cwd=self.log_dir,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group: the server and its uvicorn child end together
            )
        self.model, self.base = model_uri, f"http://127.0.0.1:{port}"
        start, deadline = time.monotonic(), time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited {self.proc.returncode}:\n{self.stderr.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve not up after 120 s:\n{self.stderr.read_text()[-3000:]}")
            time.sleep(0.25)
        print(f"mlflow models serve of {model_uri} up in {time.monotonic() - start:.1f} s at {self.base}")
        return self.base

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def server(store, logged, tmp_path_factory):
    running = Server(store["uri"], tmp_path_factory.mktemp("serve"))
    try:
        yield running
    finally:
        running.stop()


def test_mlflow_models_serve_answers_like_the_python_api(bundles, logged, server):
    served = server.serve(logged["regress-step"].model_uri)
    engine = Engine(bundles["regress-step"], device="cpu")
    frame = inputs(engine, [3, 12, 1, 7], seed=5)
    expected = mlflow.pyfunc.load_model(logged["regress-step"].model_uri).predict(frame).to_dict("records")
    assert expected == reference(engine, frame)
    records = frame.to_dict("records")
    for payload in ({"dataframe_records": records}, {"inputs": records, "params": {"batch_size": 2}}):
        status, answer = post(f"{served}/invocations", payload)
        print(f"{list(payload)}: {status} {json.dumps(answer)[:160]}")
        assert status == 200 and answer == {"predictions": expected}
    status, answer = post(
        f"{served}/invocations", {"dataframe_records": [*records[:2], {"features": [[1.0, 2.0, 3.0]]}]}
    )
    print(f"bad row: {status} {answer}")
    assert status == 400 and "row 2 (features): shape [1, 3]" in answer["message"]


def payloads(frame: pd.DataFrame) -> list[tuple[str, dict, list[int]]]:
    """The JSON bodies README shows for /invocations (and MLflow documents): (label, body, which
    of `frame`'s sequences it holds, in order)."""
    column = frame.columns[0]
    rows, records, every = frame[column].tolist(), frame.to_dict("records"), list(range(len(frame)))
    return [
        ("inputs, dict of columns", {"inputs": {column: rows}}, every),
        ("inputs, dict of columns, equal lengths", {"inputs": {column: [rows[0], rows[0]]}}, [0, 0]),
        ("inputs, dict of columns, one row", {"inputs": {column: [rows[0]]}}, [0]),
        ("inputs, list of sequences", {"inputs": rows}, every),
        ("inputs, records", {"inputs": records}, every),
        ("dataframe_records", {"dataframe_records": records}, every),
        ("dataframe_split", {"dataframe_split": frame.to_dict("split")}, every),
    ]


@pytest.mark.parametrize("name", ["regress-step", "seq2seq"])
def test_mlflow_models_serve_takes_every_documented_form(bundles, logged, server, name):
    """A feature model and a token model (seq2seq, with its search settings in `params`)."""
    served = server.serve(logged[name].model_uri)
    engine = Engine(bundles[name], device="cpu")
    column = "tokens" if engine.manifest["input"]["kind"] == "tokens" else "features"
    frame = inputs(engine, [3, 12, 1, 7], seed=6)
    params = {"batch_size": 2}
    if name == "seq2seq":
        params.update(beam=3, nbest=2, length_penalty=0.5)
    search = Search(**{k: v for k, v in params.items() if k != "batch_size"}) if name == "seq2seq" else None
    expected = {False: reference(engine, frame), True: reference(engine, frame, search)}  # by params given
    failed = []  # every form tried, so that one run shows all that fail
    for label, payload, rows in payloads(frame):
        for extra in ({}, {"params": params}):
            status, answer = post(f"{served}/invocations", {**payload, **extra})
            want = [expected[bool(extra)][i] for i in rows]
            if (status, answer) != (200, {"predictions": want}):
                failed.append(f"{label}{', params' if extra else ''}: {status} {json.dumps(answer)[:150]}")
    assert not failed, "\n".join(failed)
    bad = {"inputs": {column: [frame[column][0], "ab" if column == "tokens" else [1.0]]}}
    status, answer = post(f"{served}/invocations", bad)
    print(f"bad row: {status} {answer['message'][:200]}")
    assert status == 400 and f"row 1 ({column})" in answer["message"]
    if name == "seq2seq":
        status, answer = post(f"{served}/invocations", {"inputs": {column: [frame[column][0]]}, "params": {"beam": 0}})
        print(f"bad param: {status} {answer['message'][:200]}")
        assert status == 400 and "params: beam" in answer["message"] and "got 0" in answer["message"]
