"""Shared test helpers: toy data, tiny trained runs and bundles, and the one way tests run the
`rnnkit` command in a subprocess. (Fixtures that use them live in conftest.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np

from toolkit.core.config import Config
from toolkit.core.data.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[1]


CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


TASKS = ["classify", "tag", "lm", "regress", "regress-step"]


VOCAB = Vocabulary.build([list("abcdefghij")])
TINY = ["--hidden-size", "8", "--embedding-dim", "8", "--epochs", "2", "--device", "cpu", "--no-progress"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def toy_data(tmp_path, task: str, n: int = 96, seed: int = 0) -> dict:
    """Small learnable data sets; returns DataConfig fields."""
    rng = np.random.default_rng(seed)
    letters = list("abcdef")
    if task == "classify":  # label = the most frequent of a/b/c among the tokens
        rows = []
        for _ in range(n):
            toks = list(rng.choice(letters, size=rng.integers(3, 12)))
            counts = {k: toks.count(k) for k in "abc"}
            rows.append({"tokens": toks, "label": max(counts, key=counts.get)})
        return {"data": write_jsonl(tmp_path / "train.jsonl", rows)}
    if task == "tag":  # BIO chunks of vowels
        rows = []
        for _ in range(n):
            toks = list(rng.choice(letters, size=rng.integers(3, 12)))
            tags, prev = [], False
            for t in toks:
                vowel = t in "ae"
                tags.append(("I-V" if prev else "B-V") if vowel else "O")
                prev = vowel
            rows.append({"tokens": toks, "tags": tags})
        return {"data": write_jsonl(tmp_path / "train.jsonl", rows)}
    if task == "lm":
        text = "".join(rng.choice(["the cat sat. ", "a dog ran. ", "we go home. "]) for _ in range(300))
        (tmp_path / "train.txt").write_text(text, encoding="utf-8")
        return {"data": str(tmp_path / "train.txt")}
    if task == "regress":  # target = mean of feature 0 over the sequence
        rows = []
        for _ in range(n):
            x = rng.normal(size=(int(rng.integers(3, 12)), 2))
            rows.append({"features": x.round(4).tolist(), "target": float(x[:, 0].mean())})
        return {"data": write_jsonl(tmp_path / "train.jsonl", rows)}
    if task == "regress-step":  # target = running sum of feature 0
        rows = []
        for _ in range(n):
            x = rng.normal(size=(int(rng.integers(3, 12)), 2))
            rows.append({"features": x.round(4).tolist(), "target": np.cumsum(x[:, :1], axis=0).tolist()})
        return {"data": write_jsonl(tmp_path / "train.jsonl", rows)}
    raise ValueError(task)


def make_config(tmp_path, task, cell="lstm", nonlinearity="tanh", bidirectional=False, **train_kw) -> Config:
    data = toy_data(tmp_path, task)
    cfg = Config(task="regress" if task.startswith("regress") else task)
    cfg.data.data = data["data"]
    cfg.data.val_fraction = 0.2
    cfg.model.cell, cfg.model.nonlinearity, cfg.model.bidirectional = cell, nonlinearity, bidirectional
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.embedding_dim = 24, 2, 16
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.bptt = 6, 16, 0.02, 32
    cfg.train.device = "cpu"
    cfg.train.out = str(tmp_path / "run")
    for k, v in train_kw.items():
        setattr(cfg.train, k, v)
    return cfg


def trained_run(tmp_path, task, cell="lstm", nonlinearity="tanh", bidirectional=False, **kw) -> Path:
    cfg = make_config(tmp_path, task, cell, nonlinearity, bidirectional, epochs=1)
    for key, value in kw.items():
        setattr(cfg.model, key, value)
    from toolkit.train.loop import train

    train(cfg, progress=False, log=lambda m: None)
    return Path(cfg.train.out)


def exported_bundles(tmp_path_factory, cell: str, specs: list[tuple[str, str, bool]]) -> dict[str, Path]:
    """Train (one epoch) and export one bundle per (name, task, bidirectional)."""
    from toolkit.export.exporter import export

    made = {}
    for name, task, bidirectional in specs:
        d = tmp_path_factory.mktemp(name)
        export(trained_run(d, task, cell, bidirectional=bidirectional), d / "bundle", seed=0)
        made[name] = d / "bundle"
    return made


def rnnkit(*args, timeout: float = 300, input: str | None = None, env: dict | None = None):
    """Run `rnnkit ARGS...` (as `python -m cli.main`, so no installed script is needed) to the end."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def start(*args, env: dict | None = None) -> subprocess.Popen:
    """Start `rnnkit ARGS...` with stdout and stderr piped, for tests that signal or kill it."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def heavy_modules_after(args: list[str], stdin: str = "") -> list[str]:
    """Run `rnnkit ARGS` in a fresh interpreter; which of torch and mlflow did it import?"""
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        f"r = CliRunner().invoke(cli, {[str(a) for a in args]!r}, input={stdin!r}); "
        "assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    print(f"heavy modules after rnnkit {args[0]}:", out.strip().splitlines()[-1])
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def cuda_works() -> bool:
    """Whether a CUDA session really runs here (for skipif on GPU tests)."""
    from toolkit.runtime.providers import cuda_works as works

    return works()


def make_model(task, cell="lstm", nonlinearity="tanh", bidirectional=False, tokens=True, per_step=False, **kw):
    """A small SequenceModel in float64 (eval mode, seeded) for any task, cell and direction."""
    import torch

    from toolkit.core.config import ModelConfig
    from toolkit.core.data.types import InputSpec, OutputSpec
    from toolkit.models.model import SequenceModel

    cfg = ModelConfig(
        cell=cell, nonlinearity=nonlinearity, hidden_size=8, num_layers=2, bidirectional=bidirectional, **kw
    )
    inp = (
        InputSpec("tokens", vocab=VOCAB)
        if tokens
        else InputSpec("features", num_features=3, mean=[0.5] * 3, std=[2.0] * 3)
    )
    if task == "regress":
        out = OutputSpec("regress", num_targets=2, per_step=per_step, target_mean=[1.0, -1.0], target_std=[3.0, 0.5])
    elif task == "lm":
        out = OutputSpec("lm")
    else:
        out = OutputSpec(task, labels=["A", "B", "C"])
    torch.manual_seed(0)
    return SequenceModel(cfg, inp, out).double().eval()


def in_process(argv: list) -> subprocess.CompletedProcess:
    """`rnnkit ARGV` run by click's CliRunner in this process, as a CompletedProcess (an exception
    that escapes the command shows as its traceback on stderr). The environment is restored after."""
    from click.testing import CliRunner

    from cli.main import cli

    saved = dict(os.environ)
    try:
        result = CliRunner().invoke(cli, [str(a) for a in argv], prog_name="rnnkit")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, stderr)
