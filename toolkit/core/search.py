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

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core.data.batching import pad
from toolkit.core.data.vocab import BOS_ID, EOS_ID, PAD_ID

NEVER = (PAD_ID, BOS_ID)
MAX_BEAM = 64

#: The range (inclusive) of each setting a user may give: their one home. `Search.check` enforces
#: them (NaN and infinities are in no range) and the CLI options and the server's request model
#: state them from here. Each bounds a cost or keeps a score finite: every hypothesis of the beam
#: costs a decoder row per step; max_len_a and max_len_b bound the steps decoded; a length penalty
#: of 10 already ranks by length alone, and beyond a few hundred `penalty` overflows a float.
RANGES: dict[str, tuple[int | float, int | float]] = {
    "beam": (1, MAX_BEAM),
    "nbest": (1, MAX_BEAM),
    "length_penalty": (0.0, 10.0),
    "max_len_a": (0.0, 10.0),
    "max_len_b": (0, 1024),
}


def out_of_range(name: str, value) -> str | None:
    """Why `value` cannot be setting `name` (not a number of its kind, or outside `RANGES`), or None."""
    low, high = RANGES[name]
    kind = numbers.Integral if isinstance(low, int) else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:  # NaN: never within
        what = "a whole number" if kind is numbers.Integral else "a number"
        return f"{name} must be {what} between {low:g} and {high:g}, got {value!r}"
    return None


@dataclass(frozen=True)
class Search:
    beam: int = 1
    nbest: int = 1
    length_penalty: float = 1.0
    max_len_a: float = 2.0
    max_len_b: int = 10

    def check(self) -> Search:
        """ValueError naming the first setting out of its range (`RANGES`)."""
        for name in RANGES:
            why = out_of_range(name, getattr(self, name))
            if why:
                raise ValueError(why)
        if self.nbest > self.beam:
            raise ValueError(f"nbest must be between 1 and the beam ({self.beam}), got {self.nbest}")
        if self.max_len_a == 0 and self.max_len_b < 1:
            raise ValueError("max_len_a * |source| + max_len_b must allow at least one token (<eos>)")
        return self

    def max_length(self, source_length: int) -> int:
        """Most tokens of one output, <eos> included (at least 1)."""
        return max(1, int(np.floor(self.max_len_a * source_length + self.max_len_b)))


