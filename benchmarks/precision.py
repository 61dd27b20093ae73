"""Reduced precision, side by side in one run (interleaved rounds, medians): PyTorch eager, rnnkit
fp32, rnnkit int8 (`rnnkit export --precision int8`: the graphs `toolkit.export.precision.convert`
writes) and, where the `openvino` package is installed, OpenVINO fp32 and bf16 on the same
model.onnx as a peer CPU backend.

    .venv/bin/python -m benchmarks.precision [--rounds 5] [--threads N] [--demo runs/demo] [--json out.json]

- full sequence: biLSTM 2x256 on 64 features, batch 32 x length 256 (model.onnx), and a
  (unidirectional) GRU 2x256, whose int8 graph keeps its recurrence in float32 (ONNX Runtime
  has no integer GRU) and whose reduced precision is bf16 on OpenVINO (equal lengths: OpenVINO
  mishandles the backward direction of padded sequences, so bf16 bundles are unidirectional);
- one step, one stream, one step per call (step.onnx): LSTM 2x256 at int8, GRU 2x256 at bf16;
- graph sizes, and the largest output change against fp32 on those inputs;
- drift: a 10,000-step stream, one step per call, at fp32 and reduced (int8 LSTM, bf16 GRU);
- with --demo (the directory `make demo` leaves): the demo's JapaneseVowels (biLSTM) classifier
  exported at int8 through the product path, its certificate, and the accuracy on the official
  TEST split at fp32 and int8 (the export's task-metric check, on that file).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.models import feature_bundle
from benchmarks.runtime import interleaved

BATCH, STEPS, FEATURES = 32, 256, 64


def session(blob: bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def openvino_models(path: Path, threads: int | None) -> dict:
    """OpenVINO's compiled model.onnx at f32 and bf16 inference precision, or {} without openvino."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    model = core.read_model(str(path))
    return {
        precision: core.compile_model(model, "CPU", {**config, "INFERENCE_PRECISION_HINT": precision})
        for precision in ("f32", "bf16")
    }


def full_sequence(bundle: Path, rounds: int, threads: int | None) -> dict:
    import torch

    from toolkit.export.precision import convert
    from toolkit.train.checkpoint import load_model

    model = load_model(bundle.parent / "run")[0]
    x = np.random.default_rng(0).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)
    lengths = np.full(BATCH, STEPS, dtype=np.int64)
    feeds = {"features": x, "lengths": lengths}
    blob = (bundle / "model.onnx").read_bytes()
    int8 = convert(blob, "int8")
    fp32, quantized = session(blob, threads), session(int8, threads)
    xt, lt = torch.from_numpy(x), torch.from_numpy(lengths)

    @torch.no_grad()
    def eager():
        model(xt, lt)

    contenders = {
        "PyTorch eager": eager,
        "rnnkit fp32": lambda: fp32.run(None, feeds),
        "rnnkit int8": lambda: quantized.run(None, feeds),
    }
    compiled = openvino_models(bundle / "model.onnx", threads)
    for precision, c in compiled.items():
        contenders[f"OpenVINO {precision}"] = lambda c=c: c(feeds)
    ms = interleaved(contenders, calls=3, rounds=rounds)
    want = fp32.run(None, feeds)[0]
    change = {"rnnkit int8": float(np.abs(quantized.run(None, feeds)[0] - want).max())}
    for precision, c in compiled.items():
        change[f"OpenVINO {precision}"] = float(np.abs(c(feeds)[0] - want).max())
    return {"ms": ms, "max_output_change": change, "bytes": {"fp32": len(blob), "int8": len(int8)}}


def one_step(bundle: Path, rounds: int, threads: int | None, reduced: str) -> dict:
    """One stream, one step per call, through step.onnx at fp32 and at `reduced` (int8: ONNX
    Runtime; bf16: OpenVINO, the engine's own session for bf16 bundles), state carried."""
    import torch

    from toolkit.export.precision import convert
    from toolkit.runtime.openvino import OpenVINOSession
    from toolkit.train.checkpoint import load_model

    model = load_model(bundle.parent / "run")[0]
    x = np.random.default_rng(1).normal(size=(1, 1, FEATURES)).astype(np.float32)
    blob = (bundle / "step.onnx").read_bytes()
    fp32 = session(blob, threads)
    other = session(convert(blob, "int8"), threads) if reduced == "int8" else OpenVINOSession(blob, threads)
    zeros = {i.name: np.zeros((i.shape[0], 1, i.shape[2]), np.float32) for i in fp32.get_inputs()[1:]}
    states = {"fp32": dict(zeros), reduced: dict(zeros)}
    names = [o.name.removesuffix("_next") for o in fp32.get_outputs()[1:]]
    xt, carried = torch.from_numpy(x), {"state": None}

    @torch.no_grad()
    def eager():
        _, carried["state"] = model(xt, state=carried["state"])

    def step(s, key):
        out = s.run(None, {"features": x, **states[key]})
        states[key] = dict(zip(names, out[1:], strict=True))

    label = "rnnkit int8" if reduced == "int8" else "rnnkit bf16 (OpenVINO)"
    ms = interleaved(
        {
            "PyTorch eager": eager,
            "rnnkit fp32": lambda: step(fp32, "fp32"),
            label: lambda: step(other, reduced),
        },
        calls=500,
        rounds=rounds,
    )
    return {"us": {k: v * 1e3 for k, v in ms.items()}}


