"""Packaging facts the product depends on: the onnxruntime build, and a light CLI entry point."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper


def installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(
    not (platform.system() == "Linux" and platform.machine() == "x86_64"), reason="the GPU build is for Linux x86_64"
)
def test_gpu_build_of_onnxruntime_is_the_one_installed():
    # The two distributions install the same module; exactly one must be present.
    print("onnxruntime-gpu", importlib.metadata.version("onnxruntime-gpu"))
    assert installed("onnxruntime-gpu")
    assert not installed("onnxruntime")


def test_onnxruntime_runs_an_lstm_on_the_cpu_provider():
    """The GPU build still runs the CPU provider where no GPU works (this machine has none)."""
    hidden, features, steps, batch = 4, 3, 5, 2
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 4 * hidden, features], rng.normal(size=16 * 3).tolist())
    r = helper.make_tensor("R", TensorProto.FLOAT, [1, 4 * hidden, hidden], rng.normal(size=16 * 4).tolist())
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=hidden)
    graph = helper.make_graph(
        [node],
        "lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [steps, batch, features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, 1, batch, hidden])],
        initializer=[w, r],
    )
    # Explicit IR version and opset: onnx 1.23 defaults to IR 14, which onnxruntime-gpu 1.31 refuses.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"X": rng.normal(size=(steps, batch, features)).astype(np.float32)})[0]
    print("providers in use:", session.get_providers(), "output", y.shape)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert y.shape == (steps, 1, batch, hidden) and np.isfinite(y).all()


def test_cli_entry_point_imports_neither_torch_nor_mlflow():
    """`rnnkit --help` stays fast: subcommands are imported only when they run."""
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    print("heavy modules imported by `rnnkit --help`:", out.strip())
    assert out.strip() == "[]"