#: The settings a user may give (name -> type of its value), as `Search` declares them: what the
#: CLI options, the server's request fields and the MLflow model's params are built from.
SETTINGS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(Search)}


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
    margins: np.ndarray | None = None,
) -> list[list[Hypothesis]]:
    """The n-best hypotheses of each input, best first. `state` holds one row per input (the
    decoder's initial state for it); the first tokens fed are <bos>.

    `margins` (float [inputs], optional) receives each input's decision margin: the smallest
    gap between neighbouring candidates in any ranking the search made for it (the best
    2 x beam + 1 extensions at each step, and the finished hypotheses' final order). Outputs
    computed from log-probabilities that differ by less than about half of it cannot differ: the
    parity certificate uses it to tell a near-tie from a wrong graph."""
    s = search.check()
    k = s.beam
    n_inputs = len(source_lengths)
    limits = np.array([s.max_length(int(n)) for n in source_lengths])
    finished: list[list[Hypothesis]] = [[] for _ in range(n_inputs)]
    # live hypotheses, one row each, grouped by input in input order: which input, their tokens
    # so far ([rows, length]) and summed log-probability
    owner = np.arange(n_inputs)
    history = np.zeros((n_inputs, 0), dtype=np.int64)
    scores = np.zeros(n_inputs)
    tokens = np.full(n_inputs, BOS_ID, dtype=np.int64)
    length = 0
    while len(owner):
        logprobs, state = step(tokens, state)
        logprobs = np.array(logprobs, dtype=np.float64)
        logprobs[:, list(NEVER)] = -np.inf
        length += 1
        vocab = logprobs.shape[1]
        # candidates per live input: its rows (up to `beam`; missing ones -inf) x the vocabulary
        inputs, first, counts = np.unique(owner, return_index=True, return_counts=True)
        slot = np.arange(len(owner)) - np.repeat(first, counts)  # position of each row within its input
        rows = np.full((len(inputs), k), -1)
        rows[np.repeat(np.arange(len(inputs)), counts), slot] = np.arange(len(owner))
        candidates = np.where(rows[..., None] >= 0, scores[rows][..., None] + logprobs[rows], -np.inf)
        at_limit = length >= limits[inputs]
        candidates[at_limit, :, :EOS_ID] = -np.inf  # at the maximum length only <eos> may follow
        candidates[at_limit, :, EOS_ID + 1 :] = -np.inf
        flat = candidates.reshape(len(inputs), k * vocab)
        order = np.argsort(-flat, axis=1, kind="stable")[:, : 2 * k + 1]  # ties: lower row, then lower token id
        if margins is not None:
            _narrow(margins, inputs, np.take_along_axis(flat, order, axis=1))
        order = order[:, : 2 * k]
        values = np.take_along_axis(flat, order, axis=1)
        source_row = np.take_along_axis(rows, order // vocab, axis=1)
        token = order % vocab
        valid = np.isfinite(values)
        eos = valid & (token == EOS_ID)
        # <eos> among the best `beam` finishes a hypothesis (beam 1: greedy), in rank order
        for i, j in zip(*np.nonzero(eos[:, :k]), strict=True):
            b = inputs[i]
            if len(finished[b]) < k:
                body = tuple(int(t) for t in history[source_row[i, j]])
                value = float(values[i, j])
                finished[b].append(Hypothesis(body, value, value / penalty(len(body) + 1, s.length_penalty)))
        extend = valid & ~eos
        extend &= np.cumsum(extend, axis=1) <= k  # the best `beam` that do not end
        done = np.array([len(finished[b]) >= k for b in inputs]) | at_limit
        extend[done] = False  # an input with `beam` finished hypotheses, or at its limit, is over
        i, j = np.nonzero(extend)  # input-major, then rank: the order the rows are kept in
        if not len(i):
            break
        kept = source_row[i, j]
        state = select(state, kept)
        tokens = token[i, j]
        scores = values[i, j]
        owner = inputs[i]
        history = np.concatenate([history[kept], tokens[:, None]], axis=1)
    # best first; equal scores keep the order they finished in (sorted is stable)
    ranked = [sorted(hyps, key=lambda h: -h.score) for hyps in finished]
    if margins is not None:
        for b, hyps in enumerate(ranked):
            _narrow(margins, np.array([b]), np.array([[h.score for h in hyps[: s.nbest + 1]]]))
    return [hyps[: s.nbest] for hyps in ranked]


def _narrow(margins: np.ndarray, inputs: np.ndarray, ranked: np.ndarray) -> None:
    """margins[inputs] = min(itself, the smallest gap between neighbours of each row of `ranked`
    (values best first; -inf, the impossible, leave no gap to count)."""
    if ranked.shape[1] < 2:
        return
    with np.errstate(invalid="ignore"):  # -inf - -inf: no gap, masked next
        gaps = ranked[:, :-1] - ranked[:, 1:]
    gaps = np.where(np.isfinite(ranked[:, 1:]), gaps, np.inf)
    np.minimum.at(margins, inputs, gaps.min(axis=1))


def decode_batches(
    sources: Sequence[np.ndarray],
    encode: Callable[[np.ndarray, np.ndarray], object],
    step: Callable[[np.ndarray, object], tuple[np.ndarray, object]],
    select: Callable[[object, np.ndarray], object],
    search: Search,
    batch_size: int = 64,
    margins: np.ndarray | None = None,
) -> list[list[Hypothesis]]:
    """`decode` over `sources` (token ids [S] each) `batch_size` at a time, in input order:
    `encode(ids [B, S], lengths [B])` gives a padded batch's initial decoder state. `margins`:
    as for `decode`, one per source."""
    results: list[list[Hypothesis]] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        ids, lengths = pad(chunk, dtype=np.int64)
        part = None if margins is None else margins[start : start + len(chunk)]  # a view: filled in place
        results += decode(step, select, encode(ids, lengths), [len(x) for x in chunk], search, part)
    return results
