"""The seq2seq certificate: encoder.onnx and decoder_step.onnx against a float64 reference (the
torch model when exporting, `exporter.Seq2SeqTorchReference`; the NumPy oracle of the
encoder-decoder in `rnnkit verify`, `OracleReference`), under the same budget rule as the other
bundles (parity.Rule: each case's budget from float32's own error on it), and the decoded
outputs of ONNX Runtime against the reference's. Below, "torch" stands for either reference.

Cases, on every provider that works here:
- the encoder and a chain of decoder steps on a grid of padded batches (source lengths 1 to
  `parity.LONG`): ONNX Runtime runs encoder.onnx, then decoder_step.onnx once per token, fed its
  own state; torch runs `encode` and the teacher-forced `decode` over the same tokens. Compared
  one output at a time, on real positions only: memory, keys, mask and the initial state; every
  step's log-probabilities and attention weights, and the decoder's final state.
- a padded batch against each source alone (padding must change no real output);
- decoding: greedy and beam 5 (all n-best lists) on `DECODED` sources (random ones, or the
  `--sample` file's), ONNX Runtime's against torch's in float64. They must be identical except
  where torch's search itself was on a near-tie: an output may differ only on a source whose
  decision margin (the smallest gap between neighbouring candidates in any ranking the search
  made for it, `toolkit.core.search.decode`) is within what the step budget lets two
  computations disagree by over that many steps (2 x steps x the largest log-probability budget).
  Such sources are counted and listed, never hidden; the scores of identical outputs are held
  to the same tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from toolkit.core.data.batching import pad
from toolkit.core.data.vocab import BOS_ID, EOS_ID
from toolkit.core.search import Search, decode_batches
from toolkit.export import parity
from toolkit.export.seq2seq_oracle import Seq2SeqGraphModel
from toolkit.runtime.seq2seq import Translator

DECODED = 300
ENCODER_OUTPUTS = ("memory", "keys", "mask", "h", "c")
SEARCHES = {"greedy": Search(beam=1), "beam 5": Search(beam=5, nbest=5)}


@dataclass
class DecodeCase(parity.Case):
    """Decoded outputs of ONNX Runtime against the reference's: `max_abs` is the largest score
    difference over identical outputs, `budget` the near-tie tolerance; `unexplained` lists the
    sources whose outputs differ although the reference's decision margin exceeds it."""

    identical: int = 0
    near_ties: list = field(default_factory=list)
    unexplained: list = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if self.unexplained:
            self.passed, self.margin = False, float("inf")
            first = self.unexplained[0]
            self.reason = (
                f"{len(self.unexplained)} outputs differ from the reference's although its decision margin exceeds the "
                f"tolerance (first: source {first['source']}, margin {first['margin']:.2e} > {first['tolerance']:.2e})"
            )


class Reference:
    """What ONNX Runtime's outputs are compared with: `outputs(ids, lengths, previous)` -> (the
    reference's outputs of both graphs by name, one such dict per float32 noise run), and
    `translate(sources, search, margins)` -> its n-best lists (filling the decision margins).
    Implemented with torch by the exporter (`exporter.Seq2SeqTorchReference`) and, without torch,
    by the NumPy oracle (`OracleReference`)."""

    name = "reference"

    def outputs(self, ids, lengths, previous) -> tuple[dict, list[dict]]:
        raise NotImplementedError

    def translate(self, sources, search: Search, margins: np.ndarray) -> list:
        raise NotImplementedError


class OracleReference(Reference):
    """Torch-free: the NumPy oracle of the encoder-decoder (`seq2seq_oracle`) in float64 with the
    weights read back from the two graphs; its noise runs are the oracle in float32 with the
    weights as stored and moved by about one ulp (as `parity.OracleReference`)."""

    name = "NumPy oracle fp64"

    def __init__(self, blobs: dict[str, bytes], manifest: dict, rng: np.random.Generator, rule=parity.FP32):
        encoder, decoder = (_initializers(blobs[g]) for g in ("encoder.onnx", "decoder_step.onnx"))
        model = manifest["model"]
        try:
            self.model = Seq2SeqGraphModel(encoder, decoder, model)
            moved = [(encoder, decoder)] + [
                (parity.perturbed_weights(encoder, rng, rule.move), parity.perturbed_weights(decoder, rng, rule.move))
                for _ in range(rule.noise_runs - 1)
            ]
            self.fp32 = [Seq2SeqGraphModel(e, d, model, np.float32) for e, d in moved]
        except KeyError as e:
            raise ValueError(f"the graphs are not ones rnnkit writes: {e.args[0]}") from None

    def outputs(self, ids, lengths, previous):
        return _oracle_forced(self.model, ids, lengths, previous), [
            _oracle_forced(m, ids, lengths, previous) for m in self.fp32
        ]

    def translate(self, sources, search, margins):
        m = self.model
        return decode_batches(sources, m.search_encode, m.search_step, m.search_select, search, 64, margins)


