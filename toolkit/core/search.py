"""Greedy and beam search for sequence-to-sequence decoding, batched across inputs.

NumPy only: the torch model and the ONNX decoder step run this same search (as `sampling` is
shared by `generate`), so a given input decodes to the same output on both sides when their
log-probabilities agree. One decoder call per step serves every live hypothesis of every input.

The decoder is given as two callables over an opaque state whose rows are hypotheses:
`step(tokens [N], state) -> (log-probabilities [N, V], state)` and `select(state, rows [M]) ->
state` (the rows to keep, in order; a row may be taken more than once).

Rules (fairseq's, so results can be compared with the literature):
- each input keeps `beam` live hypotheses; at each step the best 2 x beam extensions of the
  input's hypotheses are ranked (ties by hypothesis, then token id: deterministic); those ending
  in <eos> among the first `beam` are finished, the others (not <eos>) fill the beam;
- an input is done when it has `beam` finished hypotheses, or at its maximum length
  `floor(max_len_a * |source| + max_len_b)` (counting <eos>), where only <eos> may follow;
- a finished hypothesis scores `sum log p / ((5 + length) / 6) ** length_penalty` (GNMT's
  length penalty, length counting <eos>; 0 ranks by the plain sum); the n-best are the best
  `nbest` finished hypotheses by that score;
- <pad> and <bos> are never generated. beam=1 is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core.data.vocab import BOS_ID, EOS_ID, PAD_ID

NEVER = (PAD_ID, BOS_ID)


@dataclass(frozen=True)
class Search:
    beam: int = 1
    nbest: int = 1
    length_penalty: float = 1.0
    max_len_a: float = 2.0
    max_len_b: int = 10

    def check(self) -> Search:
        """ValueError naming the first setting out of range."""
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if not 1 <= self.nbest <= self.beam:
            raise ValueError(f"nbest must be between 1 and the beam ({self.beam}), got {self.nbest}")
        if not np.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ValueError(f"length_penalty must be a finite number >= 0, got {self.length_penalty}")
        if not np.isfinite(self.max_len_a) or self.max_len_a < 0 or self.max_len_b < 0:
            raise ValueError(f"max_len_a and max_len_b must be >= 0, got {self.max_len_a} and {self.max_len_b}")
        if self.max_len_a == 0 and self.max_len_b < 1:
            raise ValueError("max_len_a * |source| + max_len_b must allow at least one token (<eos>)")
        return self

    def max_length(self, source_length: int) -> int:
        """Most tokens of one output, <eos> included (at least 1)."""
        return max(1, int(np.floor(self.max_len_a * source_length + self.max_len_b)))


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # without <eos>
    logprob: float  # sum of the log-probabilities of the tokens and the final <eos>
    score: float  # logprob / length penalty: what the n-best are ranked by


def penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def decode(
    step: Callable[[np.ndarray, object], tuple[np.ndarray, object]],
    select: Callable[[object, np.ndarray], object],
    state: object,
    source_lengths: Sequence[int],
    search: Search,
) -> list[list[Hypothesis]]:
    """The n-best hypotheses of each input, best first. `state` holds one row per input (the
    decoder's initial state for it); the first tokens fed are <bos>."""
    s = search.check()
    k = s.beam
    n_inputs = len(source_lengths)
    limits = [s.max_length(int(n)) for n in source_lengths]
    finished: list[list[Hypothesis]] = [[] for _ in range(n_inputs)]
    # live hypotheses, one row each: which input, their tokens and summed log-probability
    owner = np.arange(n_inputs)
    histories: list[tuple[int, ...]] = [() for _ in range(n_inputs)]
    scores = np.zeros(n_inputs)
    tokens = np.full(n_inputs, BOS_ID, dtype=np.int64)
    length = 0
    while len(owner):
        logprobs, state = step(tokens, state)
        logprobs = np.array(logprobs, dtype=np.float64)
        logprobs[:, list(NEVER)] = -np.inf
        length += 1
        keep_rows, keep_tokens, keep_scores, keep_owner, keep_hist = [], [], [], [], []
        for b in np.unique(owner):  # inputs in order; rows of one input are contiguous
            rows = np.flatnonzero(owner == b)
            candidates = scores[rows, None] + logprobs[rows]  # [rows, V]
            if length >= limits[b]:  # only <eos> may follow
                forced = np.full_like(candidates, -np.inf)
                forced[:, EOS_ID] = candidates[:, EOS_ID]
                candidates = forced
            flat = candidates.ravel()
            order = np.argsort(-flat, kind="stable")[: 2 * k]  # ties: lower row, then lower token id
            vocab = candidates.shape[1]
            live = 0
            for rank, index in enumerate(order):
                value = flat[index]
                if not np.isfinite(value):
                    break
                row, token = rows[index // vocab], int(index % vocab)
                if token == EOS_ID:  # finished only when among the best `beam` (beam 1: greedy)
                    if rank < k and len(finished[b]) < k:
                        lp = penalty(len(histories[row]) + 1, s.length_penalty)
                        finished[b].append(Hypothesis(histories[row], float(value), float(value) / lp))
                elif live < k:
                    keep_rows.append(row)
                    keep_tokens.append(token)
                    keep_scores.append(value)
                    keep_owner.append(b)
                    keep_hist.append(histories[row] + (token,))
                    live += 1
            if len(finished[b]) >= k or length >= limits[b]:  # done: drop its live hypotheses
                drop = len(keep_owner) - live
                del keep_rows[drop:], keep_tokens[drop:], keep_scores[drop:], keep_owner[drop:], keep_hist[drop:]
        owner = np.array(keep_owner, dtype=np.int64)
        if not len(owner):
            break
        state = select(state, np.array(keep_rows, dtype=np.int64))
        tokens = np.array(keep_tokens, dtype=np.int64)
        scores = np.array(keep_scores)
        histories = keep_hist
    # best first; equal scores keep the order they finished in (sorted is stable)
    return [sorted(hyps, key=lambda h: -h.score)[: s.nbest] for hyps in finished]
