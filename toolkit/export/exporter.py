"""Run directory -> verified bundle: build the graphs, prove parity, write atomically."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from toolkit.core import normalize, tasks
from toolkit.core.atomic import atomic_write_bytes
from toolkit.core.bundle import FORMAT, FORMAT_VERSION, MANIFEST, PARITY, BundleError, sha256, write_bundle
from toolkit.core.data import pad_batch
from toolkit.core.streaming import whole_sequences_only
from toolkit.core.versions import installed
from toolkit.export import parity, seq2seq_parity
from toolkit.export import precision as precisions
from toolkit.export.graph import build_full_graph, build_step_graph, state_spec
from toolkit.export.seq2seq_graph import build_decoder_step_graph, build_encoder_graph
from toolkit.runtime.openvino import PROVIDER as OPENVINO
from toolkit.train.checkpoint import load_model


@dataclass
class ExportResult:
    out: Path
    report: parity.Report
    manifest: dict
    written: bool
    report_path: Path


def export(
    run_dir: str | Path,
    out: str | Path,
    opset: int = 17,
    sample: str | Path | None = None,
    seed: int | None = None,
    force: bool = False,
    precision: str = "fp32",
    eval_data: str | Path | None = None,
    max_metric_drop: float | None = None,
) -> ExportResult:
    """Export the best model of `run_dir` to the bundle `out`. Parity failures leave no bundle
    (unless `force`, which writes one marked failed) but keep the report next to `out`.

    `precision` other than fp32 (toolkit.export.precision): the fp32 graphs converted, certified
    under that precision's rule on the providers that run it, and the task metric of both on
    `eval_data` (default: the run's validation data), refused past `max_metric_drop`."""
    out = Path(out)
    model, config, input_spec, output_spec = load_model(run_dir)
    rule = check_precision(precision, config)
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    seed = parity.fresh_seed(seed)
    examples = _read_sample(sample, config, input_spec, output_spec) if sample else None
    if tasks.of(config.task).predicts == "sequences":
        graphs = {
            "encoder.onnx": build_encoder_graph(weights, config.model, input_spec, output_spec, opset=opset),
            "decoder_step.onnx": build_decoder_step_graph(weights, config.model, input_spec, output_spec, opset=opset),
        }
        blobs = {name: g.SerializeToString() for name, g in graphs.items()}
        sources = [e.inputs for e in examples] if examples else None
        sizes = len(input_spec.vocab), len(output_spec.target_vocab)
        report = certify_seq2seq(model, blobs, *sizes, seed, sources)
    else:
        builders = {"model.onnx": build_full_graph}
        if not _whole_sequences(config.model):
            builders["step.onnx"] = build_step_graph
        args = weights, config.model, input_spec, output_spec
        fp32 = {name: build(*args, opset=opset).SerializeToString() for name, build in builders.items()}
        # int8 quantizes layer 0 with its trained scale: the normalisation stays nodes (a 1/std
        # folded into some columns would coarsen the others' int8 steps).
        source = fp32
        if precision == "int8":
            source = {n: build(*args, opset=opset, fold=False).SerializeToString() for n, build in builders.items()}
        blobs = {name: precisions.convert(blob, precision) for name, blob in source.items()}
        graphs = {name: onnx.load_model_from_string(b) for name, b in blobs.items()}
        batch = pad_batch(examples, np.arange(len(examples))) if examples else None
        sample_data = (batch.inputs, batch.lengths) if batch is not None else None
        providers = providers_for(precision)
        inputs = {**input_spec.to_dict(), "normalize": config.model.normalize}  # what InputMaker draws
        report = certify(model, blobs, inputs, model.per_step, seed, sample_data, rule, providers)
        if precision != "fp32":
            data, name = _labelled(eval_data, config, input_spec, output_spec, precision)
            report.metric = precisions.metric_check(
                fp32["model.onnx"], blobs["model.onnx"], providers[-1], config, output_spec, data, name, max_metric_drop
            )

    manifest = build_manifest(config, input_spec, output_spec, graphs, blobs, report, opset, run_dir)
    report_json = json.dumps(report.to_dict(), indent=2).encode()
    files = {**blobs, MANIFEST: json.dumps(manifest, indent=2, ensure_ascii=False).encode(), PARITY: report_json}
    if report.passed or force:
        write_bundle(out, files)
        return ExportResult(out, report, manifest, True, out / PARITY)
    kept = out.with_name(f"{out.name}.parity-failed.json")
    atomic_write_bytes(kept, report_json)
    return ExportResult(out, report, manifest, False, kept)


def check_precision(precision: str, config):
    """The certificate's rule for exporting this run's model at `precision` on this machine, or a
    PrecisionError saying why not (toolkit.export.precision.check)."""
    model = config.model
    cuda = "CUDAExecutionProvider" in providers_for()
    return precisions.check(precision, model.cell, config.task, cuda, model.bidirectional, model.normalize)


def _labelled(eval_data, config, input_spec, output_spec, precision: str):
    """The labelled data a reduced-precision export scores: `eval_data`, else the run's validation data."""
    from toolkit.core.data import load_file, validation_data
    from toolkit.core.errors import DataError

    if eval_data is not None:
        return load_file(eval_data, config, input_spec, output_spec, require_target=True), f"--eval-data {eval_data}"
    try:
        return validation_data(config, input_spec, output_spec)
    except (DataError, OSError) as e:
        raise precisions.PrecisionError(
            f"a {precision} export compares the task metric at fp32 and {precision} on labelled data, and the "
            f"run's validation data cannot be read ({e}); pass --eval-data FILE (labelled, in a training format)"
        ) from None


def certify(
    model,
    blobs: dict[str, bytes],
    input_dict: dict,
    per_step: bool,
    seed: int,
    sample=None,
    rule=parity.FP32,
    providers: list[str] | None = None,
) -> parity.Report:
    """ONNX Runtime against torch in float64, on every provider that works here (or `providers`),
    each case held to the budget `rule` derives from torch's own error in that precision on it
    (parity.py). A bf16 bundle's streams run its step.onnx at fp32 on ONNX Runtime: those cases
    are held to the fp32 rule."""
    rng = np.random.default_rng(seed)
    reference = TorchReference(model, rng, rule)
    fp32 = (TorchReference(model, rng), parity.FP32) if rule.precision == "bf16" else None
    make_inputs = parity.InputMaker(input_dict, rng)
    frames = model.cfg.frame_stack  # a stream of a frame-stacked model is fed whole frames
    cases = []
    for provider in providers or providers_for():
        streams = fp32 if provider == OPENVINO else None
        cases += parity.all_cases(blobs, reference, make_inputs, per_step, provider, rng, rule, sample, frames, streams)
    return parity.Report(seed=seed, rule=rule, cases=cases)


def certify_seq2seq(model, blobs, source_vocab: int, target_vocab: int, seed: int, sources=None) -> parity.Report:
    """encoder.onnx and decoder_step.onnx against torch in float64 (toolkit.export.seq2seq_parity)."""
    reference = Seq2SeqTorchReference(model, np.random.default_rng(seed))
    sizes = source_vocab, target_vocab
    return seq2seq_parity.certify(reference, blobs, *sizes, seed, sources, providers=providers_for())


def noise_copies(model, rng: np.random.Generator, rule=parity.FP32):
    """The reference (the model in float64, CPU) and the noise runs in the rule's precision: the
    model as trained and copies whose weights are moved as that precision stores them
    (`parity.noise_weights`). float16 runs on CUDA, where its recurrent kernels are."""
    fp64 = copy.deepcopy(model).cpu().double().eval()
    state = model.state_dict()
    weights = {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy() for k, v in state.items()}
    dtype = torch.float32 if rule.noise_dtype == "qint8" else getattr(torch, rule.noise_dtype)
    device = "cuda" if dtype == torch.float16 else "cpu"
    runs = []
    for moved in parity.noise_weights(weights, rng, rule):
        m = copy.deepcopy(model).cpu().float()
        m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in moved.items()})
        m = m.to(device=device, dtype=dtype).eval()
        runs.append(_dynamic_int8(m) if rule.noise_dtype == "qint8" else m)
    return fp64, runs


