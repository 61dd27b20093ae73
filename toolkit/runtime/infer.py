"""Batch inference over a data file in the training formats, with metrics when it is labelled.

NumPy and ONNX Runtime only: the readers (toolkit.core.data) and metrics (toolkit.core.metrics)
import no torch.
"""

from __future__ import annotations

import numpy as np

from toolkit.core import tasks
from toolkit.core.config import Config
from toolkit.core.data import InputSpec, OutputSpec, SequenceDataset, Vocabulary, load_file
from toolkit.core.search import Search
from toolkit.runtime.engine import Engine


def specs(manifest: dict) -> tuple[Config, InputSpec, OutputSpec]:
    """The config and specs a bundle was trained with, rebuilt from its manifest: how its data was
    read (the `reader` section) and its input and output specs."""
    inp, out = manifest["input"], manifest["output"]
    config = Config(task=manifest["task"])
    reader = manifest.get("reader") or {}  # bundles before 0.2 carry level and lowercase in "input"
    config.data.level = reader.get("level", inp.get("level", "char"))
    config.data.lowercase = bool(reader.get("lowercase", inp.get("lowercase", False)))
    config.data.target_columns = reader.get("target_columns")
    config.data.horizon = reader.get("horizon", 1)
    config.data.target_level = reader.get("target_level") or config.data.target_level
    if inp["kind"] == "tokens":
        input_spec = InputSpec("tokens", vocab=Vocabulary(inp["vocab"]))
    else:
        input_spec = InputSpec(
            "features",
            num_features=inp["num_features"],
            mean=inp["mean"],
            std=inp["std"],
            columns=reader.get("columns"),
        )
    fields = ("labels", "num_targets", "per_step", "target_mean", "target_std")
    output_spec = OutputSpec(manifest["task"], **{k: out[k] for k in fields if k in out})
    if out.get("vocab") is not None:  # seq2seq: targets are read with the target vocabulary
        output_spec.target_vocab = Vocabulary(out["vocab"])
    return config, input_spec, output_spec


def infer_file(
    engine: Engine, path: str, batch_size: int = 64, progress=None, search: Search | None = None
) -> tuple[list[dict], dict | None]:
    """One result per input sequence (in input order) and the task metrics if every input is labelled.
    `progress`: a tqdm-like bar, reset to the number of sequences once the file is read; `search`:
    how a seq2seq bundle decodes (greedy when None)."""
    config, input_spec, output_spec = specs(engine.manifest)
    inputs, targets = sequences_of(load_file(path, config, input_spec, output_spec, require_target=False))
    if progress is not None:
        progress.reset(total=len(inputs))
    update = progress.update if progress is not None else None
    outputs = engine.infer(inputs, batch_size=batch_size, progress=update, search=search)
    results = [{"index": i, **result(engine.manifest, y)} for i, y in enumerate(outputs)]
    labelled = all(t is not None for t in targets)
    return results, (metrics_of(config, output_spec, outputs, targets) if labelled else None)


def sequences_of(data) -> tuple[list, list]:
    """A dataset's input sequences and their targets (None where unlabelled): its examples, or a
    text or csv stream as one long sequence."""
    if isinstance(data, SequenceDataset):
        return [e.inputs for e in data.examples], [e.target for e in data.examples]
    return [data.inputs], [data.targets]


def result(manifest: dict, y: np.ndarray) -> dict:
    """One sequence's outputs as JSON: regress {"values"}; classify {"prediction", "scores"}
    (probabilities in label order); tag / lm {"predictions"} per step (labels or next tokens);
    seq2seq {"prediction", "score", "nbest"} (the best output's tokens and score, and the n-best)."""
    return tasks.of(manifest["task"]).result(y, tasks.names(manifest))


def metrics_of(config: Config, output_spec: OutputSpec, outputs: list, targets: list) -> dict:
    """The task metrics of per-sequence `outputs` (as `Engine.infer` returns them) against `targets`."""
    metrics = tasks.metrics_for(config.task, output_spec.labels, config.data.level)
    if tasks.of(config.task).predicts == "sequences":  # the best hypothesis against the target (<eos> off)
        metrics.update([hyps[0].tokens for hyps in outputs], [list(t)[:-1] for t in targets])
        return metrics.compute()
    score = tasks.of(config.task).score
    for y, t in zip(outputs, targets, strict=True):
        score(metrics, y[None], np.asarray(t)[None], np.array([len(y)]))
    return metrics.compute()