def _initializers(blob: bytes) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load_model_from_string(blob).graph.initializer}


def _oracle_forced(model: Seq2SeqGraphModel, ids, lengths, previous) -> dict[str, np.ndarray]:
    encoded = model.encode(ids, lengths)
    decoded = model.decode(previous, encoded, encoded)
    named = {**encoded, **decoded}
    return {k: v if v.dtype == bool else v.astype(np.float64) for k, v in named.items()}


def run_onnx(translator: Translator, ids, lengths, previous) -> dict[str, np.ndarray]:
    """The same through encoder.onnx and decoder_step.onnx, one step per token of `previous`."""
    encoded = dict(
        zip(translator.encoded, translator.encoder.run(None, {"tokens": ids, "lengths": lengths}), strict=True)
    )
    carried = {n: encoded[n] for n in (*translator.state, *translator.per_source)}
    logprobs, attention = [], []
    for t in range(previous.shape[1]):
        got = dict(
            zip(translator.outputs, translator.decoder.run(None, {"previous": previous[:, t], **carried}), strict=True)
        )
        carried |= {n: got[f"{n}_next"] for n in translator.state}
        logprobs.append(got["logprobs"])
        if "attention" in got:
            attention.append(got["attention"])
    out = {k: v for k, v in encoded.items()}
    out["logprobs"] = np.stack(logprobs, axis=1)
    if attention:
        out["attention"] = np.stack(attention, axis=1)
    return out | {f"{n}_next": carried[n] for n in translator.state}


