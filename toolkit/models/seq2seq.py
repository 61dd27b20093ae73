"""Encoder-decoder (seq2seq) with optional attention, as in the lecture notes.

    encoder:  source ids -> embedding -> stacked RNN/LSTM/GRU (one or two directions)
              -> memory [B, S, M] (every source step) and final states
    bridge:   the decoder's initial state s_0 from the encoder's final states: the states
              themselves (h_T; the notes' context vector) when encoder and decoder have the same
              cell and layers and the encoder one direction, else tanh(W [final h of every layer
              and direction] + b), one projection per decoder state tensor
    decoder:  s_t = RNN(s_{t-1}, e(y_{t-1})), stacked, one direction, starting from <bos>
    attention (optional), with s_t as the query over the memory, padded source steps masked:
              additive (Bahdanau):        score(s, m) = v . tanh(W_q s + W_k m + b)
              multiplicative (Luong):     score(s, m) = s . (W_k m)
              a = softmax(scores), c_t = sum a m, o_t = tanh(W_c [s_t; c_t] + b)
              (without attention o_t = s_t: the final encoder state is the only context)
    output:   P(y_t | y_<t, x) = softmax(V o_t + b)

Training is teacher-forced: the whole target runs through the decoder at once. Decoding runs
`step` one token at a time under the NumPy search (toolkit.core.search), as the ONNX decoder does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.core.config import ModelConfig
from toolkit.core.data.types import PAD_TARGET, InputSpec, OutputSpec
from toolkit.core.data.vocab import BOS_ID, PAD_ID
from toolkit.core.search import Hypothesis, Search, decode_batches
from toolkit.models.encoder import RecurrentEncoder, State


class Seq2SeqModel(nn.Module):
    def __init__(self, cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec):
        super().__init__()
        self.cfg, self.task = cfg, output_spec.task
        self.dec_cfg = dec = cfg.decoder()
        hidden, memory = cfg.hidden_size, cfg.output_size
        self.source_embedding = nn.Embedding(input_spec.size, cfg.embedding_dim, padding_idx=PAD_ID)
        self.encoder = RecurrentEncoder(cfg.embedding_dim, cfg)
        self.target_embedding = nn.Embedding(len(output_spec.target_vocab), cfg.embedding_dim, padding_idx=PAD_ID)
        self.decoder = RecurrentEncoder(cfg.embedding_dim, dec)
        self.copy_state = not cfg.bidirectional and dec.cell == cfg.cell and dec.num_layers == cfg.num_layers
        if not self.copy_state:
            width = cfg.num_layers * self.encoder.directions * hidden
            self.bridge = nn.ModuleList(
                nn.Linear(width, dec.num_layers * hidden) for _ in range(2 if dec.cell == "lstm" else 1)
            )
        self.attention = cfg.attention
        if self.attention == "additive":
            self.query = nn.Linear(hidden, hidden, bias=False)
            self.key = nn.Linear(memory, hidden)
            self.energy = nn.Linear(hidden, 1, bias=False)
        elif self.attention == "multiplicative":
            self.key = nn.Linear(memory, hidden, bias=False)
        if self.attention != "none":
            self.combine = nn.Linear(hidden + memory, hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(hidden, len(output_spec.target_vocab))

    # ---- encoder and bridge ---------------------------------------------------------------------
    def encode(self, source: torch.Tensor, lengths: torch.Tensor | None):
        """source [B, S] -> (memory [B, S, M], mask [B, S] of real steps, decoder state s_0)."""
        memory, _, finals = self.encoder(self.source_embedding(source), lengths, None)
        total = source.shape[1]
        if lengths is None:
            mask = torch.ones(source.shape, dtype=torch.bool, device=source.device)
        else:
            mask = torch.arange(total, device=source.device)[None, :] < lengths.to(source.device)[:, None]
        return memory, mask, self.bridge_state(finals)

    def bridge_state(self, finals: State) -> State:
        if self.copy_state:
            return finals
        h = torch.cat([(s[0] if isinstance(s, tuple) else s).permute(1, 0, 2).flatten(1) for s in finals], dim=1)
        layers, hidden = self.dec_cfg.num_layers, self.cfg.hidden_size
        made = [torch.tanh(p(h)).view(-1, layers, hidden).permute(1, 0, 2) for p in self.bridge]  # [L, B, H]
        layer = [tuple(m[i : i + 1].contiguous() for m in made) for i in range(layers)]  # [1, B, H] each
        return layer if len(made) == 2 else [h for (h,) in layer]

    # ---- decoder ----------------------------------------------------------------------------------
    def decode(self, previous: torch.Tensor, state: State, memory: torch.Tensor, mask: torch.Tensor):
        """previous [B, T] token ids -> (logits [B, T, V], state after the last of them, attention
        weights [B, T, S] or None without attention)."""
        s, _, state = self.decoder(self.target_embedding(previous), None, state)
        weights = None
        if self.attention != "none":
            if self.attention == "additive":
                energy = torch.tanh(self.query(s)[:, :, None, :] + self.key(memory)[:, None, :, :])
                scores = self.energy(energy).squeeze(-1)  # [B, T, S]
            else:
                scores = s @ self.key(memory).transpose(1, 2)
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            s = torch.tanh(self.combine(torch.cat([s, weights @ memory], dim=-1)))
        return self.head(self.dropout(s)), state, weights

    def forward(self, source: torch.Tensor, lengths: torch.Tensor | None, targets: torch.Tensor):
        """Teacher forcing: targets [B, T] (ending in <eos>, PAD_TARGET beyond) -> logits [B, T, V]."""
        previous = torch.cat([torch.full_like(targets[:, :1], BOS_ID), targets[:, :-1]], dim=1)
        previous = previous.masked_fill(previous == PAD_TARGET, PAD_ID)
        memory, mask, state = self.encode(source, lengths)
        logits, _, _ = self.decode(previous, state, memory, mask)
        return logits, None


def translate(
    model: Seq2SeqModel, sources: list[np.ndarray], search: Search, batch_size: int = 64, margins=None
) -> list[list[Hypothesis]]:
    """The n-best of each source (token ids [S]), decoded by the shared search in float64 log-
    probabilities from the torch model (eval mode), batch by batch; `margins` as for
    `toolkit.core.search.decode`."""
    device = next(model.parameters()).device

    def encode(ids, lengths):
        memory, mask, state = model.encode(torch.from_numpy(ids).to(device), torch.from_numpy(lengths))
        return state, memory, mask

    def step(tokens, carried):
        state, memory, mask = carried
        previous = torch.from_numpy(tokens).to(device)[:, None]
        logits, state, _ = model.decode(previous, state, memory, mask)
        return F.log_softmax(logits[:, 0].double(), dim=-1).cpu().numpy(), (state, memory, mask)

    def select(carried, rows):
        state, memory, mask = carried
        index = torch.from_numpy(rows).to(device)
        state = [tuple(t[:, index] for t in s) if isinstance(s, tuple) else s[:, index] for s in state]
        return state, memory[index], mask[index]

    with torch.no_grad():
        return decode_batches(sources, encode, step, select, search, batch_size, margins)
