"""Execution providers: use CUDA only where it really works, and say which one runs.

`onnxruntime.get_available_providers()` lists what the build contains (CUDA and TensorRT even on
machines without a GPU), not what works; only a session's `get_providers()` tells. So a session
is created with the GPU provider first (quietly: a failed attempt is an answer, not a wall of
logs) and the provider it actually got decides.
"""

from __future__ import annotations

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
