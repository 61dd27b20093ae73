"""`rnnkit train` / `rnnkit evaluate` end to end, as real processes: bad input and bad config give
one clear line and exit 2 with nothing written; happy paths write a complete run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden-size", "8", "--embedding-dim", "8", "--epochs", "1", "--device", "cpu", "--no-progress"]


def rnnkit(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GOOD_CLASSIFY = '{"tokens": ["a", "b"], "label": "x"}\n{"tokens": ["b"], "label": "y"}\n' * 4

BAD_DATA = [
    # id, task, file name, content, expected line, words expected in the message
    ("malformed-json", "classify", "d.jsonl", '{"tokens": ["a"], "label": "x"}\n{"tokens": [\n', 2, ["JSON"]),
    ("missing-label", "classify", "d.jsonl", '{"tokens": ["a"], "label": "x"}\n{"tokens": ["a"]}\n', 2, ["label"]),
    ("unknown-field", "classify", "d.jsonl", '{"tokens": ["a"], "lable": "x"}\n', 1, ["lable"]),
    (
        "tags-length",
        "tag",
        "d.jsonl",
        '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a", "b", "c"], "tags": ["O"]}\n',
        2,
        ["tags", "3"],
    ),
    (
        "feature-width",
        "classify",
        "d.jsonl",
        '{"features": [[1, 2], [3, 4]], "label": "x"}\n{"features": [[1, 2], [3]], "label": "y"}\n',
        2,
        ["2"],
    ),
    ("nan-feature", "classify", "d.jsonl", '{"features": [[1, NaN]], "label": "x"}\n', 1, ["NaN"]),
    ("inf-target", "regress", "d.jsonl", '{"features": [[1, 2]], "target": Infinity}\n', 1, ["target"]),
    ("empty-sequence", "classify", "d.jsonl", '{"tokens": ["a"], "label": "x"}\n{"tokens": [], "label": "x"}\n', 2, []),
    ("non-utf8", "lm", "d.txt", b"good text\nbad \xff byte\n", 2, ["UTF-8"]),
    (
        "ts-missing-values",
        "classify",
        "d.ts",
        "@problemName t\n@univariate true\n@classLabel true a b\n@data\n1,2,3:a\n1,?,3:b\n",
        6,
        ["missing"],
    ),
]


@pytest.mark.parametrize(
    ("task", "name", "content", "line", "words"), [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_data_is_one_clear_error_and_writes_nothing(tmp_path, task, name, content, line, words):
    data = write(tmp_path / name, content)
    out = tmp_path / "run"
    proc = rnnkit("train", "--task", task, "--data", data, "--out", out, *TINY)
    print(proc.stderr.strip())
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert f"{name}:{line}:" in proc.stderr
    for word in words:
        assert word.lower() in proc.stderr.lower()
    assert not out.exists()


def test_empty_and_missing_files(tmp_path):
    empty = write(tmp_path / "empty.jsonl", "")
    for data, word in ((empty, "empty.jsonl"), (tmp_path / "nope.jsonl", "nope.jsonl")):
        proc = rnnkit("train", "--task", "classify", "--data", data, "--out", tmp_path / "run", *TINY)
        print(proc.stderr.strip())
        assert proc.returncode == 2 and word in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "run").exists()


def test_unknown_label_in_validation_file(tmp_path):
    data = write(tmp_path / "train.jsonl", GOOD_CLASSIFY)
    val = write(tmp_path / "val.jsonl", '{"tokens": ["a"], "label": "x"}\n{"tokens": ["a"], "label": "zebra"}\n')
    proc = rnnkit("train", "--task", "classify", "--data", data, "--val", val, "--out", tmp_path / "run", *TINY)
    print(proc.stderr.strip())
    assert proc.returncode == 2 and "val.jsonl:2:" in proc.stderr and "zebra" in proc.stderr


BAD_CONFIG = [
    ("unknown-key", "model: {cell: lstm, hiden_size: 4}\n", [], ["hiden_size", "hidden_size"]),
    ("bad-cell", "model: {cell: transformer}\n", [], ["transformer", "rnn, lstm, gru"]),
    ("bad-value-flag", "", ["--hidden-size", "0"], ["hidden_size"]),
    ("lm-bidirectional", "", ["--task", "lm", "--bidirectional"], ["bidirectional", "--unidirectional"]),
]


@pytest.mark.parametrize(("yaml_text", "flags", "words"), [c[1:] for c in BAD_CONFIG], ids=[c[0] for c in BAD_CONFIG])
def test_bad_configuration(tmp_path, yaml_text, flags, words):
    data = write(tmp_path / ("train.txt" if "lm" in flags else "train.jsonl"), GOOD_CLASSIFY)
    args = ["train", "--data", data, "--out", tmp_path / "run", *TINY]
    if yaml_text:
        args += ["--config", write(tmp_path / "cfg.yaml", "task: classify\n" + yaml_text)]
    if "--task" not in flags:
        args += ["--task", "classify"]
    proc = rnnkit(*args, *flags)
    print(proc.stderr.strip())
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not (tmp_path / "run" / "state.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path):
    data = write(tmp_path / "train.jsonl", GOOD_CLASSIFY)
    proc = rnnkit("train", "--task", "classify", "--data", data, "--out", tmp_path / "run", *TINY, "--device", "cuda")
    print(proc.stderr.strip())
    assert proc.returncode == 2 and "cuda" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_config_file_flags_json_summary_and_evaluate(tmp_path):
    data = write(tmp_path / "train.jsonl", GOOD_CLASSIFY * 4)
    cfg = write(tmp_path / "cfg.yaml", "task: classify\nmodel: {cell: gru, hidden_size: 4}\ntrain: {epochs: 1}\n")
    out = tmp_path / "run"
    proc = rnnkit(
        "train", "--config", cfg, "--data", data, "--hidden-size", "6", "--epochs", "2", "--out", out, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(summary)
    assert {"out", "metrics", "best_epoch", "checkpoint"} <= set(summary)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["cell"] == "gru" and config["model"]["hidden_size"] == 6 and config["train"]["epochs"] == 2
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "spec.json", "model.pt", "state.pt", "metrics.json", "vocab.json", "labels.json"} <= names
    # --export is on by default: one command ends with a verified bundle
    assert summary["bundle"] == str(out / "bundle") and summary["parity"]["passed"]
    assert {"model.onnx", "step.onnx", "manifest.json", "parity.json"} <= {p.name for p in (out / "bundle").iterdir()}
    assert not [n for n in names if n.endswith(".tmp")]

    again = rnnkit("train", "--config", cfg, "--data", data, "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr

    scored = rnnkit("evaluate", out, "--data", data, "--json")
    assert scored.returncode == 0, scored.stderr
    print("evaluate:", scored.stdout.strip())
    assert 0.0 <= json.loads(scored.stdout)["accuracy"] <= 1.0

    nothing = rnnkit("train", "--resume", tmp_path / "no-such-run")
    assert nothing.returncode == 2 and "no-such-run" in nothing.stderr and "Traceback" not in nothing.stderr


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = write(tmp_path / "train.jsonl", GOOD_CLASSIFY * 200)
    args = ["--task", "classify", "--data", data, "--hidden-size", "32", "--epochs", "6", "--device", "cpu"]
    args += ["--no-progress", "--dropout", "0.2", "--num-layers", "2"]
    straight = rnnkit("train", *args, "--out", tmp_path / "a", timeout=300)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "train", *map(str, args), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.json"
        if metrics.exists() and len(json.loads(metrics.read_text())["history"]) >= 1:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("training finished before it could be interrupted")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    print(err.strip().splitlines()[-1])
    assert proc.returncode == 130 and f"--resume {out}" in err

    resumed = rnnkit("train", "--resume", out, "--no-progress", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=False)["model"]
    b = torch.load(out / "state.pt", weights_only=False)["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |uninterrupted - interrupted+resumed| = {worst:.3e}")
    assert worst == 0.0


def test_real_data_japanese_vowels(tmp_path):
    from toolkit.data import example_path
    from toolkit.errors import DataError

    try:
        train_file, test_file = example_path("JapaneseVowels_TRAIN.ts"), example_path("JapaneseVowels_TEST.ts")
    except DataError as e:
        pytest.skip(str(e))
    out = tmp_path / "jv"
    args = ["--task", "classify", "--data", train_file, "--cell", "gru", "--hidden-size", "32", "--epochs", "8"]
    proc = rnnkit(
        "train", *args, "--lr", "0.005", "--batch-size", "16", "--out", out, "--device", "cpu", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    scored = rnnkit("evaluate", out, "--data", test_file, "--json")
    accuracy = json.loads(scored.stdout)["accuracy"]
    print(f"JapaneseVowels test accuracy after 8 epochs: {accuracy:.3f} (chance 0.111)")
    assert accuracy > 0.6
