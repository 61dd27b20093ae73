"""Stacked recurrent encoder: Elman RNN, LSTM or GRU; one or two directions; dropout and
optional residual connections between layers.

Each layer is its own single-layer torch module (not one multi-layer module) so that dropout,
direction merging and skip connections can sit between layers, and so that each layer maps to
one native ONNX RNN/LSTM/GRU operator on export.

State convention (torch's): per layer, `h` of shape [directions, B, H] and, for LSTM, `(h, c)`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from toolkit.core.config import ModelConfig

CELL_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

State = list  # one entry per layer: Tensor h, or (h, c) for LSTM


class RecurrentEncoder(nn.Module):
    def __init__(self, input_size: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        cell = CELL_MODULES[cfg.cell]
        extra = {"nonlinearity": cfg.nonlinearity} if cfg.cell == "rnn" else {}
        sizes = [input_size] + [cfg.output_size] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(
            cell(size, cfg.hidden_size, batch_first=True, bidirectional=cfg.bidirectional, **extra) for size in sizes
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_size = cfg.output_size
        if cfg.pool == "attention":  # feed-forward attention over time: score_t = v . tanh(W h_t + b)
            self.attention_proj = nn.Linear(cfg.output_size, cfg.output_size)
            self.attention_score = nn.Linear(cfg.output_size, 1, bias=False)

    @property
    def directions(self) -> int:
        return 2 if self.cfg.bidirectional else 1

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, state: State | None = None, final_state: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """x [B, T, I] -> (outputs [B, T, output_size], pooled [B, output_size], new state).

        `lengths` (int64 [B]) marks padding: each sequence is packed so padded steps never touch
        its outputs or final state, in either direction (the backward pass starts at the
        sequence's own last step). None means every sequence fills all T steps.
        `pooled` is the many-to-one summary: the top layer's output at each sequence's last real
        step (unidirectional), or the final state of each direction, merged (bidirectional); with
        `pool` mean or max, the mean or maximum of the top layer's outputs over the real steps.
        `final_state` False (the caller ignores the state): a unidirectional stack runs padded
        batches unpacked, 2-4x faster for LSTM and GRU on the CPU; a step's output depends only on
        the steps before it, so padding after a sequence's end changes none of its real outputs
        (the outputs at padded steps, and the returned state, are then not meaningful).
        """
        new_state: State = []
        total = x.shape[1]
        h_top = None
        if lengths is not None and bool((lengths == total).all()):
            # No padding in this batch: packing would change nothing but the speed (torch's GRU
            # runs packed batches 5x slower on the CPU).
            lengths = None
        pack = lengths is not None and (self.cfg.bidirectional or final_state)
        for i, layer in enumerate(self.layers):
            inp = self.dropout(x) if i > 0 else x
            initial = state[i] if state is not None else None
            if not pack:
                out, s = layer(inp, initial)
            else:
                packed = pack_padded_sequence(inp, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, s = layer(packed, initial)
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=total)
            out = self._merge(out)
            if self.cfg.residual and i > 0 and out.shape[-1] == inp.shape[-1]:
                out = out + inp
            new_state.append(s)
            h_top = s[0] if isinstance(s, tuple) else s
            x = out
        return x, self._pool(x, h_top, lengths), new_state

    def _attend(self, outputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """sum_t a_t h_t, a = softmax over the real steps of v . tanh(W h_t + b) (padding gets 0)."""
        scores = self.attention_score(torch.tanh(self.attention_proj(outputs))).squeeze(-1)  # [B, T]
        if lengths is not None:
            scores = scores.masked_fill(~real_steps(lengths, outputs.shape[1], outputs.device), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * outputs).sum(dim=1)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        if self.cfg.bidirectional and self.cfg.merge == "sum":
            forward, backward = out.chunk(2, dim=-1)
            return forward + backward
        return out

    def _pool(self, outputs: torch.Tensor, h_top: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.pool == "attention":
            return self._attend(outputs, lengths)
        if self.cfg.pool != "last":  # over every real step: gradients reach each step directly
            if lengths is None:
                return outputs.mean(dim=1) if self.cfg.pool == "mean" else outputs.amax(dim=1)
            real = real_steps(lengths, outputs.shape[1], outputs.device).unsqueeze(-1)  # [B, T, 1]
            if self.cfg.pool == "mean":
                count = real.sum(dim=1).clamp(min=1).to(outputs.dtype)
                return torch.where(real, outputs, 0.0).sum(dim=1) / count
            return torch.where(real, outputs, float("-inf")).amax(dim=1)
        if self.cfg.bidirectional:
            # h_top [2, B, H]: forward final state (its last real step) and backward (step 0).
            if self.cfg.merge == "sum":
                return h_top[0] + h_top[1]
            return torch.cat([h_top[0], h_top[1]], dim=-1)
        if lengths is None:
            return outputs[:, -1]
        last = (lengths.to(outputs.device) - 1).clamp(min=0)
        return outputs[torch.arange(outputs.shape[0], device=outputs.device), last]


def real_steps(lengths: torch.Tensor, total: int, device) -> torch.Tensor:
    """bool [B, total]: whether step t is a real step of sequence b (t < lengths[b])."""
    return torch.arange(total, device=device)[None, :] < lengths.to(device)[:, None]


def detach_state(state: State | None) -> State | None:
    """Cut the graph between truncated-BPTT windows, keeping the values."""
    if state is None:
        return None
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]
