"""The `rnnkit` command end to end, as real subprocesses (stdout, stderr and exit code checked).

1. Every bad input the data layer rejects, through `rnnkit train`: exit 2, one `error: file:line: ...`
   line on stderr, no traceback, and no run directory written.
2. Bad configuration (YAML keys and values, flags, --device, --out / --resume misuse): same checks.
3. Happy paths: config file + overriding flags, the --json summary, the run directory layout,
   `rnnkit evaluate --json`, --help.
4. Ctrl-C (SIGINT) during training, then --resume: exit 130 with a resume hint, and the resumed run
   ends with weights bit-identical to an uninterrupted run.
5. Real data: JapaneseVowels (shipped in the aeon wheel), trained and scored on its TEST file.

Each CLI call pays for importing torch (~1.5 s of CPU), so the many independent error cases run a
few processes at a time from module-scoped fixtures; every case is still its own parametrized test.
Subprocesses run with OMP_NUM_THREADS=1 so parallel runs do not oversubscribe the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests import helpers

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WORKERS = max(2, min(4, os.cpu_count() or 2))
CUDA = torch.cuda.is_available()
# Tiny models: a run of a few dozen sequences takes well under a second after the imports.
TINY = ["--hidden-size", "8", "--embedding-dim", "8", "--epochs", "1", "--device", "cpu", "--no-progress"]


def rnnkit(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return helpers.rnnkit(*args, timeout=timeout, env=ENV)


def rnnkit_many(argvs: list[list], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Several independent `rnnkit` runs, WORKERS at a time; results in the order given."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(lambda argv: rnnkit(*argv, timeout=timeout), argvs))


def start(*args) -> subprocess.Popen:
    return helpers.start(*args, env=ENV)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*objects) -> str:
    """JSON Lines from dicts (dumped) and strings (taken as they are, e.g. a malformed line)."""
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def last_json_line(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert lines, "nothing on stdout"
    obj = json.loads(lines[-1])
    assert isinstance(obj, dict)
    return obj


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int = 2, log_before: bool = False) -> str:
    """exit `code`, stderr is exactly one 'error: ...' line, no traceback; returns that line.

    log_before: progress lines ("training lstm ...") may come first; the error is then the last line."""
    err = proc.stderr
    print(f"exit {proc.returncode}: {err.strip()}")
    assert "Traceback" not in err, err
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    if not log_before:
        assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def assert_usage_error(proc: subprocess.CompletedProcess) -> str:
    """A click usage error: exit 2, 'Usage:' and 'Error: ...' on stderr, no traceback."""
    err = proc.stderr
    print(f"exit {proc.returncode}: {err.strip()}")
    assert "Traceback" not in err, err
    assert proc.returncode == 2, err
    assert "Usage: rnnkit" in err and "Error: " in err, err
    return err.strip()


# ---------------------------------------------------------------------------------------- sample data

WORDS = ["the", "a", "good", "bad", "film", "plot", "cast", "slow", "fine", "dull"]


def classify_lines(n: int, seed: int = 0) -> list[dict]:
    """Token sequences labelled 'pos' when they hold 'good' (learnable in a few epochs)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
        out.append({"tokens": tokens, "label": "pos" if "good" in tokens else "neg"})
    return out


def tag_lines(n: int, seed: int = 0) -> list[dict]:
    """Token sequences with BIO tags: names are B-PER, cities B-LOC, the rest O."""
    rng = random.Random(seed)
    names = ["John", "Ann", "Bo", "Oslo", "Rome"]
    words = ["the", "sees", "meets", "in", "and", "a", "city", "walks"]
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 14)):
            if rng.random() < 0.3:
                name = rng.choice(names)
                tokens.append(name)
                tags.append("B-LOC" if name in ("Oslo", "Rome") else "B-PER")
            else:
                tokens.append(rng.choice(words))
                tags.append("O")
        out.append({"tokens": tokens, "tags": tags})
    return out


