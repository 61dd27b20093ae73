"""Execution providers: use CUDA only where it really works, and say which one runs.

`onnxruntime.get_available_providers()` lists what the build contains (CUDA and TensorRT even on
machines without a GPU), not what works; only a session's `get_providers()` tells. So a session
is created with the GPU provider first (quietly: a failed attempt is an answer, not a wall of
logs) and the provider it actually got decides.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import onnxruntime as ort

from toolkit.core.devices import RUNTIME_DEVICES as DEVICES
from toolkit.core.errors import RnnkitError

PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
CPU = PROVIDER["cpu"]


class DeviceError(RnnkitError):
    exit_code = 2


def make_session(
    model: bytes, device: str = "auto", threads: int | None = None, spin: bool = True, tf32: bool = True
) -> ort.InferenceSession:
    """An InferenceSession on `device`; `session.get_providers()[0]` is the provider in use.

    auto: CUDA when it works here, else the CPU. cuda / tensorrt: that provider or a DeviceError.
    spin=False: intra-op threads sleep between calls instead of busy-waiting for the next one,
    which a server needs: the spinning would take the cores its event loop runs on.
    tf32=False: CUDA computes float32 products in full float32 (the parity certificate's setting).
    """
    if device not in DEVICES:
        raise DeviceError(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = PROVIDER["cuda"] if device == "auto" else PROVIDER[device]
    if wanted == CPU or wanted not in ort.get_available_providers():
        if device in ("cuda", "tensorrt"):
            raise DeviceError(f"--device {device}: this onnxruntime build has no {wanted}; use --device cpu or auto")
        return ort.InferenceSession(model, options, providers=[CPU])
    if wanted == PROVIDER["cuda"] and device == "cuda" and not cuda_works():
        # Checked first: a session that falls back to the CPU can crash on a graph only CUDA
        # runs (ONNX Runtime 1.31's CPU provider segfaults loading a float16 LSTM or GRU).
        raise DeviceError(
            "--device cuda: CUDAExecutionProvider does not work on this machine (no usable GPU, driver or "
            "CUDA libraries); use --device cpu or auto"
        )
    preload_cuda()
    provider = (wanted, {"use_tf32": 0}) if wanted == PROVIDER["cuda"] and not tf32 else wanted
    ort.set_default_logger_severity(4)  # the provider's load errors are expected where no GPU works
    try:
        session = ort.InferenceSession(model, options, providers=[provider, CPU])
    finally:
        ort.set_default_logger_severity(2)
    if device != "auto" and session.get_providers()[0] != wanted:
        raise DeviceError(
            f"--device {device}: {wanted} does not work on this machine (no usable GPU, driver or CUDA "
            "libraries); use --device cpu or auto"
        )
    return session


@functools.cache
def cuda_works() -> bool:
    """Whether a session really runs on CUDA here: a one-node float16 graph on the CUDA provider
    (asked once per process)."""
    if PROVIDER["cuda"] not in ort.get_available_providers():
        return False
    preload_cuda()
    from onnx import TensorProto, helper  # only where a CUDA build is installed

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[PROVIDER["cuda"]])
        return session.get_providers()[0] == PROVIDER["cuda"]
    except Exception:  # noqa: BLE001 - any failure to start the provider means "no"
        return False
    finally:
        ort.set_default_logger_severity(2)


@functools.cache
def preload_cuda() -> None:
    """Load CUDA and cuDNN from their pip packages (nvidia-*), as a pip-installed torch has them,
    before the first CUDA session: onnxruntime-gpu finds them only so (`preload_dlls`)."""
    if importlib.util.find_spec("nvidia") is None:  # no such packages: the system's libraries are used
        return
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.suppress(Exception):
        ort.preload_dlls()  # it prints each library it cannot find; the session's provider tells
