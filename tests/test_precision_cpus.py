"""int8 bundles compute the same on every x86 CPU: their weights are 7-bit (ONNX Runtime's
reduce_range), so the u8s8 kernels of CPUs without VNNI, which add pairs of products in int16,
cannot saturate. Checked under an emulated AVX2-only CPU (`qemu-x86_64 -cpu Haswell`, Debian's
qemu-user; `.ci/run` installs it) against this machine's own kernels."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import trained_run
from toolkit.export.exporter import export

QEMU = shutil.which("qemu-x86_64")
EMULATED = os.environ.get("RNNKIT_EMULATED_CPU")  # `make cpu-test`: this suite runs under qemu

# Runs the bundle's model.onnx on ONNX Runtime alone (no torch: quick to start under emulation).
RUN = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
lengths = np.full(len(x), x.shape[1], dtype=np.int64)
np.save(sys.argv[3], s.run(None, {"features": x, "lengths": lengths})[0])
"""


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    result = export(trained_run(d, "regress", "lstm", bidirectional=True), d / "bundle", precision="int8")
    assert result.written, result.report.reasons
    return d / "bundle"


def test_int8_weights_are_seven_bit(int8_bundle):
    graph = onnx.load(int8_bundle / "model.onnx").graph
    quantized = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    low, high = min(int(w.min()) for w in quantized), max(int(w.max()) for w in quantized)
    print(f"{len(quantized)} int8 weight tensors, values {low}..{high}")
    assert quantized and low >= -64 and high <= 64  # 255 * 64 * 2 < 2**15: no int16 overflow


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian's qemu-user) is not installed")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the u8s8 int16 kernels are x86's")
def test_int8_bundle_gives_the_same_bits_on_a_cpu_without_vnni(int8_bundle, tmp_path):
    width = next(i for i in onnx.load(int8_bundle / "model.onnx").graph.input if i.name == "features")
    features = width.type.tensor_type.shape.dim[2].dim_value
    x = (3 * np.random.default_rng(0).standard_normal((4, 512, features))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(RUN)
    model = int8_bundle / "model.onnx"
    outputs = {}
    for name, prefix in (("native", []), ("haswell", [QEMU, "-cpu", "Haswell"])):
        out = tmp_path / f"{name}.npy"
        done = subprocess.run([*prefix, sys.executable, script, model, tmp_path / "x.npy", out],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = np.load(out)
    difference = float(np.abs(outputs["native"] - outputs["haswell"]).max())
    print(f"int8 outputs, this CPU vs an AVX2-only CPU: largest difference {difference:.3g}")
    assert difference == 0.0


@pytest.mark.cpu_features
@pytest.mark.skipif(not EMULATED, reason="`make cpu-test` only: the CPU it emulates")
def test_the_emulated_cpu_has_avx2_and_no_avx512():
    """The run that claims an AVX2-only CPU really has one (numpy reads the CPUID qemu emulates)."""
    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    print(f"{EMULATED}: AVX2 {cpu['AVX2']}, AVX512F {cpu['AVX512F']}, AVX512_BF16 {cpu['AVX512BF16']}")
    assert cpu["AVX2"] and not cpu["AVX512F"] and not cpu["AVX512BF16"]
