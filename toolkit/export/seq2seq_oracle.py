"""Plain NumPy reference of an rnnkit encoder-decoder, from the weights of its two graphs.

The independent side of `rnnkit verify` for seq2seq bundles (as `oracle.GraphModel` is for the
others): the textbook equations of `toolkit.models.seq2seq`, written again with NumPy and the
recurrent layers of `oracle`, never importing torch or onnx. The weights are the initializers of
encoder.onnx and decoder_step.onnx, named as `toolkit.export.seq2seq_graph` writes them:

    encoder.onnx       source_embedding.weight, layer{i}.W/R/B, key.weight_t (+ key.bias),
                       bridge.{k}.weight_t and bridge.{k}.bias (no bridge: the state is copied)
    decoder_step.onnx  target_embedding.weight, layer{i}.W/R/B, query.weight_t and
                       energy.weight_t (additive), combine.weight_t/bias, head.weight_t/bias
"""

from __future__ import annotations

import numpy as np

from toolkit.export.oracle import onnx_stack


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Seq2SeqGraphModel:
    """`model` is the manifest's model section (with `decoder` and `attention`)."""

    def __init__(self, encoder: dict, decoder: dict, model: dict, dtype=np.float64):
        floats = lambda w: {k: np.asarray(v, dtype=dtype) for k, v in w.items() if np.asarray(v).dtype.kind == "f"}  # noqa: E731
        self.enc, self.dec, self.model = floats(encoder), floats(decoder), model
        self.attention = model["attention"]
        d = model["decoder"]
        self.names = ["h", "c"] if d["cell"] == "lstm" else ["h"]
        # the decoder's stack: one direction, the encoder's nonlinearity and residual setting
        self.decoder_model = {**model, "cell": d["cell"], "num_layers": d["num_layers"], "bidirectional": False}
        need = ["source_embedding.weight", "layer0.W"], ["target_embedding.weight", "layer0.W", "head.weight_t"]
        for side, names in zip((self.enc, self.dec), need, strict=True):
            missing = [n for n in names if n not in side]
            if missing:
                raise KeyError(f"no initializer {', '.join(missing)}")

    def encode(self, ids: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """What encoder.onnx returns: memory, keys (attention), mask, and the decoder's h (c)."""
        x = self.enc["source_embedding.weight"][np.asarray(ids)]
        memory, finals = onnx_stack(self.enc, self.model, x, np.asarray(lengths))
        out = {"memory": memory, "mask": np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]}
        if self.attention != "none":
            out["keys"] = memory @ self.enc["key.weight_t"] + self.enc.get("key.bias", 0.0)
        if "bridge.0.weight_t" not in self.enc:  # s_0 = h_T, layer by layer
            return out | {n: np.concatenate([f[n] for f in finals], axis=0) for n in self.names}
        batch = ids.shape[0]
        # every layer's final h, directions side by side per row: [B, layers * D * H]
        summary = np.concatenate([f["h"].transpose(1, 0, 2).reshape(batch, -1) for f in finals], axis=1)
        layers, hidden = self.decoder_model["num_layers"], self.model["decoder"]["hidden_size"]
        for k, n in enumerate(self.names):
            made = np.tanh(summary @ self.enc[f"bridge.{k}.weight_t"] + self.enc[f"bridge.{k}.bias"])
            out[n] = made.reshape(batch, layers, hidden).transpose(1, 0, 2)
        return out

    def decode(self, previous: np.ndarray, state: dict, encoded: dict) -> dict[str, np.ndarray]:
        """decoder_step.onnx run over previous [B, T] from `state` ({"h": [L, B, H]} (+ "c")):
        logprobs [B, T, V], attention [B, T, S] (with attention), and h_next (c_next)."""
        x = self.dec["target_embedding.weight"][np.asarray(previous)]
        initial = [{n: state[n][i : i + 1] for n in self.names} for i in range(self.decoder_model["num_layers"])]
        s, finals = onnx_stack(self.dec, self.decoder_model, x, None, initial)
        out = {}
        if self.attention != "none":
            keys, memory = encoded["keys"], encoded["memory"]
            if self.attention == "additive":
                query = (s @ self.dec["query.weight_t"])[:, :, None, :]  # [B, T, 1, H]
                scores = (np.tanh(keys[:, None, :, :] + query) @ self.dec["energy.weight_t"])[..., 0]
            else:
                scores = s @ keys.transpose(0, 2, 1)  # [B, T, S]
            scores = np.where(encoded["mask"][:, None, :], scores, -np.inf)
            weights = np.exp(_log_softmax(scores))
            both = np.concatenate([s, weights @ memory], axis=-1)
            s = np.tanh(both @ self.dec["combine.weight_t"] + self.dec["combine.bias"])
            out["attention"] = weights
        out["logprobs"] = _log_softmax(s @ self.dec["head.weight_t"] + self.dec["head.bias"])
        return out | {f"{n}_next": np.concatenate([f[n] for f in finals], axis=0) for n in self.names}

    # ---- the search's view: one decoder step per call, hypothesis rows gathered -----------------
    def search_encode(self, ids: np.ndarray, lengths: np.ndarray) -> dict:
        return self.encode(ids, lengths)

    def search_step(self, tokens: np.ndarray, carried: dict) -> tuple[np.ndarray, dict]:
        got = self.decode(np.asarray(tokens)[:, None], carried, carried)
        carried = {**carried, **{n: got[f"{n}_next"] for n in self.names}}
        return got["logprobs"][:, 0].astype(np.float64), carried

    def search_select(self, carried: dict, rows: np.ndarray) -> dict:
        return {n: (v[:, rows] if n in self.names else v[rows]) for n, v in carried.items()}