TOK1 = {"tokens": ["a", "fine", "film"], "label": "pos"}
TOK2 = {"tokens": ["dull"], "label": "neg"}
FEAT1 = {"features": [[0.1, 2.0], [0.3, 1.9]], "label": "a"}
FEAT2 = {"features": [[0.4, 1.5]], "label": "b"}
TAG1 = {"tokens": ["John", "runs"], "tags": ["B-PER", "O"]}
REG1 = {"features": [[0.5, 1.0], [0.7, 0.9]], "target": 2.5}
TS_HEADER = "@problemName toy\n@univariate true\n@classLabel true a b\n@data\n1.0,2.0,3.0:a\n2.0,1.0,0.5:b\n"
TEXT = "When shall we three meet again\nIn thunder, lightning, or in rain?\n" * 20


# ---------------------------------------------------------------------------------------- 1. bad data


@dataclass
class Case:
    """One CLI call expected to fail. `argv(d)` builds the arguments from the case's directory d."""

    id: str
    files: dict[str, str | bytes | Callable[[Path], str]]  # contents, or a function of the case's directory
    argv: Callable[[Path], list]
    where: str | None = None  # "file.jsonl:3:" (or "file.jsonl: " when the problem has no line)
    words: tuple[str, ...] = ()  # in the message, case-sensitive
    usage: bool = False  # a click usage error ("Usage: ... Error: ...") rather than "error: ..."
    log_before: bool = False  # training's log lines may precede the error line
    marks: tuple = field(default_factory=tuple)
    # A few cases run as real processes end to end; the others run the same click command in
    # this process (the readers' errors are what they test, not a new interpreter's imports).
    process: bool = False


def train_case(id, task, files, data="d.jsonl", where=None, words=(), val=None, process=False) -> Case:
    def argv(d: Path) -> list:
        extra = ["--val", d / val] if val else []
        return ["train", "--task", task, "--data", d / data, *extra, "--out", d / "run", *TINY]

    return Case(id, files, argv, where, tuple(words), process=process)


