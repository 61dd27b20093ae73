"""Task metrics as streaming accumulators over NumPy arrays (no torch: the inference runtime reuses them).
Which task uses which is in `toolkit.core.tasks`.

Each accumulator takes one batch at a time through `update(...)` and reports at the end through
`compute()`, a dict of Python floats:

- `ClassifyMetrics(num_classes)`: accuracy, macro_f1.
- `TagMetrics(tags)`: token accuracy, plus span_f1 / span_precision / span_recall (conlleval rules)
  when the tag set is a BIO / IOB2 / IOB1 / BIOES (IOBES) scheme.
- `LMMetrics(level)`: cross_entropy (nats per token), perplexity, and bpc (char level) or
  bits_per_token (word level).
- `RegressMetrics()`: mae, rmse over every selected value.
- `Seq2SeqMetrics()`: exact_match, sequence_error_rate, error_rate (edit distance per reference
  unit), and token_accuracy when teacher-forced outputs are added.

All of them also accept a running loss (`add_loss(loss_sum, count)`); compute() then adds "loss".

Empty accumulators: a metric whose denominator is zero because nothing was seen (no update, or
only empty batches) is `nan`, computed without NumPy warnings. When tokens were seen but there are
no chunks, the span scores follow conlleval and are 0.0 (it prints 0.00 for an empty ratio).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "BaseMetrics",
    "ClassifyMetrics",
    "TagMetrics",
    "LMMetrics",
    "RegressMetrics",
    "Seq2SeqMetrics",
    "edit_distance",
    "bio_spans",
    "is_bio",
    "metric_mode",
    "better",
]

NAN = float("nan")
LEVELS = ("char", "word")
_CHUNK_PREFIXES = frozenset("BIES")  # B-/I- (BIO, IOB1, IOB2) and E-/S- (BIOES, IOBES)


def _ratio(num: float, den: float) -> float:
    """num / den as a Python float; nan when den is 0 (nothing seen), without warnings."""
    return float(num) / float(den) if den else NAN


def _count(value, what: str) -> int:
    count = int(value)
    if count < 0:
        raise ValueError(f"{what} must be >= 0, got {count}")
    return count


def _as_ids(values, name: str) -> np.ndarray:
    """An integer array of class ids; floats are accepted only when they hold whole numbers."""
    arr = np.asarray(values)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name}: expected integer class ids, got an array of dtype {arr.dtype}")


def _check_range(ids: np.ndarray, n: int, name: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)][0]
        raise ValueError(f"{name}: id {int(bad)} is outside [0, {n})")


# ------------------------------------------------------------------------------------------------ base


class BaseMetrics:
    """Holds the optional running loss shared by every accumulator.

    Subclasses implement `update(...)` and `_compute() -> dict[str, float]`.
    """

    def __init__(self) -> None:
        self._loss_sum = 0.0
        self._loss_count = 0
        self._has_loss = False

    def add_loss(self, loss_sum: float, count: int) -> None:
        """Add a summed loss over `count` items; compute() then reports "loss" = total / count."""
        self._loss_count += _count(count, "add_loss: count")
        self._loss_sum += float(loss_sum)
        self._has_loss = True

    def compute(self) -> dict[str, float]:
        result = {k: float(v) for k, v in self._compute().items()}
        if self._has_loss:
            result["loss"] = _ratio(self._loss_sum, self._loss_count)
        return result

    def _compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def names(self) -> tuple[str, ...]:
        """Every metric this accumulator can report (what a monitor may name)."""
        return tuple(self.compute())


# ------------------------------------------------------------------------------------------- classify


class ClassifyMetrics(BaseMetrics):
    """Accuracy and macro-F1 from a running confusion matrix.

    macro_f1 is the unweighted mean of per-class F1 over the classes that occur in the truth or in
    the predictions (scikit-learn's f1_score(average="macro") with labels = their union); a class
    with no true positive, false positive nor false negative does not count.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"ClassifyMetrics: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [true, pred]

    def update(self, pred_ids, true_ids) -> None:
        pred = _as_ids(pred_ids, "pred_ids").reshape(-1)
        true = _as_ids(true_ids, "true_ids").reshape(-1)
        if pred.shape != true.shape:
            raise ValueError(f"ClassifyMetrics.update: {pred.size} predictions but {true.size} true labels")
        _check_range(pred, self.num_classes, "pred_ids")
        _check_range(true, self.num_classes, "true_ids")
        n = self.num_classes
        self.confusion += np.bincount(true * n + pred, minlength=n * n).reshape(n, n)

    def _compute(self) -> dict[str, float]:
        cm = self.confusion
        total = int(cm.sum())
        tp = np.diag(cm).astype(np.float64)
        fp = cm.sum(axis=0) - tp  # predicted as the class, truly another
        fn = cm.sum(axis=1) - tp  # truly the class, predicted as another
        den = 2 * tp + fp + fn
        present = den > 0
        macro = float(np.mean(2 * tp[present] / den[present])) if present.any() else NAN
        return {"accuracy": _ratio(tp.sum(), total), "macro_f1": macro}


# ------------------------------------------------------------------------------------------------ tag


def _split_tag(tag: str) -> tuple[str, str]:
    """ "B-PER" -> ("B", "PER"); "O" -> ("O", ""). Splits at the first "-" like conlleval."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in _CHUNK_PREFIXES or not kind:
        raise ValueError(f"tag {tag!r} is not a chunk tag: expected O or B-/I-/E-/S- followed by a type")
    return prefix, kind


def is_bio(tags: Iterable[str]) -> bool:
    """Whether `tags` is a chunk tag set: every tag is O or B-/I-/E-/S-<type>, at least one is not O.

    Covers BIO (IOB2), IOB1 and BIOES (IOBES).
    """
    seen_chunk = False
    for tag in tags:
        if not isinstance(tag, str):
            return False
        try:
            prefix, _ = _split_tag(tag)
        except ValueError:
            return False
        seen_chunk = seen_chunk or prefix != "O"
    return seen_chunk


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval's endOfChunk (with the S-/E- rules of its BIOES ports): does a chunk end just before?"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != kind


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval's startOfChunk: does a chunk start here? (An I- after O or after another type does.)"""
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E") and prev_tag in ("E", "S", "O"):
        return True
    return tag != "O" and prev_type != kind


def _chunks(parts: Sequence[tuple[str, str]], offset: int = 0) -> list[tuple[int, int, str]]:
    """Chunks of a sequence of (prefix, type) pairs as (start, end exclusive, type), positions + offset."""
    spans = []
    prev_tag, prev_type, start = "O", "", None
    for i, (tag, kind) in enumerate(parts):
        if start is not None and _end_of_chunk(prev_tag, tag, prev_type, kind):
            spans.append((start + offset, i + offset, prev_type))
            start = None
        if _start_of_chunk(prev_tag, tag, prev_type, kind):
            start = i
        prev_tag, prev_type = tag, kind
    if start is not None:
        spans.append((start + offset, len(parts) + offset, prev_type))
    return spans


def bio_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """The chunks of one tag sequence as {(start, end, type)}, `end` exclusive (tags[start:end]).

    conlleval rules: a chunk starts at B-/S-, and also at an I-/E- that follows O, the end of a
    chunk (E-/S-) or a tag of another type; it ends before O, B-, S-, a type change, or after E-/S-.
    Raises ValueError for a tag that is not O nor B-/I-/E-/S-<type>.
    """
    return set(_chunks([_split_tag(t) for t in tags]))


class TagMetrics(BaseMetrics):
    """Token accuracy over positions < length; for a chunk tag set (see is_bio) also conlleval's
    entity-level span_precision / span_recall / span_f1 (exact boundaries and type)."""

    def __init__(self, tags: Sequence[str]) -> None:
        super().__init__()
        self.tags = list(tags)
        self.chunked = is_bio(self.tags)
        self._parts = [_split_tag(t) for t in self.tags] if self.chunked else None
        self.correct_tokens = 0
        self.total_tokens = 0
        self.correct_spans = 0
        self.pred_spans = 0
        self.true_spans = 0

    def update(self, pred, true, lengths=None) -> None:
        pred = _as_ids(pred, "pred")
        true = _as_ids(true, "true")
        if pred.ndim == 1:
            pred, true = pred[None, :], true[None, :]
        if pred.ndim != 2 or pred.shape != true.shape:
            raise ValueError(f"TagMetrics.update: pred {pred.shape} and true {true.shape} must both be [B, T]")
        batch, steps = pred.shape
        if lengths is None:
            lengths = np.full(batch, steps, dtype=np.int64)
        else:
            lengths = _as_ids(lengths, "lengths").reshape(-1)
            if lengths.shape != (batch,):
                raise ValueError(f"TagMetrics.update: {lengths.size} lengths for a batch of {batch}")
            if lengths.size and (lengths.min() < 0 or lengths.max() > steps):
                raise ValueError(f"TagMetrics.update: lengths must lie in [0, {steps}]")
        valid = np.arange(steps)[None, :] < lengths[:, None]
        p, t = pred[valid], true[valid]  # row-major: sequence after sequence
        n = len(self.tags)
        _check_range(p, n, "pred")
        _check_range(t, n, "true")
        self.correct_tokens += int((p == t).sum())
        self.total_tokens += int(p.size)
        if not self.chunked:
            return
        parts = self._parts
        ends = np.cumsum(lengths)
        starts = ends - lengths
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if s == e:
                continue
            guessed = set(_chunks([parts[i] for i in p[s:e].tolist()]))
            correct = set(_chunks([parts[i] for i in t[s:e].tolist()]))
            self.correct_spans += len(guessed & correct)
            self.pred_spans += len(guessed)
            self.true_spans += len(correct)

    def _compute(self) -> dict[str, float]:
        result = {"accuracy": _ratio(self.correct_tokens, self.total_tokens)}
        if self.chunked:
            if self.total_tokens == 0:
                precision = recall = f1 = NAN
            else:  # conlleval: an empty ratio is 0
                precision = self.correct_spans / self.pred_spans if self.pred_spans else 0.0
                recall = self.correct_spans / self.true_spans if self.true_spans else 0.0
                f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            result.update(span_f1=f1, span_precision=precision, span_recall=recall)
        return result


# ------------------------------------------------------------------------------------------------- lm


class LMMetrics(BaseMetrics):
    """Cross-entropy in nats per token from summed negative log-likelihoods; perplexity = exp(CE);
    bpc = CE / ln 2 at char level, bits_per_token (same formula) at word level."""

    def __init__(self, level: str = "char") -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"LMMetrics: level must be one of {LEVELS}, got {level!r}")
        self.level = level
        self.total_nll = 0.0
        self.num_tokens = 0

    def update(self, total_nll_nats: float, num_tokens: int) -> None:
        self.num_tokens += _count(num_tokens, "LMMetrics.update: num_tokens")
        self.total_nll += float(total_nll_nats)

    def _compute(self) -> dict[str, float]:
        ce = _ratio(self.total_nll, self.num_tokens)
        try:
            ppl = math.exp(ce)
        except OverflowError:
            ppl = math.inf
        bits = "bpc" if self.level == "char" else "bits_per_token"
        return {"cross_entropy": ce, "perplexity": ppl, bits: ce / math.log(2)}


