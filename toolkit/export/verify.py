"""`rnnkit verify`: re-check a bundle on its own (and against its checkpoint when given).

Without a checkpoint no torch is needed: the manifest's format and hashes, the onnx checker, and
model.onnx and step.onnx against the NumPy oracle in float64 with the graph's own weights (the
textbook equations: `oracle.GraphModel`) on the certificate's batches, padding and streams; the
noise runs are the oracle in float32, as stored and with every weight moved by about one ulp.
A seq2seq bundle
(encoder.onnx + decoder_step.onnx) is checked the same way against its own NumPy oracle
(`seq2seq_oracle`), with the certificate's cases (toolkit.export.seq2seq_parity). With the
checkpoint, the full torch-vs-ONNX certificate (which also proves the weights are the trained
ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from toolkit.core.bundle import BundleError, check_certificate, read_graph, read_manifest
from toolkit.core.streaming import frame_stack, of_manifest
from toolkit.export import parity, seq2seq_parity
from toolkit.runtime.engine import Engine


def verify(bundle: str | Path, checkpoint: str | Path | None = None, seed: int | None = None) -> parity.Report:
    manifest = read_manifest(bundle)
    blobs = check_graphs(bundle, manifest)
    check_certificate(Path(bundle), manifest)
    precision = manifest["precision"]
    # The manifest describes the graphs' own inputs and state (fp16 graphs load on CUDA only).
    Engine(bundle, device="cpu" if precision != "fp16" else "cuda", allow_unverified=True)
    seed = parity.fresh_seed(seed)
    seq2seq = "encoder.onnx" in blobs
    vocab_sizes = (manifest["input"]["vocab_size"], manifest["output"]["vocab_size"]) if seq2seq else None
    if checkpoint is not None:
        from toolkit.export.exporter import certify, certify_seq2seq, providers_for
        from toolkit.export.precision import RULES
        from toolkit.train.checkpoint import load_model

        model = load_model(checkpoint)[0]
        if seq2seq:
            return certify_seq2seq(model, blobs, *vocab_sizes, seed)
        per_step, providers = manifest["output"]["per_step"], providers_for(precision)
        return certify(model, blobs, manifest["input"], per_step, seed, rule=RULES[precision], providers=providers)
    if precision != "fp32":
        raise BundleError(
            f"{bundle}: files, hashes and graphs are sound; the parity of a {precision} bundle is checked against "
            "the model it was exported from: pass --checkpoint RUN_DIR (the torch-free check reads fp32 weights)"
        )
    if seq2seq:
        try:
            reference = seq2seq_parity.OracleReference(blobs, manifest, np.random.default_rng(seed))
        except ValueError as e:
            raise BundleError(f"{bundle}: {e}") from None
        return seq2seq_parity.certify(reference, blobs, *vocab_sizes, seed)
    if "step.onnx" not in blobs and of_manifest(manifest) is None:
        raise BundleError(f"{bundle}: the bundle of a model that streams must hold step.onnx")
    rng = np.random.default_rng(seed)
    make_inputs = parity.InputMaker(manifest["input"], rng)
    provider = "CPUExecutionProvider"
    try:
        reference = parity.OracleReference(blobs, manifest, rng)
    except ValueError as e:
        raise BundleError(f"{bundle}: {e}") from None
    per_step, frames = manifest["output"]["per_step"], frame_stack(manifest)
    cases = parity.all_cases(blobs, reference, make_inputs, per_step, provider, rng, frame_stack=frames)
    return parity.Report(seed=seed, rule=parity.FP32, cases=cases)


def check_graphs(bundle: str | Path, manifest: dict) -> dict[str, bytes]:
    """Every graph the manifest lists: present, sha256 as recorded, valid for the onnx checker.
    Returns name -> bytes."""
    graphs = {}
    for name, info in manifest["graphs"].items():
        data = read_graph(bundle, name, info)
        path = Path(bundle) / name
        try:
            onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
        except Exception as e:  # DecodeError, ValidationError, ...: all mean "not a valid graph"
            raise BundleError(f"{path}: not a valid ONNX model ({type(e).__name__}: {e})") from None
        graphs[name] = data
    return graphs
