"""The sequence model: input layer -> recurrent encoder -> task head.

Inputs are token ids (through an embedding whose <pad> row is zero) or real-valued feature
vectors, normalised inside the model so that exported graphs and the runtime take raw values:
with the training set's mean/std (`model.normalize: dataset`), or each sequence by its own mean
and std over its real steps (`sequence`, defined in toolkit.core.normalize). Heads:

- classify: logits [B, C] from the pooled summary (many-to-one)
- tag:      logits [B, T, K], one label per step (many-to-many)
- lm:       next-token logits [B, T, V]
- regress:  values in raw units, [B, D] per sequence or [B, T, D] per step; trained on the
            normalised scale (see `normalised`)
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.core import normalize, tasks
from toolkit.core.config import ModelConfig
from toolkit.core.data.types import InputSpec, OutputSpec
from toolkit.core.data.vocab import PAD_ID
from toolkit.core.errors import ConfigError
from toolkit.models.encoder import RecurrentEncoder, State, real_steps
from toolkit.models.frames import stack_frames


class SequenceModel(nn.Module):
    def __init__(self, cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec):
        super().__init__()
        self.cfg = cfg
        self.task = output_spec.task
        self.tokens = input_spec.kind == "tokens"
        self.per_sequence = cfg.normalize == normalize.SEQUENCE
        if self.tokens:
            self.embedding = nn.Embedding(input_spec.size, cfg.embedding_dim, padding_idx=PAD_ID)
            input_size = cfg.embedding_dim
        else:
            input_size = int(input_spec.num_features) * cfg.frame_stack  # frames of K steps (toolkit.models.frames)
            features = int(input_spec.num_features)
            self.register_buffer("feature_mean", _vector(input_spec.mean, features, 0.0))
            self.register_buffer("feature_std", _vector(input_spec.std, features, 1.0))
        self.encoder = RecurrentEncoder(input_size, cfg)
        self.per_step = output_spec.per_step
        self.values = tasks.of(self.task).predicts == "values"  # regression: raw units out
        head_size = tasks.of(self.task).head_size(output_spec.labels, input_spec.size, output_spec.num_targets)
        self.head = nn.Linear(self.encoder.output_size, head_size)
        if self.values:
            d = int(output_spec.num_targets)
            self.register_buffer("target_mean", _vector(output_spec.target_mean, d, 0.0))
            self.register_buffer("target_std", _vector(output_spec.target_std, d, 1.0))

    def forward(
        self, inputs: torch.Tensor, lengths: torch.Tensor | None = None, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """inputs int64 [B, T] or float [B, T, F]; lengths int64 [B] (None: no padding). The state
        is the one a stream carries on (lengths None); for a padded batch of a unidirectional
        model, which runs unpacked, it is None."""
        if self.tokens:
            x = self.embedding(inputs)
        elif self.per_sequence:
            x = normalise_sequences(inputs, lengths)
        else:
            x = (inputs - self.feature_mean) / self.feature_std
        if self.cfg.frame_stack > 1:
            x, lengths = stack_frames(x, lengths, self.cfg.frame_stack)
        # Padded batches need no final state (only streams carry it): unidirectional stacks skip packing.
        outputs, pooled, new_state = self.encoder(x, lengths, state, final_state=lengths is None)
        y = self.head(outputs if self.per_step else pooled)
        if self.values:
            y = y * self.target_std + self.target_mean
        return y, new_state if lengths is None or self.cfg.bidirectional else None

    def normalised(self, values: torch.Tensor) -> torch.Tensor:
        """Regression values (predictions or targets) on the scale the loss is computed on."""
        return (values - self.target_mean) / self.target_std


def normalise_sequences(x: torch.Tensor, lengths: torch.Tensor | None, eps: float = normalize.EPS) -> torch.Tensor:
    """x [B, T, F], each sequence by its own mean and std per feature over its real steps, about
    its first step (toolkit.core.normalize); padded steps, whatever they hold, come out 0.
    lengths None: no padding."""
    if lengths is None:
        real = torch.ones(x.shape[0], x.shape[1], 1, dtype=torch.bool, device=x.device)
    else:
        real = real_steps(lengths, x.shape[1], x.device).unsqueeze(-1)  # [B, T, 1]
    count = real.sum(dim=1, keepdim=True).to(x.dtype)
    d = torch.where(real, x - x[:, :1], 0.0)
    centred = torch.where(real, d - d.sum(dim=1, keepdim=True) / count, 0.0)
    variance = (centred * centred).sum(dim=1, keepdim=True) / count
    return centred / torch.sqrt(variance + eps)


def _vector(values: list[float] | None, size: int, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((size,), default)
    return torch.tensor(values, dtype=torch.float32)


def build_model(cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec) -> nn.Module:
    """The task's model: an encoder-decoder for tasks that predict sequences, else SequenceModel."""
    normalize.check(cfg.normalize, output_spec.task, input_spec.kind)
    if cfg.pool != "last" and (output_spec.per_step or tasks.of(output_spec.task).predicts == "sequences"):
        raise ConfigError(
            f"model.pool {cfg.pool} summarises a sequence for a per-sequence head (classify, regress to one value "
            f"per sequence), but task {output_spec.task} here predicts every step; drop --pool"
        )
    if cfg.frame_stack > 1 and (input_spec.kind != "features" or output_spec.per_step):
        raise ConfigError(
            f"model.frame_stack {cfg.frame_stack} reads feature series K steps at a time for a per-sequence head "
            f"(classify, regress to one value per sequence); task {output_spec.task} on {input_spec.kind} "
            + ("predicts every step" if output_spec.per_step else "reads tokens")
            + ": drop --frame-stack"
        )
    if tasks.of(output_spec.task).predicts == "sequences":
        from toolkit.models.seq2seq import Seq2SeqModel

        return Seq2SeqModel(cfg, input_spec, output_spec)
    return SequenceModel(cfg, input_spec, output_spec)
