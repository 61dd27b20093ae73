"""`rnnkit stream` through the real CLI: interleaved streams equal offline inference; bad lines
get an error reply and nothing else is disturbed; bidirectional bundles are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, exported_bundles, heavy_modules_after, rnnkit
from toolkit.runtime.engine import Engine


def stream(bundle, lines, *args) -> subprocess.CompletedProcess:
    text = "".join(json.dumps(m) + "\n" if not isinstance(m, str) else m + "\n" for m in lines)
    return rnnkit("stream", bundle, "--device", "cpu", *args, input=text, timeout=120)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return exported_bundles(
        tmp_path_factory, "gru", [("tag", "tag", False), ("series", "regress-step", False), ("bi", "tag", True)]
    )


def test_interleaved_streams_equal_offline_inference(bundles):
    engine = Engine(bundles["tag"], device="cpu")
    vocab = engine.manifest["input"]["vocab"]
    rng = np.random.default_rng(0)
    texts = {
        name: [vocab[i] for i in rng.integers(4, len(vocab), size=n)] for name, n in [("a", 40), ("b", 9), ("c", 77)]
    }
    pos = dict.fromkeys(texts, 0)
    messages = []
    while any(pos[k] < len(v) for k, v in texts.items()):
        k = str(rng.choice([k for k in texts if pos[k] < len(texts[k])]))
        size = int(rng.integers(1, 12))
        messages.append({"stream": k, "tokens": texts[k][pos[k] : pos[k] + size]})
        pos[k] += len(messages[-1]["tokens"])
    messages += [{"stream": k, "end": True} for k in texts]
    proc = stream(bundles["tag"], messages)
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(replies) == len(messages)
    offline = engine.infer([np.array([vocab.index(t) for t in texts[k]]) for k in texts])
    worst = 0.0
    for k, want in zip(texts, offline, strict=True):
        mine = [r for r in replies if r["stream"] == k and "outputs" in r]
        assert [r["step"] for r in mine] == sorted(r["step"] for r in mine)
        got = np.concatenate([np.array(r["outputs"]) for r in mine])
        worst = max(worst, float(np.abs(got - want).max()))
    ends = [r for r in replies if r.get("end")]
    print(f"{len(messages)} messages; max |streamed - offline| {worst:.2e}; ends {ends}")
    assert worst <= 1e-5  # replies are rounded to 6 decimals
    assert {r["stream"]: r["steps"] for r in ends} == {k: len(v) for k, v in texts.items()}


def test_bad_lines_are_answered_and_other_streams_go_on(bundles):
    good = {"stream": "ok", "features": [[0.1, 0.2], [0.3, 0.4]]}
    lines = [
        good,
        "{not json",
        {"stream": "ok", "features": [[0.1, 0.2]], "extra": 1},
        {"stream": "x", "features": [[0.1]]},
        {"stream": "x", "features": [[0.1, float("nan")]]},
        {"stream": "x", "tokens": ["a"]},
        {"stream": "x", "features": [[0.0, 0.0]] * 5},
        {"features": [[1.0, 2.0]]},
        "[" * 5000 + "]" * 5000,
        '{"stream": "x", "features": [[1, ' + "9" * 5000 + "]]}",
        '{"stream": "\\ud800", "features": [[1, 2]]}',
        {"stream": "nope", "end": True},
        {"stream": "nope", "reset": True},
        {"stream": "ok", "features": [[0.5, 0.6]]},
    ]
    proc = stream(bundles["series"], lines, "--max-chunk", "4")
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    for r in replies:
        print(r if "error" in r else {"stream": r["stream"], "step": r["step"]})
    assert proc.returncode == 1
    errors = {r["line"]: r["error"] for r in replies if "error" in r}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert "malformed JSON" in errors[2] and "extra" in errors[3] and "2 numbers" in errors[4]
    assert "finite" in errors[5] and "features" in errors[6] and "at most 4" in errors[7] and "stream" in errors[8]
    assert "depth limit" in errors[9] and "beyond float64" in errors[10] and "surrogate" in errors[11]
    assert errors[12].startswith("unknown stream 'nope'") and "reset needs an open one" in errors[13]
    ok = [r for r in replies if r.get("stream") == "ok"]
    assert [r["step"] for r in ok] == [0, 2]  # the stream carried on past the bad lines
    engine = Engine(bundles["series"], device="cpu")
    offline = engine.infer([np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype=np.float32)])[0]
    got = np.concatenate([np.array(r["outputs"]) for r in ok])
    assert np.abs(got - offline).max() <= 1e-5


def test_bytes_that_are_not_utf8_and_overlong_lines_are_refused_by_line(bundles):
    good = b'{"stream": "ok", "features": [[0.1, 0.2]]}\n'
    data = good + b'{"stream": "\xff\xfe", "features": [[1, 2]]}\n' + b"[" * 5000 + b"\n" + good
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "stream",
            str(bundles["series"]),
            "--device",
            "cpu",
            "--max-message-bytes",
            "4096",
        ],
        cwd=ROOT,
        input=data,
        capture_output=True,
        timeout=120,
    )
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    print(replies, proc.stderr.decode()[-500:])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    assert "not valid UTF-8" in replies[1]["error"] and replies[1]["line"] == 2
    assert "longer than 4096 bytes" in replies[2]["error"] and replies[2]["line"] == 3
    assert [r["step"] for r in replies if r.get("stream") == "ok"] == [0, 1]


def test_bidirectional_bundle_is_refused_with_a_pointer_to_infer(bundles):
    proc = stream(bundles["bi"], [])
    print(proc.stderr.strip())
    assert proc.returncode == 2 and "bidirectional" in proc.stderr and "rnnkit infer" in proc.stderr


def test_stream_and_infer_commands_import_neither_torch_nor_mlflow(bundles, tmp_path):
    lines = '{"stream": "a", "tokens": ["a"]}\n{"stream": "a", "end": true}\n'
    assert heavy_modules_after(["stream", bundles["tag"], "--device", "cpu"], lines) == []
    data = tmp_path / "in.jsonl"
    data.write_text('{"tokens": ["a", "b"]}\n', encoding="utf-8")
    assert heavy_modules_after(["infer", bundles["bi"], "--input", data, "--output", tmp_path / "out.jsonl"]) == []


def test_infer_on_real_data_agrees_with_torch_evaluate(tmp_path):
    """`rnnkit infer` (ONNX Runtime, no torch) scores the JapaneseVowels TEST split exactly as
    `rnnkit evaluate` (torch) does, and writes one result per sequence in input order."""
    from toolkit.core.data import example_path
    from toolkit.core.errors import DataError

    try:
        train_file, test_file = example_path("JapaneseVowels_TRAIN.ts"), example_path("JapaneseVowels_TEST.ts")
    except DataError as e:
        pytest.skip(str(e))

    run = tmp_path / "jv"
    args = ["--task", "classify", "--data", train_file, "--cell", "lstm", "--bidirectional", "--hidden-size", "16"]
    trained = rnnkit("train", *args, "--epochs", "3", "--out", run, "--device", "cpu", "--no-progress")
    assert trained.returncode == 0, trained.stderr
    torch_side = json.loads(rnnkit("evaluate", run, "--data", test_file, "--json").stdout)
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        "r = CliRunner().invoke(cli, ['infer', sys.argv[1], '--input', sys.argv[2], '--output', sys.argv[3], "
        "'--device', 'cpu', '--json']); assert r.exit_code == 0, r.output; print(r.output.strip()); "
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    out_file = tmp_path / "predictions.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run / "bundle"), str(test_file), str(out_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary_line, heavy = proc.stdout.strip().splitlines()[-2:]
    onnx_side = json.loads(summary_line)["metrics"]
    print(
        f"accuracy: torch {torch_side['accuracy']:.4f}, onnxruntime {onnx_side['accuracy']:.4f}; heavy modules {heavy}"
    )
    assert onnx_side["accuracy"] == pytest.approx(torch_side["accuracy"], abs=1e-12)
    assert heavy == "[]"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(370)) and all(r["prediction"] in "123456789" for r in rows)


def test_infer_reads_a_csv_series_as_training_did(tmp_path):
    """`rnnkit infer` rebuilt the training config with defaults: a model trained with --horizon 3
    was scored against next-step targets, and --target-columns y failed ("expected 1 target
    columns ... got 2"). The manifest now carries how its data was read."""
    rng = np.random.default_rng(0)
    t = np.arange(300)
    rows = ["x,y"] + [f"{np.sin(i / 7):.4f},{np.cos(i / 5) + 0.1 * rng.normal():.4f}" for i in t]
    data = tmp_path / "series.csv"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    flags = ["--hidden-size", "8", "--epochs", "2", "--device", "cpu", "--no-progress", "--no-mlflow"]
    train = rnnkit(
        "train", "--task", "regress", "--data", data, "--horizon", "3", "--target-columns", "y", "--out", run, *flags
    )
    assert train.returncode == 0, train.stderr
    reader = json.loads((run / "bundle" / "manifest.json").read_text())["reader"]
    assert reader["horizon"] == 3 and reader["target_columns"] == ["y"]
    proc = rnnkit(
        "infer", run / "bundle", "--input", data, "--output", tmp_path / "p.jsonl", "--device", "cpu", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    served = json.loads(proc.stdout)["metrics"]
    values = np.loadtxt(data, delimiter=",", skiprows=1, dtype=np.float32)
    y = Engine(run / "bundle", device="cpu").infer([values])[0][:-3, 0]  # the model on the whole series
    want = np.abs(y - values[3:, 1])  # scored against y three steps ahead
    print(
        "infer:", served, "expected mae:", want.mean(), "if scored one step ahead:", np.abs(y - values[1:-2, 1]).mean()
    )
    assert abs(served["mae"] - want.mean()) <= 1e-5 and abs(served["rmse"] - np.sqrt((want**2).mean())) <= 1e-5
    assert reader["columns"] == ["x", "y"]

    # Columns are read by name: another order gives the same scores (before, a file with y before
    # x was read as if x came first and scored silently wrong); a missing column is refused.
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("y,x\n" + "\n".join(f"{b},{a}" for a, b in (r.split(",") for r in rows[1:])) + "\n")
    again = rnnkit("infer", run / "bundle", "--input", shuffled, "--output", tmp_path / "q.jsonl", "--json")
    assert again.returncode == 0, again.stderr
    print("columns y,x:", json.loads(again.stdout)["metrics"])
    assert json.loads(again.stdout)["metrics"] == served
    missing = tmp_path / "missing.csv"
    missing.write_text("y,z\n" + "\n".join(f"{r.split(',')[1]},7" for r in rows[1:]) + "\n")
    refused = rnnkit("infer", run / "bundle", "--input", missing, "--output", tmp_path / "r.jsonl")
    print(refused.stderr)
    assert refused.returncode == 2 and "no column(s) x" in refused.stderr and "by name" in refused.stderr
