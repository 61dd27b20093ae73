"""The shared greedy/beam search (toolkit.core.search) on toy decoders whose answers are known:
an exhaustive enumeration, a plain argmax loop, and each input decoded alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from toolkit.core.data.vocab import BOS_ID, EOS_ID, PAD_ID
from toolkit.core.search import Search, decode, penalty

V = 7  # 4 specials + 3 tokens


def markov(seed: int):
    """A decoder whose next-token distribution depends on the previous token and on the input
    (a per-input bias row): state = (input index per row,)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(V, V)) * 2
    bias = rng.normal(size=(8, V))

    def logprobs(previous, inputs):
        z = table[previous] + bias[inputs]
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def step(tokens, state):
        return logprobs(tokens, state), state

    def select(state, rows):
        return state[rows]

    return step, select, logprobs


def exhaustive(logprobs, source: int, search: Search):
    """Every output up to the max length, scored as the search scores finished hypotheses."""
    limit = search.max_length(1)
    outputs = []
    for n in range(limit):
        for body in itertools.product(range(4, V), repeat=n):
            seq = (*body, EOS_ID)
            previous = (BOS_ID, *seq[:-1])
            total = sum(logprobs(np.array([p]), np.array([source]))[0, t] for p, t in zip(previous, seq, strict=True))
            outputs.append((total / penalty(len(seq), search.length_penalty), body, total))
    outputs.sort(key=lambda o: -o[0])
    return outputs


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_finds_the_exhaustive_n_best(alpha):
    """With the special tokens 1 (<unk>) masked out of the toy's reach below, a beam wider than
    every hypothesis is an exhaustive search: its n-best are the enumeration's top n."""
    step, select, logprobs = markov(0)

    def no_unk(tokens, state):
        lp, state = step(tokens, state)
        lp = lp.copy()
        lp[:, 1] = -np.inf
        return lp, state

    search = Search(beam=64, nbest=5, length_penalty=alpha, max_len_a=0, max_len_b=4)  # 40 outputs
    got = decode(no_unk, select, np.array([3]), [1], search)[0]
    want = exhaustive(logprobs, 3, search)[:5]
    print([(h.tokens, round(h.score, 4)) for h in got])
    assert [h.tokens for h in got] == [w[1] for w in want]
    assert np.allclose([h.score for h in got], [w[0] for w in want])
    assert np.allclose([h.logprob for h in got], [w[2] for w in want])


def test_beam_one_is_greedy_decoding():
    step, select, logprobs = markov(1)
    search = Search(beam=1, max_len_a=0, max_len_b=12)
    for source in range(8):
        got = decode(step, select, np.array([source]), [1], search)[0][0]
        tokens, previous, total = [], BOS_ID, 0.0
        while True:
            lp = logprobs(np.array([previous]), np.array([source]))[0]
            lp[[PAD_ID, BOS_ID]] = -np.inf
            if len(tokens) + 1 >= search.max_length(1):
                lp[:EOS_ID] = lp[EOS_ID + 1 :] = -np.inf
                lp[EOS_ID] = logprobs(np.array([previous]), np.array([source]))[0, EOS_ID]
            nxt = int(np.argmax(lp))
            total += lp[nxt]
            if nxt == EOS_ID:
                break
            tokens.append(nxt)
            previous = nxt
        assert got.tokens == tuple(tokens) and np.isclose(got.logprob, total)


class TinyRNN:
    """A decoder with a real recurrent state per row, conditioned on each input's 'encoding'."""

    def __init__(self, seed: int, inputs: int):
        rng = np.random.default_rng(seed)
        self.emb, self.w, self.out = rng.normal(size=(V, 6)), rng.normal(size=(6, 6)) * 0.5, rng.normal(size=(6, V))
        self.enc = rng.normal(size=(inputs, 6))

    def initial(self, inputs):
        return {"h": self.enc[inputs].copy(), "source": np.array(inputs)}

    def step(self, tokens, state):
        h = np.tanh(self.emb[tokens] + state["h"] @ self.w + 0.3 * self.enc[state["source"]])
        z = h @ self.out
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True)), {"h": h, "source": state["source"]}

    @staticmethod
    def select(state, rows):
        return {k: v[rows] for k, v in state.items()}


@pytest.mark.parametrize("beam", [1, 3, 5])
def test_a_batch_decodes_each_input_as_it_decodes_alone(beam):
    rnn = TinyRNN(2, 12)
    lengths = list(range(1, 13))
    search = Search(beam=beam, nbest=beam, length_penalty=0.6, max_len_a=1.0, max_len_b=2)
    calls = []

    def counted(tokens, state):
        calls.append(len(tokens))
        return rnn.step(tokens, state)

    batched = decode(counted, rnn.select, rnn.initial(list(range(12))), lengths, search)
    alone = [decode(rnn.step, rnn.select, rnn.initial([i]), [lengths[i]], search) for i in range(12)]
    print(f"beam {beam}: {len(calls)} decoder calls for 12 inputs, rows per call up to {max(calls)}")
    for got, (want,) in zip(batched, alone, strict=True):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        assert np.allclose([h.score for h in got], [h.score for h in want])
    assert max(calls) <= 12 * beam and len(calls) <= search.max_length(12)  # one call per step
    for i, hyps in enumerate(batched):
        assert len(hyps) >= 1 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert all(len(h.tokens) + 1 <= search.max_length(lengths[i]) for h in hyps)
        assert all(PAD_ID not in h.tokens and BOS_ID not in h.tokens and EOS_ID not in h.tokens for h in hyps)