BAD_DATA = [
    train_case(
        "jsonl-malformed-json",
        "classify",
        {"d.jsonl": jsonl(TOK1, TOK2, '{"tokens": ["a", "b"], "label": "pos"')},
        where="d.jsonl:3:",
        words=["malformed JSON", "one JSON object"],
        process=True,
    ),
    train_case(
        "jsonl-missing-label",
        "classify",
        {"d.jsonl": jsonl(TOK1, TOK2, {"tokens": ["a", "b"]})},
        where="d.jsonl:3:",
        words=["missing field 'label'"],
    ),
    train_case(
        "jsonl-unknown-field-typo",
        "classify",
        {"d.jsonl": jsonl(TOK1, TOK2, {"tokens": ["a"], "lable": "pos"})},
        where="d.jsonl:3:",
        words=["unknown field 'lable'", "did you mean 'label'", "accepted fields"],
    ),
    train_case(
        "jsonl-tags-tokens-length-mismatch",
        "tag",
        {"d.jsonl": jsonl(TAG1, TAG1, {"tokens": ["Ann", "sees", "Bo"], "tags": ["B-PER", "O"]})},
        where="d.jsonl:3:",
        words=["'tags' has 2 items", "3 tokens", "one tag per step"],
    ),
    train_case(
        "jsonl-feature-width",
        "classify",
        {"d.jsonl": jsonl(FEAT1, FEAT2, {"features": [[0.1, 0.2, 0.3]], "label": "a"})},
        where="d.jsonl:3:",
        words=["expected 2 features per step", "line 1", "got 3"],
    ),
    train_case(
        "jsonl-nan-in-features",
        "classify",
        {"d.jsonl": jsonl(FEAT1, FEAT2, '{"features": [[0.1, 0.2], [0.3, NaN]], "label": "b"}')},
        where="d.jsonl:3:",
        words=["NaN is not a JSON number", "column 33", "finite"],
    ),
    train_case(
        "jsonl-infinity-in-target",
        "regress",
        {"d.jsonl": jsonl(REG1, REG1, '{"features": [[0.5, 1.0]], "target": Infinity}')},
        where="d.jsonl:3:",
        words=["Infinity is not a JSON number", "finite"],
    ),
    train_case(
        "jsonl-deep-nesting",
        "classify",
        {"d.jsonl": jsonl(FEAT1, FEAT2, "[" * 5000 + "]" * 5000)},
        where="d.jsonl:3:",
        words=["malformed JSON", "depth limit exceeded"],
    ),
    train_case(
        "jsonl-5000-digit-integer",
        "classify",
        {"d.jsonl": jsonl(FEAT1, FEAT2, '{"features": [[0.1, ' + "9" * 5000 + ']], "label": "b"}')},
        where="d.jsonl:3:",
        words=["malformed JSON", "beyond float64's range"],
    ),
    train_case(
        "jsonl-lone-surrogate",
        "classify",
        {"d.jsonl": jsonl(TOK1, TOK2, '{"tokens": ["a", "\\ud800"], "label": "pos"}')},
        where="d.jsonl:3:",
        words=["malformed JSON", "surrogate"],
    ),
    train_case(
        "jsonl-feature-beyond-float32",
        "classify",
        {"d.jsonl": jsonl(FEAT1, FEAT2, {"features": [[0.1, 0.2], [0.3, 1e39]], "label": "b"})},
        where="d.jsonl:3:",
        words=["feature 1e+39 at step 2, feature 2", "beyond float32's range"],
    ),
    train_case(
        "jsonl-target-beyond-float32",
        "regress",
        {"d.jsonl": jsonl(REG1, REG1, {"features": [[0.5, 1.0]], "target": -4e38})},
        where="d.jsonl:3:",
        words=["target -4e+38 at value 1", "beyond float32's range"],
    ),
    train_case(
        "jsonl-empty-sequence",
        "classify",
        {"d.jsonl": jsonl(TOK1, TOK2, {"tokens": [], "label": "pos"})},
        where="d.jsonl:3:",
        words=["empty sequence"],
    ),
    train_case(
        "empty-file",
        "classify",
        {"d.jsonl": ""},
        where="d.jsonl: ",
        words=["no examples", "empty"],
    ),
    train_case(
        "missing-file",
        "classify",
        {},
        data="nope.jsonl",
        where="nope.jsonl: ",
        words=["no such file or directory"],
        process=True,
    ),
    train_case(
        "text-not-utf8",
        "lm",
        {"d.txt": b"first line\nsecond line\nbad \xff byte\nlast line\n"},
        data="d.txt",
        where="d.txt:3:",
        words=["not valid UTF-8", "0xff", "save the file as UTF-8"],
        process=True,
    ),
    train_case(
        "val-file-unknown-label",
        "classify",
        {
            "d.jsonl": jsonl(TOK1, TOK2, TOK1, TOK2),
            "v.jsonl": jsonl(TOK1, TOK2, {"tokens": ["meh"], "label": "neutral"}),
        },
        val="v.jsonl",
        where="v.jsonl:3:",
        words=["label 'neutral' does not occur in the training data", "known labels: neg, pos"],
    ),
    train_case(
        "ts-missing-values",
        "classify",
        {"d.ts": TS_HEADER + "1.0,?,2.0:b\n"},
        data="d.ts",
        where="d.ts:7:",
        words=["missing values ('?') are not supported", "dimension 1, value 2"],
    ),
    train_case(
        "conll-column-count",
        "tag",
        {"d.conll": "John B-PER\nruns O\nfast RB O\n\nAnn B-PER\n"},
        data="d.conll",
        where="d.conll:3:",
        words=["expected 2 columns", "line 1", "got 3"],
    ),
    train_case(
        "csv-empty-cell",
        "regress",
        {"d.csv": "t,y\n1,0.5\n2,0.7\n3,\n4,0.9\n"},
        data="d.csv",
        where="d.csv:4:",
        words=["column 'y' is empty", "finite numbers"],
    ),
]