def _dynamic_int8(model):
    """The model under torch's own dynamic int8 quantization (int8 weights, activations quantized
    per call, as ONNX Runtime's int8 graphs do): an independent int8 implementation of the same
    scheme. torch.ao's eager quantization is deprecated for torchao (torch 2.13 warns); it is
    what runs int8 LSTMs in torch today."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)


class Seq2SeqTorchReference(seq2seq_parity.Reference):
    """The encoder-decoder in float64, and the float32 noise runs (as is, and with every weight
    moved by about one ulp), as `TorchReference` for the other tasks."""

    name = "torch-fp64"

    def __init__(self, model, rng: np.random.Generator, rule=parity.FP32):
        self.fp64, self.fp32 = noise_copies(model, rng, rule)

    def outputs(self, ids, lengths, previous):
        runs = [_seq2seq_forced(m, ids, lengths, previous) for m in self.fp32]
        return _seq2seq_forced(self.fp64, ids, lengths, previous), runs

    def translate(self, sources, search, margins):
        from toolkit.models.seq2seq import translate

        return translate(self.fp64, sources, search, margins=margins)


def _stacked(state) -> dict[str, np.ndarray]:
    """A decoder state (per layer: h, or (h, c), each [1, B, H]) as [L, B, H] per name."""
    if isinstance(state[0], tuple):
        return {n: torch.cat([s[k] for s in state]).double().numpy() for k, n in enumerate(("h", "c"))}
    return {"h": torch.cat(state).double().numpy()}


@torch.no_grad()
def _seq2seq_forced(model, ids: np.ndarray, lengths: np.ndarray, previous: np.ndarray) -> dict[str, np.ndarray]:
    """What the two graphs output for these sources and decoder inputs `previous` [B, T]:
    `encode`, then the teacher-forced `decode` over all of previous at once."""
    memory, mask, state = model.encode(torch.from_numpy(ids), torch.from_numpy(lengths))
    out = {"memory": memory, "mask": mask}
    if model.attention != "none":
        out["keys"] = model.key(memory)
    logits, final, weights = model.decode(torch.from_numpy(previous), state, memory, mask)
    out["logprobs"] = torch.log_softmax(logits.double(), dim=-1)
    if weights is not None:
        out["attention"] = weights
    named = {k: v.double().numpy() if v.dtype != torch.bool else v.numpy() for k, v in out.items()}
    return named | _stacked(state) | {f"{n}_next": v for n, v in _stacked(final).items()}


class TorchReference(parity.Reference):
    """The model in float64 is the reference; the noise runs are the model in float32 as trained
    and copies whose every weight is moved by about one ulp (`parity.perturbed_weights`)."""

    name = "torch-fp64"

    def __init__(self, model, rng: np.random.Generator, rule=parity.FP32):
        self.fp64, self.fp32 = noise_copies(model, rng, rule)

    def outputs(self, x, lengths):
        return _torch_forward(self.fp64, x, lengths), [_torch_forward(m, x, lengths) for m in self.fp32]

    def state(self, x):
        return _torch_state(self.fp64, x), [_torch_state(m, x) for m in self.fp32]


def _as_torch(x: np.ndarray, model) -> torch.Tensor:
    """Token ids stay int64; features take the model's float type; both go to its device."""
    weight = next(model.parameters(), None)  # None: every weight quantized (int8 noise runs, CPU float32)
    device, dtype = (weight.device, weight.dtype) if weight is not None else ("cpu", torch.float32)
    if x.dtype == np.int64:
        return torch.from_numpy(x).to(device)
    return torch.from_numpy(x).to(device, dtype)


