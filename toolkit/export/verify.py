"""`rnnkit verify`: re-check a bundle on its own (and against its checkpoint when given).

Without a checkpoint no torch is needed: the manifest's format and hashes, the onnx checker,
a padded batch against its sequences one at a time, and step.onnx against model.onnx on a fresh
long stream (the state reference is step.onnx run over the whole stream in one call); the noise
runs are the same graphs with every weight moved by about one ulp. With the checkpoint, the
full torch-vs-ONNX certificate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.export import parity
from toolkit.export.bundle import BundleError, check_graphs, read_manifest


def verify(bundle: str | Path, checkpoint: str | Path | None = None, seed: int | None = None) -> parity.Report:
    manifest = read_manifest(bundle)
    blobs = check_graphs(bundle, manifest)
    seed = parity.fresh_seed(seed)
    if checkpoint is not None:
        from toolkit.export.exporter import certify
        from toolkit.train.checkpoint import load_model

        model = load_model(checkpoint)[0]
        return certify(model, blobs, manifest["input"], manifest["output"]["per_step"], seed)
    rng = np.random.default_rng(seed)
    make_inputs = parity.InputMaker(manifest["input"], rng)
    provider = "CPUExecutionProvider"
    reference = parity.OnnxReference(blobs, provider, rng)
    full = reference.full

    def run_full(x, lens):
        return parity.run_full(full, x, lens)

    per_step = manifest["output"]["per_step"]
    cases = [parity.padding_case(run_full, reference, make_inputs, per_step, provider)]
    if reference.step is not None:
        step = reference.step
        cases += parity.stream_cases(
            lambda chunk, state: parity.run_step(step, chunk, state), reference, make_inputs, per_step, provider, rng
        )
    elif not manifest["model"]["bidirectional"]:
        raise BundleError(f"{bundle}: a unidirectional model's bundle must hold step.onnx")
    return parity.Report(seed=seed, rule=parity.FP32, cases=cases)
