"""The parity stress benchmark runs end to end (its --quick set: six small models, every task)."""

from __future__ import annotations

import json
import math

from benchmarks.parity import main


def test_parity_stress_quick_run_certifies_every_model(tmp_path, capsys):
    code = main(["--quick", "--out", str(tmp_path)])
    print(capsys.readouterr().out[-1500:])
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["failed_exports"] == 0
    assert len({r["model"] for r in rows}) == 6 and len(rows) == summary["cases"]
    assert all(math.isfinite(r["margin"]) and r["passed"] for r in rows)
    assert {r["task"] for r in rows} == {"classify", "tag", "lm", "regress", "regress-step"}
    assert any(r["name"].startswith("sample file") for r in rows)  # the 2,000-step --sample case
