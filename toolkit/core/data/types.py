"""The shapes data takes between the readers, the training loop and inference.

NumPy only (no torch): the runtime reuses the readers and batching to parse inference input.

Two kinds of data set:
- `SequenceDataset`: independent sequences (classify, tag, per-sequence or per-step regress),
  batched by length buckets and padded; `lengths` keep padding from touching real positions.
- `StreamDataset`: one long sequence (lm text, a csv time series), cut into `batch_size`
  parallel streams walked in truncated-BPTT windows with the hidden state carried between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.core import tasks
from toolkit.core.data.vocab import Vocabulary


@dataclass
class Example:
    """One sequence. `inputs`: int64 [T] token ids or float32 [T, F] features.

    `target`: classify -> int label id; tag -> int64 [T] tag ids; regress -> float32 [D]
    (per sequence) or [T, D] (per step); seq2seq -> int64 target ids ending in <eos>; None when
    the input carries no label (inference).
    `source` is "file:line" so later errors can point back at the input.
    """

    inputs: np.ndarray
    target: Any = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class InputSpec:
    """What the model reads: token ids from `vocab`, or `num_features` reals per step.

    Features are normalised inside the model with `mean`/`std` (computed on the training
    split), so exported graphs and the runtime take raw values. `columns`: a csv series' feature
    column names in the model's order; later files are read by these names.
    """

    kind: str  # "tokens" | "features"
    vocab: Vocabulary | None = None
    num_features: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    columns: list[str] | None = None

    @property
    def size(self) -> int:
        return len(self.vocab) if self.kind == "tokens" else int(self.num_features)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "tokens":
            d["vocab_size"] = len(self.vocab)
        else:
            d.update(num_features=self.num_features, mean=self.mean, std=self.std)
            if self.columns is not None:
                d["columns"] = self.columns
        return d


@dataclass
class OutputSpec:
    """What the model predicts.

    classify/tag: `labels` (class names / tag set, index = id). lm: next token over the input
    vocabulary. regress: `num_targets` values per sequence or per step, trained on the normalised
    scale and reported in raw units via `target_mean`/`target_std`. seq2seq: output sequences over
    `target_vocab`. `per_step`: the model emits one row per step (always for tag and lm; for
    regress, when the targets are one per step; seq2seq's decoder, per target step).
    """

    task: str
    labels: list[str] | None = None
    num_targets: int | None = None
    per_step: bool = False
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    target_vocab: Vocabulary | None = None

    def __post_init__(self):
        self.per_step = tasks.of(self.task).outputs_per_step(self.per_step)

    def to_dict(self) -> dict[str, Any]:
        """JSON fields; the target vocabulary as its size (its tokens are written on their own)."""
        d = {k: v for k, v in self.__dict__.items() if v is not None and k != "target_vocab"}
        if self.target_vocab is not None:
            d["target_vocab_size"] = len(self.target_vocab)
        return d


@dataclass
class SequenceDataset:
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class StreamDataset:
    """`inputs`: int64 [N] tokens or float32 [N, F]; `targets`: int64 [N] next tokens (lm) or
    float32 [N, D] values `horizon` steps ahead (csv series). Position i predicts targets[i]."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class Prepared:
    """Everything `load_data` returns: splits plus the specs the model is built from."""

    train: SequenceDataset | StreamDataset
    val: SequenceDataset | StreamDataset | None
    input: InputSpec
    output: OutputSpec
    notes: list[str] = field(default_factory=list)  # e.g. "held out 10% of train.jsonl for validation"


@dataclass
class Batch:
    """A padded batch. inputs: int64 [B, T] or float32 [B, T, F]; lengths int64 [B];
    targets: classify int64 [B]; tag int64 [B, T] with PAD_TARGET beyond each length;
    regress float32 [B, D] or [B, T, D] (zeros beyond each length); `index` = positions of
    the examples in their data set, so results can be put back in input order."""

    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray | None
    index: np.ndarray


PAD_TARGET = -100  # ignored by the loss (torch's default ignore_index)
