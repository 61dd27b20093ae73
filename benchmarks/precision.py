"""Reduced-precision probe (groundwork for `rnnkit export --precision`): what onnxruntime's dynamic
int8 quantization (`quantize_dynamic`, QInt8 weights) buys on rnnkit's own graphs, next to fp32
and PyTorch eager in the same run (interleaved rounds, medians).

    .venv/bin/python -m benchmarks.precision [--rounds 5] [--demo runs/demo] [--json out.json]

- full sequence: biLSTM 2x256 on 64 features, batch 32 x length 256 (model.onnx);
- one step: LSTM 2x256, one stream, one step per call (step.onnx);
- graph sizes; the largest output change of int8 against fp32 on those inputs;
- with --demo (the directory `make demo` leaves): the official-TEST accuracy of the demo's
  JapaneseVowels (biLSTM) and GunPoint (biGRU) bundles at fp32 and int8.

Not a certificate: it shows the lever and its cost (`quantize_dynamic` rewrites ONNX LSTM into
DynamicQuantizeLSTM; GRU and RNN stay fp32, only their MatMuls are quantized).
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


def int8(path: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    return out


def session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def full_sequence(bundle: Path, tmp: Path, rounds: int, threads: int | None) -> dict:
    import torch

    from toolkit.train.checkpoint import load_model

    model = load_model(bundle.parent / "run")[0]
    x = np.random.default_rng(0).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)
    lengths = np.full(BATCH, STEPS, dtype=np.int64)
    feeds = {"features": x, "lengths": lengths}
    fp32 = session(bundle / "model.onnx", threads)
    q = int8(bundle / "model.onnx", tmp / "full-int8.onnx")
    quantized = session(q, threads)
    xt, lt = torch.from_numpy(x), torch.from_numpy(lengths)

    @torch.no_grad()
    def eager():
        model(xt, lt)

    ms = interleaved(
        {
            "PyTorch eager": eager,
            "rnnkit fp32 (model.onnx)": lambda: fp32.run(None, feeds),
            "int8 (quantize_dynamic)": lambda: quantized.run(None, feeds),
        },
        calls=3,
        rounds=rounds,
    )
    change = float(np.abs(fp32.run(None, feeds)[0] - quantized.run(None, feeds)[0]).max())
    sizes = {"fp32": (bundle / "model.onnx").stat().st_size, "int8": q.stat().st_size}
    return {"ms": ms, "max_output_change": change, "bytes": sizes}


def one_step(bundle: Path, tmp: Path, rounds: int, threads: int | None) -> dict:
    import torch

    from toolkit.train.checkpoint import load_model

    model = load_model(bundle.parent / "run")[0]
    x = np.random.default_rng(1).normal(size=(1, 1, FEATURES)).astype(np.float32)
    fp32 = session(bundle / "step.onnx", threads)
    quantized = session(int8(bundle / "step.onnx", tmp / "step-int8.onnx"), threads)
    zeros = {i.name: np.zeros((i.shape[0], 1, i.shape[2]), np.float32) for i in fp32.get_inputs()[1:]}
    states = {"fp32": dict(zeros), "int8": dict(zeros)}
    names = [o.name.removesuffix("_next") for o in fp32.get_outputs()[1:]]
    xt, carried = torch.from_numpy(x), {"state": None}

    @torch.no_grad()
    def eager():
        _, carried["state"] = model(xt, state=carried["state"])

    def step(s, key):
        out = s.run(None, {"features": x, **states[key]})
        states[key] = dict(zip(names, out[1:], strict=True))

    ms = interleaved(
        {
            "PyTorch eager": eager,
            "rnnkit fp32 (step.onnx)": lambda: step(fp32, "fp32"),
            "int8 (quantize_dynamic)": lambda: step(quantized, "int8"),
        },
        calls=500,
        rounds=rounds,
    )
    return {"us": {k: v * 1e3 for k, v in ms.items()}}


def demo_accuracy(demo: Path, tmp: Path) -> dict:
    """Official-TEST accuracy of the demo's classifiers at fp32 and int8 (same inputs, one call)."""
    from toolkit.core.data import load_file
    from toolkit.core.data.batching import pad
    from toolkit.core.data.examples import example_path
    from toolkit.runtime.engine import Engine
    from toolkit.runtime.infer import specs

    results = {}
    for name, test in (("japanese-vowels", "JapaneseVowels_TEST.ts"), ("gunpoint", "GunPoint_TEST.ts")):
        bundle = demo / name / "bundle"
        config, inp, out = specs(Engine(bundle, device="cpu").manifest)
        data = load_file(str(example_path(test)), config, inp, out, require_target=False)
        x, lengths = pad([e.inputs for e in data.examples], dtype=np.float32)
        labels = np.array([e.target for e in data.examples])
        feeds = {"features": x, "lengths": lengths}
        y32 = session(bundle / "model.onnx", None).run(None, feeds)[0]
        y8 = session(int8(bundle / "model.onnx", tmp / f"{name}-int8.onnx"), None).run(None, feeds)[0]
        results[name] = {
            "fp32": float((y32.argmax(1) == labels).mean()),
            "int8": float((y8.argmax(1) == labels).mean()),
            "max_logit_change": float(np.abs(y32 - y8).max()),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--demo", type=Path, help="runs/demo of `make demo`: also the demo classifiers' accuracy")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = {
            "full sequence, biLSTM 2x256, B=32, T=256 (ms per call)": full_sequence(
                feature_bundle(tmp / "bi", bidirectional=True), tmp, args.rounds, args.threads
            ),
            "one step, LSTM 2x256, one stream (us per call)": one_step(
                feature_bundle(tmp / "uni", bidirectional=False), tmp, args.rounds, args.threads
            ),
        }
        if args.demo:
            report["demo classifiers, official TEST accuracy"] = demo_accuracy(args.demo, tmp)
    for title, figures in report.items():
        print(f"\n{title}")
        for key, value in figures.items():
            print(f"  {key}: {json.dumps(value)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