def run_cases(cases: list[Case], base: Path) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Write each case's files under base/<id>, run all cases (a few at a time); {id: (result, dir)}."""
    dirs = []
    for case in cases:
        d = base / case.id
        d.mkdir(parents=True)
        for name, content in case.files.items():
            write(d / name, content(d) if callable(content) else content)
        dirs.append(d)
    argvs = [case.argv(d) for case, d in zip(cases, dirs, strict=True)]
    spawned = iter(rnnkit_many([argv for case, argv in zip(cases, argvs, strict=True) if case.process]))
    pairs = zip(cases, argvs, strict=True)
    results = [next(spawned) if case.process else helpers.in_process(argv) for case, argv in pairs]
    return {case.id: (proc, d) for case, proc, d in zip(cases, results, dirs, strict=True)}


@pytest.fixture(scope="module")
def bad_data_results(tmp_path_factory):
    return run_cases(BAD_DATA, tmp_path_factory.mktemp("bad-data"))


@pytest.mark.parametrize("case", BAD_DATA, ids=[c.id for c in BAD_DATA])
def test_train_rejects_bad_data(bad_data_results, case):
    proc, d = bad_data_results[case.id]
    line = assert_one_error_line(proc)
    # the file and line come right after 'error: ', so the message reads path:line: reason
    assert line.startswith(f"error: {d}{os.sep}{case.where}"), f"expected {case.where!r} first in {line!r}"
    for word in case.words:
        assert word in line, f"expected {word!r} in {line!r}"
    assert proc.stdout == ""
    assert not (d / "run").exists(), "a bad input must not leave a (half-written) run directory"


# ---------------------------------------------------------------------------------------- 2. bad configuration

GOOD = {"d.jsonl": jsonl(*classify_lines(12))}


def config_case(
    id, yaml_text=None, flags=(), words=(), files=None, usage=False, bare=False, log=False, marks=(), process=False
):
    """`rnnkit train` with TINY flags, --task classify and --data d.jsonl unless `flags` give them;
    `bare`: only `train FLAGS` (for --resume, which takes no other flag but --epochs).
    "{d}" in a flag is the case's directory."""
    files = dict(GOOD if files is None else files)
    if yaml_text is not None:
        files["cfg.yaml"] = yaml_text

    def argv(d: Path) -> list:
        flag_list = [str(f).format(d=d) for f in flags]
        if bare:
            return ["train", *flag_list]
        args = ["train", "--out", d / "run", *TINY]
        if yaml_text is not None:
            args += ["--config", d / "cfg.yaml"]
        if "--task" not in flag_list and yaml_text is None:
            args += ["--task", "classify"]
        if "--data" not in flag_list:
            args += ["--data", d / "d.jsonl"]
        return args + flag_list

    return Case(id, files, argv, None, tuple(words), usage, log, tuple(marks), process)


def partial_run_config(d: Path) -> str:
    """config.json of a run stopped during its first epoch: written, but no state.pt yet."""
    from toolkit.core.config import Config

    config = Config(task="classify")
    config.data.data = str(d / "d.jsonl")
    config.model.hidden_size = config.model.embedding_dim = 8
    config.train.out, config.train.device, config.train.epochs = str(d / "partial"), "cpu", 1
    return json.dumps(config.to_dict())


