"""The parity stress benchmark (benchmarks/parity_stress.py) end to end on three small models of
its --quick set: classify with a 2,000-step --sample file, a character LM, regress per step."""

from __future__ import annotations

import json
import math

from benchmarks.parity_stress import quick_specs, stress


def test_three_small_models_are_trained_exported_and_certified(tmp_path):
    summary = stress(quick_specs()[:3], tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rows and len(rows) == summary["cases"] == json.loads((tmp_path / "summary.json").read_text())["cases"]
    assert {r["index"] for r in rows} == {1, 2, 3} and summary["exports"] == 3
    assert {r["task"] for r in rows} == {"classify", "lm", "regress-step"}
    assert any(r["name"].startswith("sample file") for r in rows)
    assert all(math.isfinite(r["margin"]) and r["passed"] for r in rows)
    assert summary["failed_exports"] == 0 and summary["errors"] == []
