"""A bundle as an MLflow pyfunc model, so MLflow's own tools (`mlflow.pyfunc.load_model`,
`mlflow models serve`, the Model Registry, `spark_udf`) load and serve rnnkit models.

The logged model carries the bundle directory unchanged as its artifact `bundle`, a copy of the
`toolkit` package as its code (so it loads where rnnkit is not installed: MLflow, ONNX Runtime,
NumPy and pandas are enough) and a three-line model file that MLflow runs on load ("models from
code": nothing is pickled). `predict` runs full-sequence inference through toolkit.runtime (ONNX
Runtime only, no torch) and returns, per input sequence, exactly what `rnnkit infer` writes
(`toolkit.runtime.infer.result`).

Input: one column, `tokens` (each row a list of token strings) or `features` (each row a list of
steps, each a list of `num_features` numbers), whichever the bundle takes: a pandas DataFrame, a
list of records or a dict of columns ({"tokens": [["a", "b"], ["c"]]}; a dict whose `tokens` is
one list of strings is one row), to `predict` or to `mlflow models serve` (`inputs`,
`dataframe_records`, `dataframe_split`). Output: a DataFrame, one row per sequence: classify
`prediction`, `scores`; tag and lm `predictions` (one per step); regress `values`; seq2seq `prediction` (the
best output's tokens), `score` and `nbest` (each {prediction, score}), decoded as the params
`beam`, `nbest`, `length_penalty`, `max_len_a`, `max_len_b` say (greedy by default).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Object, ParamSchema, ParamSpec, Property, Schema

import toolkit
from toolkit.core import tasks
from toolkit.core.bundle import BundleError, read_graph, read_manifest
from toolkit.core.search import SETTINGS, Search
from toolkit.core.versions import installed
from toolkit.runtime.engine import InputError
from toolkit.runtime.source import ARTIFACT

DEVICE_ENV = "RNNKIT_DEVICE"  # where a loaded model runs: auto (default), cpu, cuda, tensorrt
DEFAULT_BATCH_SIZE = 64
MODEL_CODE = "rnnkit_model.py"
MODEL_CODE_TEXT = """# An rnnkit bundle as an MLflow pyfunc model: see code/toolkit/tracking/pyfunc.py.
import mlflow

from toolkit.tracking.pyfunc import BundleModel

mlflow.models.set_model(BundleModel())
"""


class ModelInputError(InputError, MlflowException):
    """Input a logged rnnkit model cannot take (which row, what is wrong, what is accepted).

    An InputError for Python callers, and an MlflowException (INVALID_PARAMETER_VALUE) so that
    `mlflow models serve` answers 400 with this message rather than a generic "unexpected error"."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


# ---- predicting ----------------------------------------------------------------------------
def input_column(manifest: dict) -> str:
    return "tokens" if manifest["input"]["kind"] == "tokens" else "features"


def output_fields(manifest: dict) -> list[str]:
    """The columns of `predict`'s DataFrame: the keys of `toolkit.runtime.infer.result`."""
    return list(tasks.of(manifest["task"]).fields)


def accepted(manifest: dict) -> str:
    if manifest["input"]["kind"] == "tokens":
        return "a DataFrame, records or a dict of columns with a column 'tokens', each row a list of token strings"
    width = manifest["input"]["num_features"]
    return (
        "a DataFrame, records or a dict of columns with a column 'features', each row a list of steps, "
        f"each a list of {width} finite numbers"
    )


