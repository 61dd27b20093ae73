"""`rnnkit deploy triton`: an NVIDIA Triton model repository from a bundle.

    REPO/
      rnnkit-triton.json     what was written, from which bundle, and the certificate
      NAME/                  onnxruntime backend (Triton's own ONNX Runtime, CPU or GPU)
        config.pbtxt
        labels.txt           labels (classify, tag) or vocabulary (lm), for class_count requests
        1/model.onnx         unidirectional: the step graph's Triton variant with implicit state
                             (graph.batch_first_step); bidirectional: the bundle's model.onnx
      NAME_python/           Python backend: the bundle's graph run by onnxruntime inside Triton,
        config.pbtxt         state per correlation id kept by the model (backend_model.py)
        labels.txt
        1/model.py  1/manifest.json  1/step.onnx | 1/model.onnx

Both models take the same inputs and give the same outputs, so a client can use either.
The Triton variant of the step graph is certified against step.onnx before anything is written
(`certify`); each config is checked against the graph it describes (config.check_against_graph).
The repository is written atomically (core.atomic.replace_tree).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from toolkit.core.atomic import replace_tree
from toolkit.core.bundle import BundleError, read_graph, read_manifest
from toolkit.core.errors import RnnkitError
from toolkit.runtime.providers import make_session
from toolkit.triton import config as triton_config
from toolkit.triton.graph import READY, START, batch_first_step
from toolkit.triton.options import Options

MARKER = "rnnkit-triton.json"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
TEMPLATE = Path(__file__).with_name("backend_model.py")
#: The variant only moves values (Transpose, Where, a multiply by exactly 1 or 0): any error above
#: a few float32 ulps of the outputs' size is a wrong graph, not rounding.
ULPS = 4


class TritonRepositoryError(RnnkitError):
    exit_code = 2


@dataclass
class Written:
    out: Path
    models: dict[str, str]  # model name -> backend
    certificate: dict | None


def write_repository(
    bundle: str | Path,
    out: str | Path,
    name: str,
    opts: Options | None = None,
    allow_unverified: bool = False,
    seed: int = 0,
) -> Written:
    """Write the model repository for `bundle` at `out` (replacing one written earlier)."""
    opts = opts or Options()
    if not NAME.match(name) or name.endswith("_python"):
        raise TritonRepositoryError(
            f"--name {name!r}: a Triton model name here is 1-64 letters, digits, '_', '.' or '-', not starting "
            "with '.' or '-' and not ending in '_python' (that suffix names the Python-backend model)"
        )
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    if not manifest["parity"]["passed"] and not allow_unverified:
        raise BundleError(f"{bundle}: this bundle failed its parity check; pass --allow-unverified to deploy it anyway")
    if "encoder.onnx" in manifest["graphs"]:
        raise TritonRepositoryError(
            f"{bundle}: a seq2seq bundle decodes with a search around two graphs, which this Triton repository does "
            "not hold yet; serve it with `rnnkit serve` (POST /v1/infer) or as the MLflow model"
        )
    graphs = {g: read_graph(bundle, g, info) for g, info in manifest["graphs"].items()}
    labels = triton_config.labels_text(manifest)
    label_file = "labels.txt" if labels is not None else None
    streams = triton_config.streams(manifest)
    python = f"{name}_python"

    if streams:
        variant = batch_first_step(onnx.load_from_string(graphs["step.onnx"]), manifest["state"])
        ort_graph = variant.SerializeToString()
        try:
            certificate = certify(graphs["step.onnx"], ort_graph, manifest, seed)
        except Exception as e:  # ONNX Runtime refused to run the variant: a wrong graph as well
            raise TritonRepositoryError(f"the Triton step graph does not run: {type(e).__name__}: {e}") from None
        if not certificate["passed"]:
            raise TritonRepositoryError(f"the Triton step graph does not match step.onnx: {certificate['worst']}")
        ort_config = triton_config.sequence_config(name, manifest, opts, label_file)
        python_graph = "step.onnx"
    else:
        ort_graph, certificate = graphs["model.onnx"], None
        ort_config = triton_config.full_config(name, manifest, opts, label_file)
        python_graph = "model.onnx"
    python_config = triton_config.python_config(python, manifest, opts, label_file)
    problems = triton_config.check_against_graph(ort_config, onnx.load_from_string(ort_graph))
    if problems:
        raise TritonRepositoryError(f"config.pbtxt of {name} does not match its graph: " + "; ".join(problems))

    source = f"Written by `rnnkit deploy triton` from {bundle.resolve()} (task {manifest['task']})."
    defaults = "A control without `kind` is CONTROL_SEQUENCE_START (protobuf prints no default)."
    ort_text = f"{source}\n" + (
        f"Step graph with batch-first state and START/READY inputs, certified against step.onnx.\n{defaults}"
        if streams
        else "The bundle's model.onnx: whole sequences with their lengths (requests of one length batch together)."
    )
    if manifest["state"] is not None and not streams:
        ort_text += (
            f"\nFrames of {manifest['model']['frame_stack']} steps: Triton's sequence batcher cannot hold a stream's "
            "incomplete frame between requests, so Triton serves whole sequences; `rnnkit serve` streams this model."
        )
    python_text = f"{source}\nRuns {python_graph} with onnxruntime in Triton's Python backend (1/model.py)." + (
        f"\nState is kept per CORRID in the model. {defaults}" if streams else ""
    )
    files = {
        f"{name}/config.pbtxt": triton_config.text(ort_config, ort_text).encode(),
        f"{name}/1/model.onnx": ort_graph,
        f"{python}/config.pbtxt": triton_config.text(python_config, python_text).encode(),
        f"{python}/1/model.py": TEMPLATE.read_bytes(),
        f"{python}/1/manifest.json": (bundle / "manifest.json").read_bytes(),
        f"{python}/1/{python_graph}": graphs[python_graph],
    }
    if labels is not None:
        files[f"{name}/{label_file}"] = files[f"{python}/{label_file}"] = labels.encode()
    models = {name: "onnxruntime", python: "python"}
    record = {
        "format": "rnnkit-triton",
        "format_version": 1,
        "bundle": str(bundle.resolve()),
        "task": manifest["task"],
        "graphs": {g: info["sha256"] for g, info in manifest["graphs"].items()},
        "models": models,
        "options": asdict(opts),
        "certificate": certificate,
    }
    files[MARKER] = (json.dumps(record, indent=2) + "\n").encode()
    if not replace_tree(out, files, MARKER):
        raise TritonRepositoryError(
            f"{out} exists and is not a repository written by `rnnkit deploy triton`; choose an empty or new --out"
        )
    return Written(out, models, certificate)


def certify(step: bytes, variant: bytes, manifest: dict, seed: int = 0) -> dict:
    """The Triton variant against step.onnx on the CPU: a batch of streams fed in chunks of
    different lengths, with the variant's controls exercised: START on the first chunk over a
    state of random garbage (must start from zeros) and READY=0 on some rows (must keep their
    state). Every output and state of every chunk is compared."""
    rng = np.random.default_rng(seed)
    reference, triton = make_session(step, "cpu"), make_session(variant, "cpu")
    inp, names = manifest["input"], [s["name"] for s in manifest["state"]]
    outputs = [manifest["output"]["name"], *(s["output"] for s in manifest["state"])]
    batch, chunks = 5, [1, 7, 3, 1, 16]
    state = {s["name"]: np.zeros((s["shape"][0], batch, s["shape"][2]), np.float32) for s in manifest["state"]}
    held = {n: rng.normal(size=(batch, *v.shape[::2])).astype(np.float32) for n, v in state.items()}  # garbage
    cases = []
    for k, steps in enumerate(chunks):
        if inp["kind"] == "tokens":
            x = rng.integers(0, inp["vocab_size"], (batch, steps))
        else:
            x = rng.normal(size=(batch, steps, inp["num_features"])).astype(np.float32)
        ready = np.ones((batch, 1), np.float32)
        if k in (2, 3):
            ready[k - 1] = 0.0  # rows 1 and 2 skip a chunk (an empty slot of the direct strategy)
        want = dict(zip(outputs, reference.run(outputs, {inp["name"]: x, **state}), strict=True))
        feed = {inp["name"]: x, **held, START: np.full((batch, 1), float(k == 0), np.float32), READY: ready}
        got = dict(zip(outputs, triton.run(outputs, feed), strict=True))
        live = ready[:, 0] > 0
        errors = {outputs[0]: _err(got[outputs[0]][live], want[outputs[0]][live])}
        for n, out in zip(names, outputs[1:], strict=True):
            # ready rows advance as step.onnx does; the others keep the state they had
            expected = np.where(live[:, None, None], want[out].transpose(1, 0, 2), feed[n])
            errors[out] = _err(got[out], expected)
            state[n] = expected.transpose(1, 0, 2).copy()
            held[n] = got[out]
        scale = max(float(np.abs(want[o]).max()) for o in outputs)
        budget = ULPS * float(np.finfo(np.float32).eps) * max(scale, 1.0)
        worst = max(errors.values())
        cases.append(
            {
                "name": f"chunk {k + 1} of {steps} steps, batch {batch}"
                + (", START over garbage state" if k == 0 else "")
                + (f", row {k - 1} not READY" if k in (2, 3) else ""),
                "max_abs": worst,
                "budget": budget,
                "passed": worst <= budget,
            }
        )
    worst = max(cases, key=lambda c: c["max_abs"] / c["budget"])
    return {
        "against": "step.onnx",
        "provider": "CPUExecutionProvider",
        "seed": seed,
        "cases": cases,
        "max_abs": max(c["max_abs"] for c in cases),
        "passed": all(c["passed"] for c in cases),
        "worst": f"{worst['name']}: max abs {worst['max_abs']:.3g} (budget {worst['budget']:.3g})",
    }


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