def _real(name: str, value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Real positions only: memory and keys at real source steps, attention over them."""
    if name in ("memory", "keys"):
        return value[mask]
    if name == "attention":
        return value.transpose(0, 2, 1)[mask]  # [real source steps, T]
    return value.astype(np.float64) if value.dtype == bool else value


def decoder_inputs(rng: np.random.Generator, rows: int, tokens: int, target_vocab: int) -> np.ndarray:
    """Teacher-forced decoder inputs [rows, tokens]: <bos>, then random ids past the specials."""
    body = rng.integers(EOS_ID + 1, target_vocab, (rows, tokens - 1), dtype=np.int64)
    return np.concatenate([np.full((rows, 1), BOS_ID, dtype=np.int64), body], axis=1)


def forced_cases(translator, reference, make_source, target_vocab: int, provider, rng, rule, sample=None):
    """The graphs against the reference on the grid of padded batches (and the sample's sources)."""
    grid = [("batch 1 source 1, 1 token", [1], 1), ("batch 7 source 17, 12 tokens", [17] * 7, 12)]
    grid += [("batch 32 sources 1..40 padded, 20 tokens", list(np.random.default_rng(0).integers(1, 41, 32)), 20)]
    grid += [(f"batch 7 sources 1..{parity.LONG} padded, 30 tokens", [1, 2, 17, 64, 130, 300, parity.LONG], 30)]
    batches = [(name, [make_source(n) for n in lengths], tokens) for name, lengths, tokens in grid]
    if sample is not None:
        batches.append((f"sample file ({len(sample)} sources), 10 tokens", sample, 10))
    cases = []
    for name, sources, tokens in batches:
        ids, lengths = pad(sources, dtype=np.int64)
        previous = decoder_inputs(rng, len(sources), tokens, target_vocab)
        got = run_onnx(translator, ids, lengths, previous)
        want, runs = reference.outputs(ids, lengths, previous)
        shapes = {"sources": list(ids.shape), "lengths": [int(lengths.min()), int(lengths.max())], "tokens": tokens}
        for key in want:
            graph = "encoder.onnx" if key in ENCODER_OUTPUTS else "decoder_step.onnx"
            w, g = _real(key, want[key], want["mask"]), _real(key, got.get(key, np.empty(0)), want["mask"])
            noise = parity.noise([_real(key, r[key], r["mask"]) for r in runs], w)
            cases.append(parity.compare(f"{name}: {key}", graph, reference.name, provider, shapes, g, w, noise, rule))
    return cases


def padding_case(translator, reference, make_source, target_vocab: int, provider, rng, rule) -> parity.Case:
    """A padded batch against each source alone: every real output (log-probabilities of 8 steps)
    unchanged by the padding and the company."""
    lengths = [1, 2, 17, 3, 64, 9, 130]
    sources = [make_source(n) for n in lengths]
    previous = decoder_inputs(rng, len(sources), 8, target_vocab)
    ids, lens = pad(sources, dtype=np.int64)
    batched = run_onnx(translator, ids, lens, previous)["logprobs"]
    alone = np.concatenate(
        [
            run_onnx(translator, s[None], np.array([len(s)]), previous[i : i + 1])["logprobs"]
            for i, s in enumerate(sources)
        ]
    )
    want, runs = reference.outputs(ids, lens, previous)
    noise = parity.noise([r["logprobs"] for r in runs], want["logprobs"])
    shapes = {"sources": list(ids.shape), "lengths": lengths, "tokens": previous.shape[1]}
    name = "padded batch vs one at a time: logprobs"
    return parity.compare(name, "decoder_step.onnx", "decoder_step.onnx", provider, shapes, batched, alone, noise, rule)


def decode_case(translator, reference, sources, search_name, provider, step_budget, step_noise) -> DecodeCase:
    """ONNX Runtime's n-best lists against the reference's on `sources` (see the module doc)."""
    search = SEARCHES[search_name]
    margins = np.full(len(sources), np.inf)
    want = reference.translate(sources, search, margins)
    got = translator.translate(sources, search)
    identical, ties, unexplained, worst = 0, [], [], 0.0
    tolerance = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        tol = 2.0 * search.max_length(len(sources[i])) * step_budget
        tolerance = max(tolerance, tol)
        if [h.tokens for h in g] == [h.tokens for h in w]:
            identical += 1
            worst = max(worst, max(abs(a.score - b.score) for a, b in zip(g, w, strict=True)))
            continue
        entry = {"source": i, "margin": float(margins[i]), "tolerance": tol}
        entry |= {"onnx": list(g[0].tokens), "torch": list(w[0].tokens)}
        (ties if margins[i] <= tol else unexplained).append(entry)
    shapes = {"sources": len(sources), "beam": search.beam, "nbest": search.nbest}
    name = f"{search_name} decoding of {len(sources)} sources"
    graph = "encoder.onnx, decoder_step.onnx"
    return DecodeCase(
        name, graph, reference.name, provider, shapes, worst, 0.0, 0.0, step_noise, tolerance,
        identical=identical, near_ties=ties[:20], unexplained=unexplained[:20],
    )  # fmt: skip


def certify(
    reference: Reference,
    blobs: dict[str, bytes],
    source_vocab: int,
    target_vocab: int,
    seed: int,
    sample: list[np.ndarray] | None = None,
    rule: parity.Rule = parity.FP32,
    providers=("CPUExecutionProvider",),
) -> parity.Report:
    rng = np.random.default_rng(seed + 1)  # the reference's noise runs drew from seed's own generator
    make_source = lambda n: rng.integers(EOS_ID + 1, source_vocab, int(n), dtype=np.int64)  # noqa: E731
    decoded = sample[:DECODED] if sample else [make_source(n) for n in rng.integers(1, 31, DECODED)]
    cases = []
    for provider in providers:
        translator = Translator(
            parity.session(blobs["encoder.onnx"], provider), parity.session(blobs["decoder_step.onnx"], provider)
        )
        teacher = forced_cases(translator, reference, make_source, target_vocab, provider, rng, rule, sample)
        cases += teacher
        cases.append(padding_case(translator, reference, make_source, target_vocab, provider, rng, rule))
        steps = [c for c in teacher if c.name.endswith(": logprobs")]
        budget, noise = max(c.budget for c in steps), max(c.noise for c in steps)
        for name in SEARCHES:
            cases.append(decode_case(translator, reference, decoded, name, provider, budget, noise))
    return parity.Report(seed=seed, rule=rule, cases=cases)