def _is_seq(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _is_one_sequence(value: Any, kind: str) -> bool:
    """Whether a dict's column value is one sequence (tokens ["a", "b"]; features [[0.1, 2.0]])
    rather than a column of them."""
    if not _is_seq(value) or len(value) == 0:
        return False
    first = value[0]
    return isinstance(first, str) if kind == "tokens" else _is_seq(first) and len(first) > 0 and not _is_seq(first[0])


def to_frame(model_input: Any, manifest: dict) -> pd.DataFrame:
    """`model_input` as a DataFrame. Accepted: a DataFrame; a list of records
    ([{"tokens": [...]}, ...]); a dict that is one record ({"tokens": ["a", "b"]}, as MLflow reads a
    dict) or a dict of columns ({"tokens": [["a", "b"], ["c"]]})."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    kind = manifest["input"]["kind"]
    try:
        if isinstance(model_input, dict):
            if all(_is_one_sequence(v, kind) or not _is_seq(v) for v in model_input.values()):
                return pd.DataFrame([model_input])
            return pd.DataFrame({k: list(v) for k, v in model_input.items()})
        if isinstance(model_input, list | tuple) and all(isinstance(r, dict) for r in model_input):
            return pd.DataFrame(list(model_input), columns=None if model_input else [input_column(manifest)])
    except (TypeError, ValueError) as e:
        raise ModelInputError(f"input is not a table of sequences ({e}); accepted: {accepted(manifest)}") from None
    raise ModelInputError(f"input is a {type(model_input).__name__}; accepted: {accepted(manifest)}")


def _describe(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "missing"
    text = repr(value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} (type {type(value).__name__})"


def _token_strings(row: Any, where: str, manifest: dict) -> list[str]:
    if isinstance(row, str):
        level = manifest["input"].get("level", "char")
        raise ModelInputError(
            f"{where}: a string ({row[:20]!r}); accepted: a list of token strings (this model reads "
            f"{level}-level tokens: split the text into them first)"
        )
    if not _is_seq(row):
        raise ModelInputError(f"{where}: {_describe(row)}; accepted: a list of token strings")
    tokens = list(row)
    for j, t in enumerate(tokens):
        if not isinstance(t, str):
            raise ModelInputError(f"{where}: token {j} is {_describe(t)}; accepted: a list of token strings")
    return [t.lower() for t in tokens] if manifest["input"].get("lowercase") else tokens


def sequences(engine, model_input: Any, vocab=None) -> list[np.ndarray]:
    """The input's sequences as the engine takes them (int64 ids [T] or float32 [T, F]), each
    checked by `Engine.check`; any problem is a ModelInputError naming the row."""
    manifest = engine.manifest
    column = input_column(manifest)
    frame = to_frame(model_input, manifest)
    if column not in frame.columns:
        columns = [str(c) for c in frame.columns]
        raise ModelInputError(f"input has columns {columns}, no {column!r}; accepted: {accepted(manifest)}")
    out = []
    for i, row in enumerate(frame[column]):
        where = f"row {i} ({column})"
        if column == "tokens":
            if vocab is None:
                from toolkit.core.data.vocab import Vocabulary

                vocab = Vocabulary(manifest["input"]["vocab"])
            row = vocab.encode(_token_strings(row, where, manifest))
        elif not _is_seq(row):
            raise ModelInputError(f"{where}: {_describe(row)}; accepted: {accepted(manifest)}")
        elif len(row) > 0 and all(isinstance(step, int | float | np.number) for step in row):
            # MLflow reads {"features": [[0.5, 1.5], ...]} as a column: one sequence given alone
            # arrives split into one-step rows of bare numbers.
            raise ModelInputError(
                f"{where}: a list of {len(row)} numbers, not of steps; accepted: {accepted(manifest)} "
                '(one sequence in a dict of columns is {"features": [[[0.5, 1.5], ...]]})'
            )
        elif any(isinstance(step, np.ndarray) for step in row):  # MLflow's schema enforcement makes arrays
            row = [step.tolist() if isinstance(step, np.ndarray) else step for step in row]
        try:
            out.append(engine.check(row, where))
        except InputError as e:
            raise ModelInputError(str(e)) from None
    return out


def search(params: dict) -> Search:
    """A seq2seq model's decoding settings from predict's params (Search's defaults for those
    not given), or a ModelInputError naming the param."""
    given = {}
    for name, kind in SETTINGS.items():
        if name in params and params[name] is not None:
            try:
                given[name] = kind(params[name])
            except (TypeError, ValueError, OverflowError):  # int(inf) overflows
                raise ModelInputError(f"param {name}: {params[name]!r} is not a {kind.__name__}") from None
    try:
        return Search(**given).check()
    except ValueError as e:
        raise ModelInputError(f"params: {e}") from None


def predict_frame(
    engine, model_input: Any, batch_size: Any = DEFAULT_BATCH_SIZE, vocab=None, params: dict | None = None
) -> pd.DataFrame:
    """One row per input sequence, in input order, with the fields `rnnkit infer` writes."""
    from toolkit.runtime.infer import result

    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        raise ModelInputError(f"param batch_size: {batch_size!r} is not an integer") from None
    if batch_size < 1:
        raise ModelInputError(f"param batch_size: must be at least 1, got {batch_size}")
    decoding = search(params or {}) if engine.translator is not None else None
    outputs = engine.infer(sequences(engine, model_input, vocab), batch_size=batch_size, search=decoding)
    return pd.DataFrame([result(engine.manifest, y) for y in outputs], columns=output_fields(engine.manifest))


class BundleModel(mlflow.pyfunc.PythonModel):
    """An rnnkit bundle run by toolkit.runtime.Engine (ONNX Runtime). The device comes from the
    environment variable RNNKIT_DEVICE (auto, cpu, cuda, tensorrt; default auto)."""

    def load_context(self, context):
        from toolkit.core.data.vocab import Vocabulary
        from toolkit.runtime.engine import Engine

        self.engine = Engine(context.artifacts[ARTIFACT], device=os.environ.get(DEVICE_ENV, "auto"))
        inp = self.engine.manifest["input"]
        self.vocab = Vocabulary(inp["vocab"]) if inp["kind"] == "tokens" else None

    # The pandas hint tells MLflow 3 not to infer a schema from type hints (it warns when there
    # is no hint at all); the signature given at logging time is the one enforced.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        batch_size = (params or {}).get("batch_size", DEFAULT_BATCH_SIZE)
        return predict_frame(self.engine, model_input, batch_size, self.vocab, params)


# ---- logging -------------------------------------------------------------------------------
def signature(manifest: dict) -> ModelSignature:
    """Input: one column, `tokens` or `features`, of type Any. Output: the fields of
    `toolkit.runtime.infer.result`. Params: batch_size; for seq2seq the search settings.

    Not Array(string) / Array(Array(double)): with an Array column MLflow 3 reads every dict as
    ONE row (`mlflow.models.utils._enforce_schema`; `mlflow models serve` casts an `inputs` dict's
    column as one Array value), so the dict of columns {"tokens": [["a", "b"], ["c"]]} fails
    ("setting an array element with a sequence"). With Any, MLflow still requires the column and
    reads a dict as columns (as one row when its value is a list of strings); `sequences` checks
    each row's type and shape, naming the row. It also spares `spark_udf` MLflow's per-element
    walk of every row."""
    inputs = Schema([ColSpec(AnyType(), input_column(manifest))])
    values = Array(Array(DataType.double)) if manifest["output"]["per_step"] else Array(DataType.double)
    seq2seq = tasks.of(manifest["task"]).predicts == "sequences"
    tokens = Array(DataType.string)
    types = {
        "prediction": tokens if seq2seq else DataType.string,  # classify: the label; seq2seq: the output tokens
        "scores": Array(DataType.double),  # classify: probabilities in label order
        "predictions": tokens,  # tag, lm: a label or next token per step
        "values": values,  # regress
        "score": DataType.double,  # seq2seq: the best output's score
        "nbest": Array(Object([Property("prediction", tokens), Property("score", DataType.double)])),
    }
    outputs = Schema([ColSpec(types[name], name) for name in tasks.of(manifest["task"]).fields])
    params = [ParamSpec("batch_size", DataType.long, DEFAULT_BATCH_SIZE)]
    if seq2seq:
        kinds = {int: DataType.long, float: DataType.double}
        defaults = Search()
        params += [ParamSpec(n, kinds[k], getattr(defaults, n)) for n, k in SETTINGS.items()]
    params = ParamSchema(params)
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(manifest: dict) -> pd.DataFrame:
    """Two short sequences the bundle takes: its first vocabulary tokens, or zeros."""
    inp = manifest["input"]
    if inp["kind"] == "tokens":
        words = [t for t in inp["vocab"][4:] if t.strip()] or ["<unk>"]
        return pd.DataFrame({"tokens": [words[:3], words[:1]]})
    width = int(inp["num_features"])
    return pd.DataFrame({"features": [[[0.0] * width] * 3, [[0.0] * width]]})


def metadata(manifest: dict) -> dict:
    """The model's MLmodel metadata (`ModelInfo.metadata["rnnkit"]`): bundle format, task, model
    and input shape, and the export's parity verdict, for listings that do not download it."""
    pick = lambda d, keys: {k: d[k] for k in keys if k in d}  # noqa: E731
    parity = manifest.get("parity", {})
    return {
        "rnnkit": {
            "format": manifest.get("format"),
            "format_version": manifest.get("format_version"),
            "task": manifest["task"],
            "input": pick(manifest["input"], ("kind", "level", "lowercase", "vocab_size", "num_features")),
            "output": pick(manifest["output"], ("labels", "num_targets", "per_step", "vocab_size", "level")),
            "model": pick(manifest.get("model", {}), ("cell", "num_layers", "hidden_size", "bidirectional")),
            "graphs": sorted(manifest.get("graphs", {})),
            "precision": manifest.get("precision"),
            "opset": manifest.get("opset"),
            "parity": pick(parity, ("passed", "max_abs", "worst_margin", "cases", "failed", "worst_case", "metric")),
            "producer": manifest.get("producer", {}),
        }
    }


def model_tags(manifest: dict) -> dict[str, str]:
    """Tags on the LoggedModel, for `mlflow.search_logged_models(filter_string="tags.`rnnkit.task` = 'tag'")`."""
    parity = manifest.get("parity", {})
    tags = {
        "rnnkit.format_version": str(manifest.get("format_version")),
        "rnnkit.task": manifest["task"],
        "rnnkit.input": manifest["input"]["kind"],
        "rnnkit.parity_passed": str(bool(parity.get("passed"))).lower(),
        "rnnkit.precision": str(manifest.get("precision")),
    }
    if parity.get("metric"):
        tags["rnnkit.metric_drop"] = f"{parity['metric']['drop']:.4g}"
    if "max_abs" in parity:
        tags["rnnkit.parity_max_abs"] = f"{parity['max_abs']:.3g}"
    if parity.get("worst_margin") is not None:
        tags["rnnkit.parity_margin"] = f"{parity['worst_margin']:.3g}"
    return tags


def pip_requirements(manifest: dict | None = None) -> list[str]:
    """What the model needs besides MLflow (which MLflow adds, pinned, itself): the ONNX Runtime
    build installed here (onnxruntime-gpu or onnxruntime; both provide the `onnxruntime` module and
    overwrite each other, so exactly one is listed), NumPy and pandas, pinned as installed here;
    for a bf16 bundle also OpenVINO, which runs it at bf16 (without it, it runs at fp32)."""
    ort = next((d for d in ("onnxruntime-gpu", "onnxruntime") if installed(d)), "onnxruntime")
    needed = [ort, "numpy", "pandas"] + (["openvino"] if (manifest or {}).get("precision") == "bf16" else [])
    return [f"{d}=={installed(d)}" if installed(d) else d for d in needed]


def log_bundle(
    bundle_dir: str | os.PathLike,
    name: str = "model",
    registered_model_name: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    tags: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Log the bundle at `bundle_dir` as a pyfunc model and return MLflow's ModelInfo
    (`model_uri`, `model_id`, `run_id`, `metadata`, ...).

    Inside an active run the model belongs to that run; with none, MLflow 3 creates a LoggedModel
    that belongs to no run (`run_id` None). `step` (e.g. the best epoch) and `model_id` (an existing
    LoggedModel) are passed to MLflow; `registered_model_name` also registers a version; `tags`
    are added to the LoggedModel's; other keyword arguments go to `mlflow.pyfunc.log_model`.
    A bundle that failed its parity check, or whose graphs do not match its manifest, is refused
    (BundleError): the logged model could not be loaded."""
    bundle_dir = Path(bundle_dir).resolve()
    manifest = _checked(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="rnnkit-pyfunc-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            **_model(bundle_dir, manifest, Path(tmp)),
            input_example=input_example(manifest),
            registered_model_name=registered_model_name,
            step=step,
            model_id=model_id,
            tags={**model_tags(manifest), **(tags or {})},
            **kwargs,
        )


def save_bundle(bundle_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The bundle saved as a pyfunc model directory at `path` (no tracking server): what
    `mlflow.pyfunc.load_model(path)` and `spark_udf(spark, path)` load. Checked as `log_bundle`."""
    bundle_dir = Path(bundle_dir).resolve()
    manifest = _checked(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="rnnkit-pyfunc-") as tmp:
        mlflow.pyfunc.save_model(path=str(path), **_model(bundle_dir, manifest, Path(tmp)))
    return Path(path)


def _checked(bundle_dir: Path) -> dict:
    manifest = read_manifest(bundle_dir)
    for graph, info in manifest.get("graphs", {}).items():
        read_graph(bundle_dir, graph, info)
    parity = manifest.get("parity", {})
    if not parity.get("passed"):
        raise BundleError(
            f"{bundle_dir}: this bundle failed its parity check (worst: {parity.get('worst_case')}); "
            "a model logged from it would not load: export it again"
        )
    return manifest


def _model(bundle_dir: Path, manifest: dict, tmp: Path) -> dict:
    """What logging and saving the pyfunc model share: its code file, artifact, code, signature."""
    code = tmp / MODEL_CODE
    code.write_text(MODEL_CODE_TEXT, encoding="utf-8")
    return {
        "python_model": str(code),
        "artifacts": {ARTIFACT: str(bundle_dir)},
        "code_paths": [str(Path(toolkit.__file__).resolve().parent)],
        "signature": signature(manifest),
        "pip_requirements": pip_requirements(manifest),
        "metadata": metadata(manifest),
    }
