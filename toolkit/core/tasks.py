"""The task table: every rule that depends on the task, in one place.

Training, export, the runtime, MLflow and the CLI ask this table instead of testing the task's
name, so a new task is one entry here plus its model code. NumPy only (the runtime uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core.metrics import (
    BaseMetrics,
    ClassifyMetrics,
    LMMetrics,
    RegressMetrics,
    Seq2SeqMetrics,
    TagMetrics,
    is_bio,
)

#: Every data format rnnkit reads (`auto` picks one from the file suffix).
FORMATS = ("jsonl", "conll", "text", "csv", "ts", "tsv")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass(frozen=True)
class Task:
    name: str
    #: What one output row scores: "labels" (the output spec's labels), "tokens" (the input
    #: vocabulary: next token), "values" (regression targets in raw units) or "sequences" (a
    #: decoded output over the target vocabulary: seq2seq).
    predicts: str
    #: One output row per step (True), per sequence (False), or as the training targets were (None).
    per_step: bool | None
    formats: tuple[str, ...]
    #: (metric, "max" | "min") to select the best epoch and stop on, unless the user names one.
    monitor: tuple[str, str]
    #: The training loss: "cross_entropy" (over classes or tokens) or "squared_error" (normalised scale).
    loss: str
    #: The keys of one result (`result`): what `infer` writes and the MLflow model returns.
    fields: tuple[str, ...]
    metrics: Callable[[Sequence[str] | None, str], BaseMetrics]
    #: Adds one batch of outputs (NumPy, [B, ...]) and targets to a task's metrics.
    score: Callable[[BaseMetrics, np.ndarray, np.ndarray, np.ndarray | None], None]
    #: One sequence's outputs as JSON fields; `names` maps class ids to labels or tokens.
    result: Callable[[np.ndarray, Sequence[str] | None], dict]

    @property
    def output_name(self) -> str:
        """The name of the graphs' output."""
        return "values" if self.predicts == "values" else "logits"

    def outputs_per_step(self, per_step_targets: bool) -> bool:
        """Whether the model emits one row per step; `per_step_targets` (regress) says whether the
        training targets were one per step."""
        return bool(per_step_targets) if self.per_step is None else self.per_step

    def head_size(
        self, labels: Sequence[str] | None, vocab_size: int | None, num_targets: int | None, target_vocab_size=None
    ) -> int:
        sizes = {"labels": len(labels or ()), "tokens": vocab_size, "values": num_targets}
        return sizes.get(self.predicts, target_vocab_size)

    def default_monitor(self, labels: Sequence[str] | None) -> tuple[str, str]:
        if self.monitor[0] == "span_f1" and not is_bio(labels or ()):
            return "accuracy", "max"  # spans need a chunk tag set (BIO, IOBES, ...)
        return self.monitor


# ---- per-task scoring: outputs y [B, ...] against targets, padded steps (lengths) left out --------


def _score_classify(metrics, y, targets, lengths=None):
    metrics.update(y.argmax(-1), np.asarray(targets))


def _score_tag(metrics, y, targets, lengths):
    metrics.update(y.argmax(-1), np.asarray(targets), lengths)


def _score_lm(metrics, y, targets, lengths=None):
    targets = np.asarray(targets)
    keep = targets >= 0  # padding, and the last position of a stream (no next token)
    logits = y[keep].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    metrics.update(float(-logp[np.arange(int(keep.sum())), targets[keep]].sum()), int(keep.sum()))


def _score_regress(metrics, y, targets, lengths=None):
    targets = np.asarray(targets, dtype=np.float64)
    mask = None
    if y.ndim == 3:  # per step: padded steps and steps without a target (a series' last horizon) out
        mask = np.isfinite(targets).all(-1)
        if lengths is not None:
            mask &= np.arange(y.shape[1])[None, :] < np.asarray(lengths)[:, None]
    metrics.update(y, targets, mask)


def _score_seq2seq(metrics, y, targets, lengths=None):
    """Teacher-forced outputs [B, T, V] against the target ids [B, T] (<eos> included, padding
    negative): token accuracy. The decoded metrics come from `Seq2SeqMetrics.update`."""
    targets = np.asarray(targets)
    metrics.update_teacher_forced(y.argmax(-1), np.maximum(targets, 0), targets >= 0)


def _result_sequences(hypotheses, names):
    """The n-best of one input (toolkit.core.search.Hypothesis, best first) as JSON fields."""
    best = hypotheses[0]
    nbest = [{"prediction": [names[t] for t in h.tokens], "score": round(h.score, 6)} for h in hypotheses]
    return {"prediction": nbest[0]["prediction"], "score": round(best.score, 6), "nbest": nbest}


def _result_classify(y, names):
    p = softmax(y)
    return {"prediction": names[int(p.argmax())], "scores": np.round(p, 6).tolist()}


def _result_per_step(y, names):
    return {"predictions": [names[j] for j in y.argmax(-1)]}


def _result_values(y, names=None):
    return {"values": np.round(y, 6).tolist()}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "classify", "labels", False, ("jsonl", "ts"), ("accuracy", "max"), "cross_entropy",
            ("prediction", "scores"), lambda labels, level: ClassifyMetrics(len(labels)),
            _score_classify, _result_classify,
        ),
        Task(
            "tag", "labels", True, ("jsonl", "conll"), ("span_f1", "max"), "cross_entropy",
            ("predictions",), lambda labels, level: TagMetrics(labels), _score_tag, _result_per_step,
        ),
        Task(
            "lm", "tokens", True, ("text",), ("cross_entropy", "min"), "cross_entropy",
            ("predictions",), lambda labels, level: LMMetrics(level), _score_lm, _result_per_step,
        ),
        Task(
            "regress", "values", None, ("jsonl", "csv", "ts"), ("rmse", "min"), "squared_error",
            ("values",), lambda labels, level: RegressMetrics(), _score_regress, _result_values,
        ),
        Task(
            "seq2seq", "sequences", True, ("jsonl", "tsv"), ("error_rate", "min"), "cross_entropy",
            ("prediction", "score", "nbest"), lambda labels, level: Seq2SeqMetrics(), _score_seq2seq,
            _result_sequences,
        ),
    )
}  # fmt: skip


def of(name: str) -> Task:
    """The table's entry for `name`; ValueError naming the tasks there are."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {name!r}") from None


def names(manifest: dict) -> list[str] | None:
    """What a bundle's class ids stand for: its labels, its vocabulary for an lm, its output
    (target) vocabulary for seq2seq."""
    predicts = of(manifest["task"]).predicts
    if predicts == "labels":
        return manifest["output"]["labels"]
    if predicts == "sequences":
        return manifest["output"]["vocab"]
    return manifest["input"]["vocab"] if predicts == "tokens" else None


def metrics_for(name: str, labels: Sequence[str] | None, level: str = "char") -> BaseMetrics:
    """A fresh accumulator for the task's metrics; `labels` for tasks that predict labels."""
    entry = of(name)
    if entry.predicts == "labels" and labels is None:
        raise ValueError(f"metrics_for: task {name!r} needs its labels")
    return entry.metrics(labels, level)


def default_monitor(name: str, labels: Sequence[str] | None) -> tuple[str, str]:
    """(metric name, "max" | "min") to select the best epoch on, by task."""
    return of(name).default_monitor(labels)