BAD_CONFIG = [
    config_case(
        "yaml-unknown-key",
        "task: classify\nmodel: {cell: lstm, hiden_size: 8}\n",
        words=["cfg.yaml", "unknown key(s) hiden_size", "accepted: cell, nonlinearity, hidden_size"],
        process=True,
    ),
    config_case(
        "yaml-cell-transformer",
        "task: classify\nmodel: {cell: transformer}\n",
        words=["model.cell must be one of rnn, lstm, gru", "'transformer'"],
    ),
    config_case(
        "flag-hidden-size-0",
        flags=["--hidden-size", "0"],
        words=["model.hidden_size must be a positive integer, got 0"],
    ),
    config_case(
        "flag-cell-not-a-choice",
        flags=["--cell", "transformer"],
        words=["Invalid value for '--cell'", "'transformer'", "lstm"],
        usage=True,
        process=True,
    ),
    config_case(
        "lm-bidirectional",
        flags=["--task", "lm", "--data", "{d}/d.txt", "--bidirectional"],
        files={"d.txt": TEXT},
        words=["task lm", "bidirectional model would see the values it must predict", "--unidirectional"],
    ),
    config_case(
        "device-cuda-without-cuda",
        flags=["--device", "cuda"],
        words=["--device cuda", "no CUDA device", "--device cpu"],
        marks=[pytest.mark.skipif(CUDA, reason="this machine has CUDA: --device cuda is valid here")],
    ),
    config_case(
        "resume-empty-directory",
        flags=["--resume", "{d}/empty"],
        files={"empty/.keep": ""},
        words=["empty", "config.json"],
        bare=True,
    ),
    config_case(
        "resume-run-without-a-finished-epoch",
        flags=["--resume", "{d}/partial"],
        files={**GOOD, "partial/config.json": partial_run_config},
        words=["partial", "nothing to resume", "state.pt"],
        bare=True,
        log=True,
    ),
    config_case(
        "monitor-not-a-metric-of-the-task",
        flags=["--monitor", "rmse"],
        words=["train.monitor", "'rmse'", "accuracy"],
    ),
]


@pytest.fixture(scope="module")
def bad_config_results(tmp_path_factory):
    cases = [c for c in BAD_CONFIG if not (CUDA and c.id == "device-cuda-without-cuda")]
    return run_cases(cases, tmp_path_factory.mktemp("bad-config"))


@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.id) for c in BAD_CONFIG])
def test_train_rejects_bad_configuration(bad_config_results, case):
    proc, d = bad_config_results[case.id]
    before = set(case.files)
    text = assert_usage_error(proc) if case.usage else assert_one_error_line(proc, log_before=case.log_before)
    for word in case.words:
        assert word in text, f"expected {word!r} in {text!r}"
    assert proc.stdout == ""
    written = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert written == before, f"a refused configuration must write nothing; new files: {sorted(written - before)}"