@torch.no_grad()
def _torch_forward(model, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    y, _ = model(_as_torch(x, model), torch.from_numpy(lengths))
    return y.double().cpu().numpy()


@torch.no_grad()
def _torch_state(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The final state after the whole stream, stacked per layer like step.onnx's: [L, B, H]."""
    _, state = model(_as_torch(x, model))
    if isinstance(state[0], tuple):
        h, c = (torch.cat([s[k] for s in state]).double().cpu().numpy() for k in (0, 1))
        return {"h": h, "c": c}
    return {"h": torch.cat(state).double().cpu().numpy()}


def providers_for(precision: str = "fp32") -> list[str]:
    """Where the certificate runs: the CPU, and CUDA where it works; int8 on the CPU only (its
    integer kernels are CPU kernels), fp16 on CUDA only (the CPU provider has no float16 LSTM),
    bf16 on OpenVINO's CPU plugin (toolkit.runtime.openvino)."""
    providers = ["CPUExecutionProvider"]
    if torch.cuda.is_available() and "CUDAExecutionProvider" in parity.ort.get_available_providers():
        providers.append("CUDAExecutionProvider")
    return {"int8": providers[:1], "fp16": providers[1:], "bf16": [OPENVINO]}.get(precision, providers)


def _read_sample(path, config, input_spec, output_spec) -> list:
    """The examples of a --sample file (sequences, not a stream)."""
    from toolkit.core.data import SequenceDataset, load_file

    data = load_file(path, config, input_spec, output_spec, require_target=False)
    if not isinstance(data, SequenceDataset):
        raise BundleError(f"{path}: a --sample file must hold sequences (JSON Lines, CoNLL or .ts), not a stream")
    return data.examples


def reader_spec(config, input_spec) -> dict:
    """How the training data was read, so that inference reads its files the same way (a csv
    series: its feature columns by name, which are targets and how far ahead)."""
    d = config.data
    spec = {"level": d.level, "lowercase": d.lowercase, "target_columns": d.target_columns, "horizon": d.horizon}
    if tasks.of(config.task).predicts == "sequences":
        spec["target_level"] = d.target_level
    return {**spec, "columns": input_spec.columns} if input_spec.columns is not None else spec


def _whole_sequences(cfg) -> bool:
    return whole_sequences_only(cfg.bidirectional, cfg.normalize, cfg.pool) is not None


def build_manifest(config, input_spec, output_spec, graphs, blobs, report, opset, run_dir) -> dict:
    cfg = config.model
    if input_spec.kind == "tokens":
        inp = {
            "kind": "tokens",
            "name": "tokens",
            "vocab": input_spec.vocab.to_json(),
            "vocab_size": len(input_spec.vocab),
        }
        inp.update(level=config.data.level, lowercase=config.data.lowercase)
    else:
        inp = {"kind": "features", "name": "features", "num_features": input_spec.num_features}
        inp.update(mean=input_spec.mean, std=input_spec.std, note="raw values; the graph normalises them")
        if cfg.normalize == normalize.SEQUENCE:  # mean/std: the training data's, not applied
            note = "raw values; the graph scales each sequence by its own mean and std over its real steps"
            inp.update(note=note, normalize=cfg.normalize, normalize_eps=normalize.EPS)
    seq2seq = tasks.of(config.task).predicts == "sequences"
    if seq2seq:
        vocab = output_spec.target_vocab.to_json()
        out = {"name": "logprobs", "per_step": True, "vocab": vocab, "vocab_size": len(vocab)}
        out["level"] = config.data.target_level
    else:
        out = {k: v for k, v in output_spec.to_dict().items() if k != "task"}
        out.update(name=tasks.of(config.task).output_name)
    model_info = {
        "cell": cfg.cell,
        "nonlinearity": cfg.nonlinearity if cfg.cell == "rnn" else None,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "bidirectional": cfg.bidirectional,
        "directions": 2 if cfg.bidirectional else 1,
        "merge": cfg.merge,
        "residual": cfg.residual,
        "pool": cfg.pool,
        "frame_stack": cfg.frame_stack,
    }
    if seq2seq:
        dec = cfg.decoder()
        model_info["decoder"] = {"cell": dec.cell, "num_layers": dec.num_layers, "hidden_size": dec.hidden_size}
        model_info["attention"] = cfg.attention
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": config.task,
        "model": model_info,
        "input": inp,
        "output": out,
        "reader": reader_spec(config, input_spec),
        "state": state_spec(cfg.decoder()) if seq2seq else None if _whole_sequences(cfg) else state_spec(cfg),
        "precision": report.rule.precision,
        "opset": opset,
        "graphs": {
            name: {
                "sha256": sha256(blobs[name]),
                "bytes": len(blobs[name]),
                "ir_version": g.ir_version,
                "inputs": [i.name for i in g.graph.input],
                "outputs": [o.name for o in g.graph.output],
            }
            for name, g in graphs.items()
        },
        "producer": {
            "rnnkit": installed("rnnkit") or "unknown",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": parity.ort.__version__,
        },
        "parity": report.summary(),
        "source": {"run_dir": str(Path(run_dir).resolve())},
    }