def drift(bundle: Path, reduced: str, steps: int = 10_000) -> dict:
    """One stream of `steps` steps, one step per call, through step.onnx at fp32 and at
    `reduced`, each carrying its own state (float32 between calls in both): does the reduced
    stream drift away from fp32's? The largest output difference over the first and the last
    1,000 steps, and of the final state."""
    from toolkit.export import parity
    from toolkit.export.precision import convert
    from toolkit.runtime.openvino import PROVIDER

    blob = (bundle / "step.onnx").read_bytes()
    fp32 = parity.session(blob, "CPUExecutionProvider")
    other = parity.session(convert(blob, reduced), PROVIDER if reduced == "bf16" else "CPUExecutionProvider")
    x = np.random.default_rng(2).normal(size=(1, steps, FEATURES)).astype(np.float32)
    state32 = state = None
    diffs, scale = np.zeros(steps), 0.0
    for t in range(steps):
        y32, state32 = parity.run_step(fp32, x[:, t : t + 1], state32)
        y, state = parity.run_step(other, x[:, t : t + 1], state)
        diffs[t], scale = float(np.abs(y32 - y).max()), max(scale, float(np.abs(y32).max()))
    return {
        "output scale": scale,
        "max diff, steps 1-1000": float(diffs[:1000].max()),
        "max diff, last 1000 steps": float(diffs[-1000:].max()),
        "final state diff": {k: float(np.abs(state32[k] - state[k]).max()) for k in state32},
    }


def demo_int8(demo: Path, tmp: Path) -> dict:
    """The demo's JapaneseVowels biLSTM exported at int8 as a user would, scored on the official
    TEST split by the export's own task-metric check (and GunPoint's biGRU: refused, with why)."""
    from toolkit.core.data.examples import example_path
    from toolkit.export.exporter import export
    from toolkit.export.precision import PrecisionError

    results = {}
    for name, test in (("japanese-vowels", "JapaneseVowels_TEST.ts"), ("gunpoint", "GunPoint_TEST.ts")):
        try:
            report = export(demo / name, tmp / name, precision="int8", eval_data=example_path(test)).report
        except PrecisionError as e:
            results[name] = f"refused: {e}"
            continue
        summary = report.summary()
        results[name] = {
            "certificate": f"{summary['cases'] - summary['failed']}/{summary['cases']} cases, worst margin "
            f"{summary['worst_margin']:.3f}",
            **{k: summary["metric"][k] for k in ("metric", "fp32", "reduced", "drop", "passed")},
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="intra-op threads of every contender (default: all cores)")
    parser.add_argument("--demo", type=Path, help="runs/demo of `make demo`: the demo classifiers at int8")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = {
            "full sequence, biLSTM 2x256, B=32, T=256 (ms per call)": full_sequence(
                feature_bundle(tmp / "bi", bidirectional=True), args.rounds, args.threads
            ),
            "full sequence, GRU 2x256, B=32, T=256 (ms per call)": full_sequence(
                feature_bundle(tmp / "gru", bidirectional=False, cell="gru"), args.rounds, args.threads
            ),
            "one step, LSTM 2x256, one stream (us per call)": one_step(
                feature_bundle(tmp / "uni", bidirectional=False), args.rounds, args.threads, "int8"
            ),
            "one step, GRU 2x256, one stream (us per call)": one_step(
                tmp / "gru" / "bundle", args.rounds, args.threads, "bf16"
            ),
            "drift over a 10,000-step stream, LSTM 2x256 int8 vs fp32": drift(tmp / "uni" / "bundle", "int8"),
            "drift over a 10,000-step stream, GRU 2x256 bf16 vs fp32": drift(tmp / "gru" / "bundle", "bf16"),
        }
        if args.demo:
            report["demo classifiers at int8, official TEST split"] = demo_int8(args.demo, tmp)
    for title, figures in report.items():
        print(f"\n{title}")
        for key, value in figures.items():
            print(f"  {key}: {json.dumps(value)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