def test_the_maximum_length_ends_every_hypothesis():
    """A decoder that never wants <eos> still stops at max_len_a * |source| + max_len_b."""

    def never_eos(tokens, state):
        lp = np.full((len(tokens), V), -1.0)
        lp[:, EOS_ID] = -50.0
        return lp, state

    hyps = decode(never_eos, lambda s, r: s, None, [4], Search(beam=2, nbest=2, max_len_a=1.5, max_len_b=1))[0]
    print([(h.tokens, h.logprob) for h in hyps])
    assert [len(h.tokens) for h in hyps] == [6, 6]  # 7 tokens with <eos>
    assert hyps[0].tokens == (1,) * 6  # ties go to the lowest id that may be generated (<unk>)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"beam": 0}, "beam must be a whole number between 1 and 64, got 0"),
        ({"beam": 65, "nbest": 1}, "beam must be a whole number between 1 and 64"),
        ({"beam": 2.0}, "beam must be a whole number"),
        ({"beam": 2, "nbest": 3}, "nbest must be between 1 and the beam"),
        ({"length_penalty": -1}, "length_penalty must be a number between 0 and 10"),
        ({"length_penalty": 1e30}, "length_penalty must be a number between 0 and 10"),  # overflowed the score
        ({"length_penalty": float("nan")}, "length_penalty"),
        ({"length_penalty": float("inf")}, "length_penalty"),
        ({"max_len_a": float("nan")}, "max_len_a must be a number between 0 and 10"),
        ({"max_len_a": 1e300}, "max_len_a"),
        ({"max_len_b": 10**9}, "max_len_b must be a whole number between 0 and 1024"),
        ({"max_len_b": -1}, "max_len_b"),
        ({"max_len_a": 0, "max_len_b": 0}, "at least one token"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        Search(**settings).check()


def test_many_random_searches_keep_every_rule():
    """Random decoders, batch sizes, beams and limits: every input gets between 1 and nbest
    hypotheses, within its length limit, sorted, each score its log-probability over the length
    penalty, and a batch decodes as its inputs alone."""
    for seed in range(25):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 10))
        rnn = TinyRNN(seed, n)
        lengths = [int(x) for x in rng.integers(1, 7, n)]
        beam = int(rng.integers(1, 5))
        alpha = float(rng.choice([0.0, 0.6, 1.0]))
        search = Search(
            beam=beam,
            nbest=int(rng.integers(1, beam + 1)),
            length_penalty=alpha,
            max_len_b=int(rng.integers(0, 3)),
            max_len_a=1.0,
        )
        batched = decode(rnn.step, rnn.select, rnn.initial(list(range(n))), lengths, search)
        for i, hyps in enumerate(batched):
            alone = decode(rnn.step, rnn.select, rnn.initial([i]), [lengths[i]], search)[0]
            assert [h.tokens for h in hyps] == [h.tokens for h in alone]
            assert 1 <= len(hyps) <= search.nbest
            assert all(len(h.tokens) + 1 <= search.max_length(lengths[i]) for h in hyps)
            assert all(np.isclose(h.score, h.logprob / penalty(len(h.tokens) + 1, alpha)) for h in hyps)
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


@pytest.mark.parametrize("beam", [1, 3])
def test_decision_margins_bound_what_small_errors_can_change(beam):
    """The certificate's near-tie rule: log-probabilities moved by less than margin / (2 x max
    length) per step cannot change an input's n-best; a tie gives a margin of 0."""
    search = Search(beam=beam, nbest=beam, max_len_a=0, max_len_b=5)
    rng = np.random.default_rng(beam)
    kept = 0
    for seed in range(40):
        step, select, _ = markov(seed)
        inputs = np.arange(8)
        margins = np.full(8, np.inf)
        clean = decode(step, select, inputs, [1] * 8, search, margins)
        assert (margins >= 0).all() and np.isfinite(margins).all()  # a toy Markov decoder has exact ties too
        delta = margins / (2 * search.max_length(1)) * 0.99

        def noisy(tokens, state, step=step, delta=delta):
            logprobs, state = step(tokens, state)
            return logprobs + rng.uniform(-1, 1, logprobs.shape) * delta[state][:, None], state

        moved = decode(noisy, select, inputs, [1] * 8, search)
        assert [[h.tokens for h in x] for x in moved] == [[h.tokens for h in x] for x in clean]
        kept += 8
    print(f"beam {beam}: {kept} inputs decoded alike under errors below their margins")

    def tied(tokens, state):  # tokens 4 and 5 always equally likely
        logprobs = np.log(np.full((len(tokens), V), 1e-3))
        logprobs[:, [4, 5]] = np.log(0.4)
        return logprobs, state

    margins = np.full(1, np.inf)
    decode(tied, select, np.zeros(1, dtype=int), [1], search, margins)
    assert margins[0] == 0.0
