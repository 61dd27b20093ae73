"""The CUDA paths in one run on a lent GPU machine (benchmarks/gpu_check.sh sets it up):

1. train toy models on CUDA with --amp (LSTM and GRU, one and two directions), export them at fp32
   (the certificate then has CPU and CUDA cases) and at fp16 (CUDA cases, task metric);
2. fp16 drift: one LSTM stream of 10,000 steps through step.onnx at fp32 and fp16 on CUDA;
3. speed on CUDA: full-sequence biLSTM 2x256 (B=32, T=256) torch eager vs ORT fp32 vs ORT fp16,
   and one step of LSTM 2x256 for 1 and 256 streams (ORT fp32 vs fp16, NumPy in and out).

    python -m benchmarks.gpu_check [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def certify_toys(tmp: Path) -> list[dict]:
    from tests.helpers import make_config
    from toolkit.export.exporter import export
    from toolkit.train.loop import train

    rows = []
    for task, cell, bi in [("tag", "lstm", False), ("classify", "gru", True), ("lm", "lstm", False)]:
        d = tmp / f"{task}-{cell}-{bi}"
        d.mkdir()
        cfg = make_config(d, task, cell, bidirectional=bi, epochs=3)
        cfg.train.device, cfg.train.amp = "cuda", True
        t = time.perf_counter()
        train(cfg, progress=False, log=lambda m: None)
        row = {"model": f"{task} {cell} {'bi' if bi else 'uni'}", "train_s": round(time.perf_counter() - t, 1)}
        for precision in ("fp32", "fp16"):
            t = time.perf_counter()
            try:
                report = export(cfg.train.out, d / f"bundle-{precision}", seed=0, precision=precision).report
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                row[precision] = f"{type(e).__name__}: {e}"
                continue
            providers = sorted({c.provider for c in report.cases})
            worst = max(report.cases, key=lambda c: c.margin)
            row[precision] = {
                "passed": report.passed,
                "cases": len(report.cases),
                "providers": providers,
                "worst": f"{worst.provider} {worst.name}: error {worst.max_abs:.2e} budget {worst.budget:.2e}",
                "reasons": report.reasons[:4],
                "metric": report.summary().get("metric"),
                "s": round(time.perf_counter() - t, 1),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def fp16_drift(tmp: Path) -> dict:
    from benchmarks.models import feature_bundle
    from toolkit.export import parity, precision

    bundle = feature_bundle(tmp / "drift", bidirectional=False)
    step32 = (bundle / "step.onnx").read_bytes()
    s32 = parity.session(step32, "CUDAExecutionProvider")
    s16 = parity.session(precision.convert(step32, "fp16"), "CUDAExecutionProvider")
    x = np.random.default_rng(0).normal(size=(1, 10_000, 64)).astype(np.float32)
    st32 = st16 = None
    diffs = []
    for t in range(0, 10_000, 10):
        y32, st32 = parity.run_step(s32, x[:, t : t + 10], st32)
        y16, st16 = parity.run_step(s16, x[:, t : t + 10], st16)
        diffs.append(float(np.abs(y32 - y16).max()))
    d = np.array(diffs)
    return {
        "steps": 10_000,
        "max_output_diff_first_1000": float(d[:100].max()),
        "max_output_diff_last_1000": float(d[-100:].max()),
        "final_state_diff": {k: float(np.abs(st32[k] - st16[k]).max()) for k in st32},
        "output_scale": float(np.abs(y32).max()),
    }


def timed(fn, calls: int, rounds: int = 5) -> float:
    """Median over rounds of the mean seconds per call."""
    fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t) / calls)
    return float(np.median(out))


def speed(tmp: Path) -> dict:
    import torch

    from benchmarks.models import feature_bundle
    from toolkit.export import parity, precision
    from toolkit.train.checkpoint import load_model

    cuda = "CUDAExecutionProvider"
    bundle = feature_bundle(tmp / "bi", bidirectional=True)
    blob = (bundle / "model.onnx").read_bytes()
    f32, f16 = parity.session(blob, cuda), parity.session(precision.convert(blob, "fp16"), cuda)
    x = np.random.default_rng(0).normal(size=(32, 256, 64)).astype(np.float32)
    lengths = np.full(32, 256, dtype=np.int64)
    model = load_model(bundle.parent / "run")[0].cuda().eval()
    xt, lt = torch.from_numpy(x).cuda(), torch.from_numpy(lengths)

    @torch.no_grad()
    def eager():
        model(xt, lt)
        torch.cuda.synchronize()

    full = {
        "torch eager CUDA (TF32 off)": timed(eager, 10) * 1e3,
        "ORT CUDA fp32": timed(lambda: parity.run_full(f32, x, lengths), 10) * 1e3,
        "ORT CUDA fp16": timed(lambda: parity.run_full(f16, x, lengths), 10) * 1e3,
    }
    uni = feature_bundle(tmp / "uni", bidirectional=False)
    step = (uni / "step.onnx").read_bytes()
    s32, s16 = parity.session(step, cuda), parity.session(precision.convert(step, "fp16"), cuda)
    steps = {}
    for streams in (1, 256):
        chunk = np.random.default_rng(1).normal(size=(streams, 1, 64)).astype(np.float32)
        for name, s in (("fp32", s32), ("fp16", s16)):
            state = {"s": None}

            def call(s=s, state=state, chunk=chunk):
                _, state["s"] = parity.run_step(s, chunk, state["s"])

            steps[f"{streams} streams, ORT CUDA {name}"] = timed(call, 200) * 1e6
    return {"full sequence biLSTM 2x256 B=32 T=256 (ms)": full, "one step LSTM 2x256 (us per call)": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, part in (("certificates", certify_toys), ("fp16 drift", fp16_drift), ("speed", speed)):
            t = time.perf_counter()
            try:
                report[name] = part(tmp)
            except Exception as e:  # noqa: BLE001 - one part failing must not lose the others' figures
                import traceback

                report[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
            print(f"== {name} ({time.perf_counter() - t:.0f} s)\n{json.dumps(report[name], indent=1)}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
