"""bf16 bundles on OpenVINO: the bundle's fp32 graphs compiled by OpenVINO's CPU plugin with
bfloat16 inference precision, behind the few methods of `onnxruntime.InferenceSession` that the
engine and the certificate call (`run`, `get_inputs`, `get_outputs`, `get_providers`).

Why a second backend: ONNX Runtime has no integer kernels for GRU and RNN, and on a CPU with
AVX512-BF16 or AMX OpenVINO's bf16 ran a biGRU 2x256 2.2x faster than ONNX Runtime fp32 (README,
"Reduced precision"); for LSTM, ONNX Runtime int8 is faster and bf16 is not offered. Optional:
`pip install rnnkit[openvino]`; without it (or without BF16 in the CPU) a bf16 bundle runs its
fp32 graphs on ONNX Runtime, which is more exact, only slower.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

PROVIDER = "OpenVINO-CPU-bf16"


@functools.cache
def bf16_works() -> bool:
    """Whether OpenVINO is installed and its CPU plugin computes in bfloat16 here."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - not installed, or no CPU plugin: the answer is no
        return False


@dataclass(frozen=True)
class Port:
    """What ONNX Runtime's NodeArg says: a name and a shape (ints, or names for dynamic axes)."""

    name: str
    shape: list


class OpenVINOSession:
    """An ONNX graph compiled by OpenVINO for the CPU at bf16 inference precision."""

    def __init__(self, model: bytes, threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        graph = core.read_model(model)
        config = {"INFERENCE_PRECISION_HINT": "bf16"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(graph, "CPU", config)
        self.inputs = [Port(p.get_any_name(), _shape(p)) for p in graph.inputs]
        self.outputs = [Port(p.get_any_name(), _shape(p)) for p in graph.outputs]
        self._local = threading.local()  # an infer request is not shared between threads

    def get_inputs(self) -> list[Port]:
        return self.inputs

    def get_outputs(self) -> list[Port]:
        return self.outputs

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(feeds)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        names = output_names or [o.name for o in self.outputs]
        return [np.array(by_name[n], copy=True) for n in names]  # the request reuses its buffers


def _shape(port) -> list:
    return [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(port.get_partial_shape())]
