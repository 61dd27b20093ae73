"""What a user tunes per Triton deployment (the `rnnkit deploy triton` flags); standard library
only, so the command's options and help cost no import of onnx or protobuf."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """What a user tunes per deployment (the `rnnkit deploy triton` flags)."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 500
    max_sequences: int = 1024  # oldest strategy: sequences with state held at once
    idle_timeout_s: float = 60.0  # a sequence silent this long is ended and its state dropped
    instances: int = 1
    device: str = "auto"  # where the onnxruntime-backend instances run: auto | cpu | cuda
    max_steps: int = 4096  # the Python model refuses a longer chunk or sequence
