"""Device names the commands accept, and the default thread count (no heavy imports: `rnnkit
--help` must stay fast)."""

import os

TRAIN_DEVICES = ("auto", "cpu", "cuda")  # torch
RUNTIME_DEVICES = ("auto", "cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_threads(processes: int = 1) -> int:
    """torch intra-op threads for one of `processes` processes sharing this machine: its share of
    the available cores, at least 1; OMP_NUM_THREADS, when set, is a cap that stays a cap."""
    threads = max(1, available_cores() // max(1, processes))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    return threads
