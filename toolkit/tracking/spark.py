"""Batch scoring on Apache Spark through the MLflow pyfunc model (`mlflow.pyfunc.spark_udf`), so
millions of sequences are scored where the data already is, with nothing hand-written in between.

    score("models:/tagger@champion", "in.jsonl", "out.jsonl", master="local[2]")   # or a bundle dir

The input is JSON Lines or Parquet with a `tokens` column (lists of token strings) or a
`features` column (lists of steps, each a list of numbers): the JSON Lines training format reads
as is. Rows are numbered in file order first, so the output, one row per input row with its
`index` and the fields `rnnkit infer` writes, comes back in input order. `.jsonl` output is
written by the driver, streamed partition by partition; `.parquet` (a directory) by the
executors, for outputs too large for one machine.

How the model runs: `spark_udf(env_manager="local")` is a pandas UDF: Arrow batches of
`spark.sql.execution.arrow.maxRecordsPerBatch` rows (`batch_size`) go to each executor's Python
worker, which loads the model (and its ONNX Runtime sessions) once and reuses it. Its return
type is a struct built from the model's column signature: `spark_udf` infers types for tensor
signatures of 1 or 2 dimensions only, and rejects variable dimensions after the first, so the
column-based signature and an explicit `result_type` are what works (README, FIELD-NOTES).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from toolkit.core import tasks
from toolkit.core.atomic import atomic_write_bytes
from toolkit.core.bundle import read_manifest
from toolkit.core.errors import RnnkitError
from toolkit.runtime.source import is_uri


class SparkInputError(RnnkitError, ValueError):
    exit_code = 2


# Spark SQL types of the fields `toolkit.runtime.infer.result` writes, per task.
_TOKENS = "array<string>"


def result_type(manifest: dict) -> str:
    """The UDF's return type (a Spark DDL struct) for this bundle's task and output shape."""
    values = "array<array<double>>" if manifest["output"]["per_step"] else "array<double>"
    types = {
        "prediction": "string" if tasks.of(manifest["task"]).predicts == "labels" else _TOKENS,
        "scores": "array<double>",
        "predictions": _TOKENS,
        "values": values,
        "score": "double",
        "nbest": f"array<struct<prediction: {_TOKENS}, score: double>>",
    }
    return ", ".join(f"`{f}` {types[f]}" for f in tasks.of(manifest["task"]).fields)


def score(
    model: str,
    bundle: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    master: str = "local[2]",
    batch_size: int = 512,
) -> dict:
    """Score every row of `input_path` with `model` (an MLflow model URI, or a bundle directory) on
    Spark at `master`; write `output_path`. `bundle`: the model's bundle on this machine (the
    directory itself, or the cached download of the URI: `toolkit.runtime.source.resolve`), read
    for its manifest. Returns a summary."""
    import mlflow.pyfunc
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from toolkit.tracking.pyfunc import input_column, save_bundle

    # Python workers run this interpreter (with its ONNX Runtime, NumPy, pandas) unless told otherwise
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spark = (
        SparkSession.builder.master(master)
        .appName("rnnkit infer")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory(prefix="rnnkit-spark-") as tmp:
        # a bundle directory is saved as a pyfunc model for the executors to load; a URI is loaded as is
        uri = model if is_uri(model) else str(save_bundle(bundle, Path(tmp) / "model"))
        manifest = read_manifest(bundle)
        column = input_column(manifest)
        frame = _read(spark, Path(input_path), column)
        indexed = frame.rdd.zipWithIndex().map(lambda pair: (pair[1], pair[0][column])).toDF(["index", column])
        udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local", result_type=result_type(manifest))
        scored = indexed.select("index", udf(F.struct(column)).alias("r")).select("index", "r.*")
        rows = _write(scored, Path(output_path))
    return {"sequences": rows, "output": str(output_path), "engine": f"spark {master}"}


def _read(spark, path: Path, column: str):
    if not path.exists():
        raise SparkInputError(f"{path}: no such file or directory")
    if path.suffix == ".parquet" or path.is_dir():
        frame = spark.read.parquet(str(path))
    elif path.suffix in (".jsonl", ".json"):
        frame = spark.read.json(str(path))
    else:
        raise SparkInputError(f"{path}: --engine spark reads JSON Lines (.jsonl) or Parquet (.parquet)")
    if column not in frame.columns:
        has = ", ".join(frame.columns)
        raise SparkInputError(f"{path}: no {column!r} column (it has {has}); this model reads {column}")
    return frame


def _write(scored, path: Path) -> int:
    """JSON Lines by the driver in input order (atomic), or Parquet by the executors; the row count."""
    if path.suffix == ".parquet":
        scored.orderBy("index").write.mode("overwrite").parquet(str(path))
        return scored.sparkSession.read.parquet(str(path)).count()  # from the files: no second scoring
    count = [0]

    def lines():
        for row in scored.orderBy("index").toLocalIterator():
            count[0] += 1
            yield (json.dumps(row.asDict(recursive=True)) + "\n").encode("utf-8")

    atomic_write_bytes(path, lines())
    return count[0]