# -------------------------------------------------------------------------------------------- regress


class RegressMetrics(BaseMetrics):
    """MAE and RMSE over every selected value of `pred [..., D]` vs `true [..., D]`.

    `mask` (optional, boolean) selects the real positions: either broadcastable to the leading
    dims `pred.shape[:-1]` (e.g. [B, T] for [B, T, D] outputs), or, with as many dims as `pred`,
    to its full shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.count = 0

    def update(self, pred, true, mask=None) -> None:
        pred = np.asarray(pred, dtype=np.float64)
        true = np.asarray(true, dtype=np.float64)
        if pred.shape != true.shape:
            raise ValueError(f"RegressMetrics.update: pred {pred.shape} and true {true.shape} differ")
        err = pred - true
        if mask is not None:
            mask = np.asarray(mask).astype(bool)
            try:
                if mask.ndim < pred.ndim:
                    mask = np.broadcast_to(mask, pred.shape[:-1])[..., None]
                mask = np.broadcast_to(mask, pred.shape)
            except ValueError:
                raise ValueError(
                    f"RegressMetrics.update: mask {mask.shape} does not broadcast to {pred.shape[:-1]} or {pred.shape}"
                ) from None
            err = err[mask]
        self.abs_sum += float(np.abs(err).sum())
        self.sq_sum += float(np.square(err).sum())
        self.count += int(err.size)

    def _compute(self) -> dict[str, float]:
        mse = _ratio(self.sq_sum, self.count)
        return {"mae": _ratio(self.abs_sum, self.count), "rmse": math.sqrt(mse) if mse == mse else NAN}


# -------------------------------------------------------------------------------------------- seq2seq


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions and substitutions of one unit each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class Seq2SeqMetrics(BaseMetrics):
    """Decoded outputs against reference targets (sequences of unit ids, <eos> excluded):
    exact_match (whole output right), sequence_error_rate (1 - exact_match: the word error rate
    of grapheme-to-phoneme, where one output is one word) and error_rate (edit distance over the
    reference units: phoneme error rate for phoneme targets, character or word error rate for
    char- or word-level targets). `update_teacher_forced` adds token_accuracy: the argmax of each
    step's output with the reference history, over the target units and <eos>."""

    def __init__(self) -> None:
        super().__init__()
        self.sequences = self.exact = self.edits = self.units = 0
        self.correct = self.steps = 0

    def update(self, predictions: Iterable[Sequence[int]], references: Iterable[Sequence[int]]) -> None:
        for pred, ref in zip(predictions, references, strict=True):
            pred, ref = list(pred), list(ref)
            self.sequences += 1
            self.exact += pred == ref
            self.edits += edit_distance(pred, ref)
            self.units += len(ref)

    def update_teacher_forced(self, predicted_ids, target_ids, mask) -> None:
        """`predicted_ids`, `target_ids` [B, T] and a boolean `mask` of the real steps."""
        mask = np.asarray(mask, dtype=bool)
        hits = (_as_ids(predicted_ids, "predicted_ids") == _as_ids(target_ids, "target_ids")) & mask
        self.correct += int(hits.sum())
        self.steps += int(mask.sum())

    def names(self) -> tuple[str, ...]:
        """Each is reported only once what it needs was seen: a training pass is teacher-forced
        only, a validation pass also decoded."""
        return ("token_accuracy", "exact_match", "sequence_error_rate", "error_rate")

    def _compute(self) -> dict[str, float]:
        result = {}
        if self.steps:
            result["token_accuracy"] = _ratio(self.correct, self.steps)
        if self.sequences:
            exact = _ratio(self.exact, self.sequences)
            errors = _ratio(self.edits, self.units)
            result |= {"exact_match": exact, "sequence_error_rate": 1.0 - exact, "error_rate": errors}
        return result


# ---------------------------------------------------------------------------------- modes

# Whether lower ("min") or higher ("max") is better, for every metric these accumulators report.
_MODES = {
    "loss": "min",
    "cross_entropy": "min",
    "perplexity": "min",
    "bpc": "min",
    "bits_per_token": "min",
    "mae": "min",
    "rmse": "min",
    "accuracy": "max",
    "macro_f1": "max",
    "span_f1": "max",
    "span_precision": "max",
    "span_recall": "max",
    "exact_match": "max",
    "token_accuracy": "max",
    "sequence_error_rate": "min",
    "error_rate": "min",
}


def metric_mode(name: str) -> str:
    """ "min" or "max" for a metric name these accumulators report; ValueError for another name."""
    try:
        return _MODES[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(_MODES)}") from None


def better(a: float, b: float, mode: str) -> bool:
    """Whether `a` is strictly better than `b` under `mode` ("max" or "min").

    nan is never better, and any number is better than a nan `b`.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"better: mode must be 'max' or 'min', got {mode!r}")
    a, b = float(a), float(b)
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if mode == "max" else a < b
