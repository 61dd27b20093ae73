"""Seq2seq decoding on ONNX Runtime: encoder.onnx once per batch of sources, then
decoder_step.onnx once per output step for every live hypothesis of the batch, under the shared
NumPy search (toolkit.core.search), the same search the torch model runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.core.search import Hypothesis, Search, decode_batches

#: What the decoder step may take besides `previous` and the state, all from encoder.onnx and
#: gathered by hypothesis row.
PER_SOURCE = ("memory", "keys", "mask")


class Translator:
    """Decodes with two ONNX Runtime sessions: encoder.onnx's and decoder_step.onnx's."""

    def __init__(self, encoder, decoder_step):
        self.encoder, self.decoder = encoder, decoder_step
        self.encoded = [o.name for o in self.encoder.get_outputs()]
        self.outputs = [o.name for o in self.decoder.get_outputs()]
        self.state = [n.removesuffix("_next") for n in self.outputs if n.endswith("_next")]
        wanted = {i.name for i in self.decoder.get_inputs()}
        self.per_source = [n for n in PER_SOURCE if n in wanted]
        self.provider = self.decoder.get_providers()[0]

    def translate(self, sources: Sequence[np.ndarray], search: Search, batch_size: int = 64) -> list[list[Hypothesis]]:
        """The n-best of each source (token ids [S], each at least one step), in input order."""
        return decode_batches(sources, self._encode, self._step, self._select, search, batch_size)

    def _encode(self, ids: np.ndarray, lengths: np.ndarray) -> dict:
        encoded = dict(zip(self.encoded, self.encoder.run(None, {"tokens": ids, "lengths": lengths}), strict=True))
        return {n: encoded[n] for n in (*self.state, *self.per_source)}

    def _step(self, tokens: np.ndarray, carried: dict) -> tuple[np.ndarray, dict]:
        got = self.decoder.run(self.outputs, {"previous": tokens, **carried})
        named = dict(zip(self.outputs, got, strict=True))
        carried = {**carried, **{n: named[f"{n}_next"] for n in self.state}}
        return named["logprobs"].astype(np.float64), carried

    def _select(self, carried: dict, rows: np.ndarray) -> dict:
        """Keep hypothesis rows `rows`: the state's batch axis is 1 ([layers, batch, hidden]), the
        encoder outputs' axis 0."""
        return {n: (v[:, rows] if n in self.state else v[rows]) for n, v in carried.items()}