# ---------------------------------------------------------------------------------------- 3. happy paths


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    """One real run: a YAML config with flags overriding it, --json, export on (the default)."""
    d = tmp_path_factory.mktemp("classify")
    train = write(d / "train.jsonl", jsonl(*classify_lines(60, seed=1)))
    val = write(d / "val.jsonl", jsonl(*classify_lines(20, seed=2)))
    cfg = write(
        d / "cfg.yaml",
        "task: classify\n"
        "model: {cell: gru, hidden_size: 4, embedding_dim: 8}\n"
        f"data: {{data: {json.dumps(str(train))}, val: {json.dumps(str(val))}}}\n"
        "train: {epochs: 5, lr: 0.02, batch_size: 16, device: cpu}\n",
    )
    out = d / "run"
    proc = rnnkit(
        "train", "--config", cfg, "--hidden-size", "12", "--epochs", "2", "--out", out, "--no-progress", "--json"
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    return {"dir": d, "out": out, "train": train, "val": val, "proc": proc}


def test_train_config_file_with_overriding_flags(classify_run):
    config = json.loads((classify_run["out"] / "config.json").read_text())
    print("config.json:", json.dumps(config))
    assert config["task"] == "classify"
    # from the file
    assert config["model"]["cell"] == "gru" and config["model"]["embedding_dim"] == 8
    assert config["train"]["lr"] == 0.02 and config["train"]["batch_size"] == 16
    assert config["data"]["data"] == str(classify_run["train"]) and config["data"]["val"] == str(classify_run["val"])
    # flags win over the file
    assert config["model"]["hidden_size"] == 12 and config["train"]["epochs"] == 2
    assert config["train"]["out"] == str(classify_run["out"])
    spec = json.loads((classify_run["out"] / "spec.json").read_text())
    assert spec["task"] == "classify" and spec["model"]["hidden_size"] == 12 and spec["model"]["cell"] == "gru"


def test_train_json_summary_is_the_last_stdout_line(classify_run):
    proc, out = classify_run["proc"], classify_run["out"]
    summary = last_json_line(proc.stdout)
    print("summary:", summary)
    assert {"out", "metrics", "best_epoch", "checkpoint"} <= set(summary)
    assert summary["out"] == str(out) and summary["checkpoint"] == str(out / "model.pt")
    assert Path(summary["checkpoint"]).is_file()
    assert summary["epochs_run"] == 2 and 1 <= summary["best_epoch"] <= 2
    assert summary["monitor"] == "val_accuracy"
    assert 0.0 <= summary["metrics"]["accuracy"] <= 1.0 and summary["metrics"]["loss"] > 0
    # export is on by default: the same command ends with a verified bundle
    assert summary["bundle"] == str(out / "bundle") and summary["parity"]["passed"] is True
    # the human-readable report comes before it
    assert proc.stdout.startswith("best epoch ") and f"run directory: {out}" in proc.stdout


def test_train_writes_a_complete_run_directory(classify_run):
    out = classify_run["out"]
    names = {p.name for p in out.iterdir()}
    print("run directory:", sorted(names))
    assert {"config.json", "spec.json", "model.pt", "state.pt", "metrics.json", "vocab.json", "labels.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")], "temporary files left behind"
    assert json.loads((out / "labels.json").read_text()) == ["neg", "pos"]
    assert "good" in json.loads((out / "vocab.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["summary"]["metrics"] == last_json_line(classify_run["proc"].stdout)["metrics"]
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and set(state["model"]) == set(torch.load(out / "model.pt", weights_only=True))


def test_help():
    top = rnnkit("--help")
    assert top.returncode == 0 and top.stderr == ""
    assert "Usage: rnnkit" in top.stdout and "train" in top.stdout and "evaluate" in top.stdout
    train = rnnkit("train", "--help")
    assert train.returncode == 0 and train.stderr == ""
    for flag in ("--config", "--resume", "--json", "--out", "--hidden-size", "--device"):
        assert flag in train.stdout, flag
    evaluate = rnnkit("evaluate", "--help")
    assert evaluate.returncode == 0 and "RUN_DIR" in evaluate.stdout and "--data" in evaluate.stdout


# ------------------------------------------------------------------------- 2b. calls against a finished run


@pytest.fixture(scope="module")
def after_run(classify_run, tmp_path_factory):
    """Calls against the finished run (and one against a non-run), run side by side; the run's
    file hashes are taken before and after."""
    d = tmp_path_factory.mktemp("after-run")
    out = classify_run["out"]
    test = write(d / "test.jsonl", jsonl(TOK1, {"tokens": ["meh"], "label": "neutral"}))
    (d / "not-a-run").mkdir()
    calls = {
        "overwrite": ["train", "--task", "classify", "--data", classify_run["train"], "--out", out, *TINY],
        "resume-with-flag": ["train", "--resume", out, "--hidden-size", "4"],
        "evaluate-unknown-label": ["evaluate", out, "--data", test, "--device", "cpu"],
        "evaluate-not-a-run": ["evaluate", d / "not-a-run", "--data", test, "--device", "cpu"],
        "evaluate-json": ["evaluate", out, "--data", classify_run["val"], "--device", "cpu", "--json"],
    }
    before = {p.name: sha256(p) for p in out.iterdir() if p.is_file()}
    results = dict(zip(calls, rnnkit_many(list(calls.values())), strict=True))
    after = {p.name: sha256(p) for p in out.iterdir() if p.is_file()}
    return {"results": results, "before": before, "after": after, "test": test, "dir": d}


def test_train_refuses_to_overwrite_an_existing_run(classify_run, after_run):
    out = classify_run["out"]
    line = assert_one_error_line(after_run["results"]["overwrite"])
    assert str(out) in line and "already holds a training run" in line and f"--resume {out}" in line
    assert after_run["after"] == after_run["before"], "the existing run was modified"


def test_resume_takes_no_flag_but_epochs(after_run):
    text = assert_usage_error(after_run["results"]["resume-with-flag"])
    assert "only --epochs may change" in text
    assert after_run["after"] == after_run["before"], "the existing run was modified"


def test_evaluate_json_matches_the_validation_score(classify_run, after_run):
    proc = after_run["results"]["evaluate-json"]
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    best = last_json_line(classify_run["proc"].stdout)["metrics"]
    print(f"evaluate on val.jsonl: {metrics}; best epoch during training: {best}")
    assert set(metrics) >= {"accuracy", "macro_f1", "loss"}
    # the best model on the validation file scores what training reported for it
    assert metrics["accuracy"] == pytest.approx(best["accuracy"], abs=1e-12)
    assert metrics["loss"] == pytest.approx(best["loss"], rel=1e-4)


def test_evaluate_rejects_a_label_the_model_never_saw(after_run):
    proc = after_run["results"]["evaluate-unknown-label"]
    line = assert_one_error_line(proc)
    assert f"{after_run['test']}:2:" in line and "label 'neutral' does not occur in the training data" in line
    assert proc.stdout == ""


def test_evaluate_rejects_a_directory_that_is_not_a_run(after_run):
    line = assert_one_error_line(after_run["results"]["evaluate-not-a-run"])
    assert f"{after_run['dir'] / 'not-a-run'}: not a complete rnnkit run directory" in line
    assert "missing config.json, spec.json, model.pt" in line


# ---------------------------------------------------------------------------------------- 4. Ctrl-C and --resume


def wait_for_epochs(metrics: Path, proc: subprocess.Popen, epochs: int = 1, timeout: float = 120) -> int:
    """Poll metrics.json until it lists `epochs` completed epochs (bounded); the count seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before it could be interrupted: {proc.stderr.read()}")
        try:
            done = len(json.loads(metrics.read_text())["history"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            done = 0
        if done >= epochs:
            return done
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no completed epoch in {metrics} after {timeout} s")


@contextmanager
def reaped(*procs: subprocess.Popen):
    """Yield the processes; on the way out kill (and wait for) any still running."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_ctrl_c_then_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    epochs = 20
    data = write(tmp_path / "train.jsonl", jsonl(*tag_lines(200)))
    args = ["train", "--task", "tag", "--data", data, "--hidden-size", "16", "--embedding-dim", "8"]
    args += ["--num-layers", "2", "--dropout", "0.2", "--batch-size", "8", "--epochs", str(epochs)]
    args += ["--device", "cpu", "--no-progress", "--no-export"]
    straight_dir, stopped_dir = tmp_path / "straight", tmp_path / "stopped"
    # the uninterrupted run goes alongside the one that is interrupted and resumed
    with reaped(start(*args, "--out", straight_dir, "--json"), start(*args, "--out", stopped_dir)) as procs:
        straight, stopped = procs
        seen = wait_for_epochs(stopped_dir / "metrics.json", stopped)
        stopped.send_signal(signal.SIGINT)
        _, err = stopped.communicate(timeout=60)
        check_resume_matches(straight, stopped, seen, err, straight_dir, stopped_dir, epochs)


def check_resume_matches(straight, stopped, seen, err, straight_dir: Path, stopped_dir: Path, epochs: int) -> None:
    print(f"SIGINT after {seen} epoch(s) in metrics.json; stderr ends: {err.strip().splitlines()[-1]}")
    assert "Traceback" not in err, err
    assert stopped.returncode == 130, err
    assert "interrupted" in err and f"rnnkit train --resume {stopped_dir}" in err
    assert not [p.name for p in stopped_dir.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    done = torch.load(stopped_dir / "state.pt", map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= done < epochs

    resumed = rnnkit("train", "--resume", stopped_dir, "--no-progress", "--no-export", "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {stopped_dir} after epoch {done}" in resumed.stderr
    summary = last_json_line(resumed.stdout)
    assert summary["epochs_run"] == epochs and summary["out"] == str(stopped_dir)

    straight_out, straight_err = straight.communicate(timeout=300)
    assert straight.returncode == 0, straight_err
    assert last_json_line(straight_out)["metrics"] == summary["metrics"]

    for name in ("state.pt", "model.pt"):  # final weights, and the best epoch's weights
        a = torch.load(straight_dir / name, map_location="cpu", weights_only=False)
        b = torch.load(stopped_dir / name, map_location="cpu", weights_only=False)
        a, b = (a["model"], b["model"]) if name == "state.pt" else (a, b)
        assert a.keys() == b.keys()
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        print(f"{name}: interrupted after epoch {done} + resumed vs uninterrupted: max abs difference {diff:.3e}")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: weights differ (max abs {diff:.3e})"

    # every epoch's numbers agree too (timings aside)
    def numbers(run: Path) -> list[dict]:
        history = json.loads((run / "metrics.json").read_text())["history"]
        return [{k: v for k, v in r.items() if k not in ("seconds", "train_steps_per_s")} for r in history]

    assert numbers(stopped_dir) == numbers(straight_dir)
    assert json.loads((stopped_dir / "labels.json").read_text()) == ["O", "B-LOC", "B-PER"]
    assert "John" in json.loads((stopped_dir / "vocab.json").read_text())


def test_ctrl_c_in_the_first_epoch_does_not_promise_a_resume(tmp_path):
    data = write(tmp_path / "train.jsonl", jsonl(*tag_lines(800, seed=3)))
    out = tmp_path / "run"
    with reaped(start("train", "--task", "tag", "--data", data, "--out", out, *TINY, "--no-export")) as (proc,):
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # config.json is written just before the first epoch starts
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    print(f"exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    if (out / "state.pt").exists():
        pytest.skip("the interrupt landed after the first epoch had finished")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "--resume" not in err, "no epoch finished, so there is nothing to resume"


# ---------------------------------------------------------------------------------------- 5. real data


@pytest.mark.slow
def test_japanese_vowels_train_and_evaluate(tmp_path):
    from toolkit.core.data import example_path
    from toolkit.core.errors import DataError

    try:
        train, test = example_path("JapaneseVowels_TRAIN.ts"), example_path("JapaneseVowels_TEST.ts")
    except DataError as e:
        pytest.skip(f"{e} (install it with: pip install --no-deps aeon==1.6.0, or `make venv`)")
    out = tmp_path / "jv"
    proc = rnnkit(
        "train", "--task", "classify", "--data", train, "--hidden-size", "16", "--epochs", "6", "--lr", "0.01",
        "--batch-size", "16", "--out", out, "--device", "cpu", "--no-progress", "--no-export", "--json",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = last_json_line(proc.stdout)
    labels = json.loads((out / "labels.json").read_text())
    assert labels == [str(i) for i in range(1, 10)] and not (out / "vocab.json").exists()  # 9 speakers, features

    scored = rnnkit("evaluate", out, "--data", test, "--device", "cpu", timeout=300)
    assert scored.returncode == 0, scored.stderr
    print(scored.stdout)
    found = [line.split() for line in scored.stdout.splitlines() if line.strip().startswith("accuracy")]
    assert len(found) == 1, scored.stdout
    accuracy = float(found[0][1])
    chance = 1 / len(labels)
    print(
        f"JapaneseVowels: val accuracy {summary['metrics']['accuracy']:.3f} (best epoch {summary['best_epoch']}), "
        f"TEST accuracy {accuracy:.3f} over 370 cases; chance {chance:.3f}"
    )
    assert accuracy > 0.5, f"test accuracy {accuracy:.3f} is not well above chance ({chance:.3f})"
