"""Batch scoring on a real local Spark (`rnnkit infer --engine spark`, `make spark-test`): the rows
scored through `mlflow.pyfunc.spark_udf` equal `rnnkit infer`'s, in input order, for a bundle
directory (10,000 token sequences, bidirectional) and a registered model URI (feature series)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.helpers import rnnkit, trained_run, write_jsonl
from toolkit.export.exporter import export

pytestmark = pytest.mark.spark
pytest.importorskip("pyspark")


def infer_both(model, data, tmp_path) -> tuple[list[dict], list[dict], dict]:
    timings = {}
    for engine in ("onnxruntime", "spark"):
        started = time.perf_counter()
        out = rnnkit("infer", model, "--input", data, "--output", tmp_path / f"{engine}.jsonl", "--engine", engine,
                     "--json", timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        timings[engine] = time.perf_counter() - started
    rows = [[json.loads(line) for line in (tmp_path / f"{e}.jsonl").read_text().splitlines()] for e in timings]
    return rows[0], rows[1], timings


def test_spark_scores_10000_sequences_as_rnnkit_infer_does(tmp_path):
    run = trained_run(tmp_path, "classify", "lstm", bidirectional=True)
    export(run, tmp_path / "bundle")
    rng = np.random.default_rng(0)
    letters = list("abcdef")
    rows = [{"tokens": list(rng.choice(letters, size=int(rng.integers(1, 40)))), "label": "a"} for _ in range(10_000)]
    data = write_jsonl(tmp_path / "many.jsonl", rows)
    local, spark, timings = infer_both(tmp_path / "bundle", data, tmp_path)
    rates = {k: f"{len(rows) / v:,.0f} rows/s ({v:.1f} s, process start included)" for k, v in timings.items()}
    print(f"10,000 sequences: {rates}")
    assert [r["index"] for r in spark] == list(range(len(rows)))
    assert [r["prediction"] for r in spark] == [r["prediction"] for r in local]
    worst = max(float(np.abs(np.subtract(a["scores"], b["scores"])).max()) for a, b in zip(local, spark, strict=True))
    print(f"max |scores spark - scores infer| {worst:.1e}")
    assert worst <= 1e-6


def test_spark_scores_a_registered_model_by_its_uri(tmp_path):
    """Feature series, one value per step, through models:/NAME@ALIAS (spark_udf on the logged model)."""
    from mlflow import MlflowClient

    from toolkit.tracking.pyfunc import log_bundle

    run = trained_run(tmp_path, "regress-step", "gru", bidirectional=True)
    export(run, tmp_path / "bundle")
    info = log_bundle(tmp_path / "bundle", registered_model_name="spark-series")
    MlflowClient().set_registered_model_alias("spark-series", "champion", info.registered_model_version)
    rng = np.random.default_rng(1)
    rows = [{"features": rng.normal(size=(int(rng.integers(1, 30)), 2)).round(4).tolist()} for _ in range(2000)]
    data = write_jsonl(tmp_path / "series.jsonl", rows)
    local, spark, timings = infer_both("models:/spark-series@champion", data, tmp_path)
    worst = max(float(np.abs(np.subtract(a["values"], b["values"])).max()) for a, b in zip(local, spark, strict=True))
    print(f"2,000 series via the registry: max |values spark - values infer| {worst:.1e}; {timings}")
    assert [r["index"] for r in spark] == list(range(len(rows)))
    assert worst <= 1e-6


def test_spark_refuses_a_file_without_the_models_column(tmp_path):
    run = trained_run(tmp_path, "classify", "lstm")
    export(run, tmp_path / "bundle")
    data = write_jsonl(tmp_path / "wrong.jsonl", [{"features": [[1.0]]}])
    out = rnnkit("infer", tmp_path / "bundle", "--input", data, "--output", tmp_path / "o.jsonl", "--engine", "spark")
    assert out.returncode == 2 and "no 'tokens' column" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "o.jsonl").exists()


def test_spark_reads_and_writes_parquet(tmp_path):
    """Parquet in, Parquet out (written by the executors), rows keyed by index."""
    import pandas as pd

    run = trained_run(tmp_path, "tag", "gru")
    export(run, tmp_path / "bundle")
    rng = np.random.default_rng(2)
    rows = [{"tokens": list(rng.choice(list("abcdef"), size=int(rng.integers(1, 20))))} for _ in range(3000)]
    pd.DataFrame(rows).to_parquet(tmp_path / "in.parquet")
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = rnnkit("infer", tmp_path / "bundle", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet",
                 "--engine", "spark", "--json", timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    local = rnnkit("infer", tmp_path / "bundle", "--input", tmp_path / "in.jsonl", "--output", tmp_path / "l.jsonl")
    assert local.returncode == 0, local.stderr[-2000:]
    scored = pd.read_parquet(tmp_path / "out.parquet").sort_values("index")
    want = [json.loads(line)["predictions"] for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    print(f"{len(scored)} rows from Parquet; summary {out.stdout.strip()}")
    assert scored["index"].tolist() == list(range(3000))
    assert [list(p) for p in scored["predictions"]] == want
