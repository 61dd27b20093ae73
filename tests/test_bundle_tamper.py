"""Tampered bundles: every variant is refused with one BundleError naming the file (`error:` and
exit 2 on the command line) by `verify` and by the engine behind `infer`, `stream` and `serve`;
nothing is read from outside the bundle, nothing unbounded, and no traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, exported_bundles
from toolkit.core.bundle import BundleError
from toolkit.export.verify import verify
from toolkit.runtime.engine import Engine


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False), ("bi", "tag", True)])


def edit(change):
    """A tampering that rewrites manifest.json through `change(manifest)`."""

    def apply(b: Path):
        manifest = json.loads((b / "manifest.json").read_text())
        (b / "manifest.json").write_text(json.dumps(change(manifest) or manifest))

    return apply


def drop(key):
    return edit(lambda m: {k: v for k, v in m.items() if k != key})


def setting(path: str, value):
    def change(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last if not isinstance(node, list) else int(last)] = value

    return edit(change)


def random_graph(b: Path):
    data = np.random.default_rng(0).bytes(4096)
    (b / "model.onnx").write_bytes(data)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["graphs"]["model.onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (b / "manifest.json").write_text(json.dumps(manifest))


def replace_file(name: str, make):
    def apply(b: Path):
        (b / name).unlink()
        make(b / name)

    return apply


def graph_outside(b: Path):
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["graphs"]["../../../../dev/zero"] = manifest["graphs"].pop("model.onnx")
    (b / "manifest.json").write_text(json.dumps(manifest))


def oversized_manifest(b: Path):
    with open(b / "manifest.json", "r+b") as f:
        f.truncate(65 * 2**20)  # sparse: costs no disk


# (id, which bundle, tampering, words in the error, verify only)
TAMPERINGS = [
    (
        "manifest-array",
        "uni",
        lambda b: (b / "manifest.json").write_text("[1, 2]"),
        "not an rnnkit bundle manifest",
    ),
    ("no-input", "uni", drop("input"), "input: Field required"),
    ("no-output", "uni", drop("output"), "output: Field required"),
    ("no-graphs", "uni", drop("graphs"), "graphs: Field required"),
    ("no-parity", "uni", drop("parity"), "parity: Field required"),
    ("no-state", "uni", drop("state"), "state: Field required"),
    ("no-task", "uni", drop("task"), "task: Field required"),
    ("graphs-null", "uni", setting("graphs", None), "graphs: Input should be a valid dictionary"),
    ("graphs-number", "uni", setting("graphs", 5), "graphs: Input should be a valid dictionary"),
    (
        "graph-directory",
        "uni",
        replace_file("model.onnx", lambda p: p.mkdir()),
        "model.onnx: not a regular file",
    ),
    ("graph-symlink-loop", "uni", replace_file("model.onnx", lambda p: p.symlink_to(p.name)), "model.onnx"),
    ("graph-random-bytes", "uni", random_graph, "model.onnx"),
    ("state-huge", "uni", setting("state.0.shape", [10**9, "batch", 10**9]), "state.0.shape.0"),
    ("state-string", "uni", setting("state.0.shape", ["2", "batch", "x"]), "state.0.shape.0"),
    ("state-not-the-graphs", "uni", setting("state.0.shape", [3, "batch", 5]), "does not match step.onnx"),
    ("passed-no", "uni", setting("parity.passed", "no"), "parity.passed: Input should be a valid boolean"),
    ("manifest-dev-zero", "uni", replace_file("manifest.json", lambda p: p.symlink_to("/dev/zero")), "manifest"),
    ("manifest-fifo", "uni", replace_file("manifest.json", lambda p: os.mkfifo(p)), "not a regular file"),
    ("manifest-oversized", "uni", oversized_manifest, "over the 67108864"),
    ("graph-outside", "uni", graph_outside, "graphs.../../../../dev/zero"),
    (
        "nan-mean",
        "uni",
        lambda b: (b / "manifest.json").write_text(
            (b / "manifest.json").read_text().replace('"mean": [', '"mean": [NaN, ', 1)
        ),
        "not JSON (NaN",
    ),
    ("unknown-field", "uni", setting("extra", 1), "extra: Extra inputs are not permitted"),
    ("format-version-2", "uni", setting("format_version", 2), "bundle manifest format version 2"),
    ("vocab-size", "bi", setting("input.vocab_size", 5), "vocab has"),
    ("labels-missing", "bi", edit(lambda m: {**m, "output": {"name": "logits", "per_step": True}}), "labels"),
    ("input-renamed", "bi", setting("input.name", "features"), "input"),
    ("no-parity-json", "uni", lambda b: (b / "parity.json").unlink(), "parity.json: missing"),
    (
        "parity-json-disagrees",
        "uni",
        lambda b: (b / "parity.json").write_text(json.dumps({"summary": {"passed": False, "cases": 1}, "cases": []})),
        "one of them was changed",
    ),
]


def tampered(bundles, tmp_path, which, tamper) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(bundles[which], b)
    tamper(b)
    return b


@pytest.mark.parametrize(("which", "tamper", "words"), [t[1:] for t in TAMPERINGS], ids=[t[0] for t in TAMPERINGS])
def test_a_tampered_bundle_is_refused_by_name(bundles, tmp_path, which, tamper, words):
    """verify and the engine (infer, stream, serve, generate, the MLflow model) refuse alike: a
    bundle without its certificate once ran everywhere but in verify."""
    b = tampered(bundles, tmp_path, which, tamper)
    for name, use in (("verify", lambda: verify(b)), ("engine", lambda: Engine(b, device="cpu"))):
        with pytest.raises(BundleError) as refused:
            use()
        print(f"{name}: {refused.value}")
        assert str(b) in str(refused.value) and words in str(refused.value)


def test_the_commands_give_one_error_line_and_exit_2(bundles, tmp_path):
    for k, (tid, which, tamper, *_rest) in enumerate(
        t for t in TAMPERINGS if t[0] in ("graph-random-bytes", "state-huge")
    ):
        b = tampered(bundles, tmp_path / str(k), which, tamper)
        data = tmp_path / "in.jsonl"
        data.write_text('{"features": [[0.1, 0.2]]}\n')
        for args in (
            ["verify", b],
            ["infer", b, "--input", data, "--output", tmp_path / "out.jsonl"],
            ["stream", b],
            ["serve", b, "--port", "0"],
        ):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli.main",
                    *map(str, args),
                    *(["--device", "cpu"] if args[0] != "verify" else []),
                ],
                cwd=ROOT,
                input="",
                capture_output=True,
                text=True,
                timeout=120,
            )
            lines = proc.stderr.strip().splitlines()
            print(tid, args[0], proc.returncode, lines[-1:])
            assert proc.returncode == 2 and "Traceback" not in proc.stderr
            assert lines[-1].startswith("error: ") and str(b) in lines[-1]


@pytest.mark.parametrize("which", ["uni", "bi"])
def test_untouched_bundles_pass_every_check(bundles, which):
    """The control: the same checks accept what export wrote (torch-free verify of a bidirectional
    bundle once failed with a KeyError on its missing step graph)."""
    report = verify(bundles[which])
    print(which, [(c.name, f"{c.margin:.3f}") for c in report.cases])
    assert report.passed and Engine(bundles[which], device="cpu").manifest["graphs"]["model.onnx"]["bytes"] > 0
