"""Plain NumPy reference ("oracle") of the Elman RNN, LSTM and GRU layers.

This module is the independent side of parity checks: it is written from the textbook equations
and must never import torch or onnx, so a bug shared by the training code and the exporter cannot
hide in it. Speed is irrelevant here; clarity is the point.

Conventions (all of PyTorch's, so torch parameters can be passed as they are):

* Weights in the layout of a single-layer ``torch.nn.RNN/LSTM/GRU``: ``weight_ih [G*H, I]``,
  ``weight_hh [G*H, H]``, ``bias_ih [G*H]``, ``bias_hh [G*H]`` (a missing bias = zeros). Gate blocks
  are stacked in torch's order: LSTM ``i, f, g, o``; GRU ``r, z, n``; RNN a single block.
* ``x`` is batch-first ``[B, T, I]``; states are ``[B, H]``; ``outputs`` is ``[B, T, H]``.
* ``lengths`` (``[B]``, each in ``1..T``) means what ``pack_padded_sequence`` means: sequence ``b``
  has only steps ``t < lengths[b]``. Padded outputs are 0 and the final state is the state after the
  last real step. ``reverse=True`` starts each sequence at its own last real step ``lengths[b]-1``,
  so padding never leaks into a backward pass.
* Everything is computed in the dtype of ``x`` (float64 gives a tight reference).

ONNX's operators (LSTM, GRU, RNN) use other gate orders and one concatenated bias; the
``*_from_onnx`` / ``*_to_onnx`` converters of ``toolkit.export.layout`` (re-exported here) translate
one direction's weights.

It is used twice: the tests check torch and ONNX Runtime's kernels against it, and `rnnkit verify`
(no torch) recomputes a bundle's model.onnx with it in float64 (`GraphModel`, the weights read
back from the graph), so a graph that does not compute the equations is refused on any machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "rnn_cell",
    "lstm_cell",
    "gru_cell",
    "rnn_layer",
    "lstm_layer",
    "gru_layer",
    "stacked",
    "normalise_sequences",
    "lstm_from_onnx",
    "gru_from_onnx",
    "rnn_from_onnx",
    "lstm_to_onnx",
    "gru_to_onnx",
    "rnn_to_onnx",
    "GATES",
]

from toolkit.export.layout import (  # noqa: F401  (re-exported: the tests use them with the oracle)
    FROM_ONNX,
    GATES,
    gru_from_onnx,
    gru_to_onnx,
    lstm_from_onnx,
    lstm_to_onnx,
    rnn_from_onnx,
    rnn_to_onnx,
)

# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Written via tanh: exact identity, never overflows (1/(1+exp(-x)) warns for x << 0),
    # and keeps the dtype of x.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


_NONLINEARITIES = {"tanh": np.tanh, "relu": relu}


def _blocks(a: np.ndarray, n: int, axis: int) -> list[np.ndarray]:
    """The n equal gate blocks of `a` along `axis` (views; np.split does the same, slower)."""
    size = a.shape[axis] // n
    index = [slice(None)] * a.ndim
    out = []
    for k in range(n):
        index[axis] = slice(k * size, (k + 1) * size)
        out.append(a[tuple(index)])
    return out


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x @ W^T + b: the affine map used for every gate (W is [out, in], as in torch)."""
    return x @ weight.T + bias


# --------------------------------------------------------------------------------------------
# Cells: one time step for a batch. x_t [B, I], h (and c) [B, H].
# --------------------------------------------------------------------------------------------


def rnn_cell(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity="tanh"):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""
    act = _NONLINEARITIES[nonlinearity]
    return act(_linear(x_t, weight_ih, bias_ih) + _linear(h, weight_hh, bias_hh))


def lstm_cell(x_t, h, c, weight_ih, weight_hh, bias_ih, bias_hh, peephole=None):
    """LSTM (Hochreiter & Schmidhuber, with forget gate). Returns (h', c').

    i = sigma(W_ii x + b_ii + W_hi h + b_hi [+ p_i * c])    input gate
    f = sigma(W_if x + b_if + W_hf h + b_hf [+ p_f * c])    forget gate
    g = tanh (W_ig x + b_ig + W_hg h + b_hg)                 candidate cell
    c' = f * c + i * g
    o = sigma(W_io x + b_io + W_ho h + b_ho [+ p_o * c'])   output gate (peeks at the NEW cell)
    h' = o * tanh(c')

    peephole: optional [3, H] in ONNX's order (p_i, p_o, p_f); torch's LSTM has none.
    """
    # Both affine maps at once, then split into torch's gate blocks i, f, g, o.
    gates = _linear(x_t, weight_ih, bias_ih) + _linear(h, weight_hh, bias_hh)
    a_i, a_f, a_g, a_o = _blocks(gates, 4, axis=-1)
    if peephole is not None:
        p_i, p_o, p_f = peephole
        a_i = a_i + p_i * c
        a_f = a_f + p_f * c
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    g = np.tanh(a_g)
    c_new = f * c + i * g
    if peephole is not None:
        a_o = a_o + p_o * c_new
    o = sigmoid(a_o)
    h_new = o * np.tanh(c_new)
    return h_new, c_new


def gru_cell(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, linear_before_reset=True):
    """GRU (Cho et al. 2014). Returns h'.

    r = sigma(W_ir x + b_ir + W_hr h + b_hr)                 reset gate
    z = sigma(W_iz x + b_iz + W_hz h + b_hz)                 update gate
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))            linear_before_reset=True  (torch, cuDNN)
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)            linear_before_reset=False (Cho; ONNX default)
    h' = (1 - z) * n + z * h                                 z close to 1 keeps the old state
    """
    x_r, x_z, x_n = _blocks(_linear(x_t, weight_ih, bias_ih), 3, axis=-1)
    w_hr, w_hz, w_hn = _blocks(weight_hh, 3, axis=0)
    b_hr, b_hz, b_hn = _blocks(bias_hh, 3, axis=-1)
    r = sigmoid(x_r + _linear(h, w_hr, b_hr))
    z = sigmoid(x_z + _linear(h, w_hz, b_hz))
    # True: reset scales the hidden matmul's result, bias b_hn included (lets one fused matmul
    # serve all three gates). False: reset scales the state before the matmul. They differ when r != 1.
    hidden_n = r * _linear(h, w_hn, b_hn) if linear_before_reset else _linear(r * h, w_hn, b_hn)
    n = np.tanh(x_n + hidden_n)
    return (1 - z) * n + z * h


# --------------------------------------------------------------------------------------------
# Time loop shared by all layers
# --------------------------------------------------------------------------------------------


def _check_lengths(lengths, batch: int, steps: int) -> np.ndarray:
    if lengths is None:
        return np.full(batch, steps, dtype=np.int64)
    lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {lengths.shape}, expected ({batch},)")
    if lengths.min() < 1 or lengths.max() > steps:
        raise ValueError(f"lengths must lie in 1..{steps} (as for pack_padded_sequence), got {lengths.tolist()}")
    return lengths


def _scan(
    x: np.ndarray,
    step: Callable[[np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, ...]],
    state: tuple[np.ndarray, ...],
    lengths,
    reverse: bool,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Run `step(x_t, state) -> new state` over time; state[0] is the hidden state emitted as output.

    Iteration k visits, for each sequence b, the position k (forward) or lengths[b]-1-k (reverse).
    Sequences with fewer than k+1 real steps are frozen (their state is not updated) and nothing
    is written for them, so padded outputs stay 0 and the final state is the one after the last
    real step, exactly as with packed sequences.
    """
    batch, steps, _ = x.shape
    lengths = _check_lengths(lengths, batch, steps)
    hidden = state[0].shape[-1]
    outputs = np.zeros((batch, steps, hidden), dtype=x.dtype)
    rows = np.arange(batch)
    for k in range(steps):
        active = k < lengths  # [B]
        if not active.any():
            break
        pos = lengths - 1 - k if reverse else np.full(batch, k)
        pos = np.clip(pos, 0, steps - 1)  # inactive rows read some valid step; their result is discarded
        new_state = step(x[rows, pos], state)
        state = tuple(np.where(active[:, None], new, old) for new, old in zip(new_state, state, strict=True))
        outputs[rows[active], pos[active]] = state[0][active]
    return outputs, state


def _prepare(x, weight_ih, weight_hh, bias_ih, bias_hh, gates: int, states: Sequence):
    """Cast everything to x's dtype, fill missing biases/states with zeros, check shapes."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be [B, T, I], got shape {x.shape}")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    x = x.astype(dtype, copy=False)
    weight_ih = np.asarray(weight_ih, dtype=dtype)
    weight_hh = np.asarray(weight_hh, dtype=dtype)
    hidden = weight_hh.shape[1]
    expected = {"weight_ih": (gates * hidden, x.shape[2]), "weight_hh": (gates * hidden, hidden)}
    for name, w in (("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        if w.shape != expected[name]:
            raise ValueError(f"{name} has shape {w.shape}, expected {expected[name]}")
    biases = []
    for b in (bias_ih, bias_hh):
        b = np.zeros(gates * hidden, dtype=dtype) if b is None else np.asarray(b, dtype=dtype)
        if b.shape != (gates * hidden,):
            raise ValueError(f"bias has shape {b.shape}, expected ({gates * hidden},)")
        biases.append(b)
    batch = x.shape[0]
    out_states = []
    for s in states:
        s = np.zeros((batch, hidden), dtype=dtype) if s is None else np.asarray(s, dtype=dtype)
        if s.shape != (batch, hidden):
            raise ValueError(f"initial state has shape {s.shape}, expected ({batch}, {hidden})")
        out_states.append(s)
    return x, weight_ih, weight_hh, biases[0], biases[1], out_states


# --------------------------------------------------------------------------------------------
# Layers: one direction over a whole (padded) batch
# --------------------------------------------------------------------------------------------


def rnn_layer(x, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, lengths=None, nonlinearity="tanh", reverse=False):
    """Elman RNN layer. Returns (outputs [B, T, H], h_n [B, H])."""
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {sorted(_NONLINEARITIES)}, got {nonlinearity!r}")
    x, w_ih, w_hh, b_ih, b_hh, (h,) = _prepare(x, weight_ih, weight_hh, bias_ih, bias_hh, 1, [h0])

    def step(x_t, state):
        return (rnn_cell(x_t, state[0], w_ih, w_hh, b_ih, b_hh, nonlinearity),)

    outputs, (h_n,) = _scan(x, step, (h,), lengths, reverse)
    return outputs, h_n


def lstm_layer(x, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, c0=None, lengths=None, reverse=False, peephole=None):
    """LSTM layer. Returns (outputs [B, T, H], h_n [B, H], c_n [B, H]).

    peephole: optional peephole weights, [3, H] (or flat [3H]) in the order of the ONNX LSTM
    operator's `P` input: p_i (input gate), p_o (output gate), p_f (forget gate).
    """
    x, w_ih, w_hh, b_ih, b_hh, (h, c) = _prepare(x, weight_ih, weight_hh, bias_ih, bias_hh, 4, [h0, c0])
    if peephole is not None:
        peephole = np.asarray(peephole, dtype=x.dtype).reshape(3, h.shape[1])

    def step(x_t, state):
        return lstm_cell(x_t, state[0], state[1], w_ih, w_hh, b_ih, b_hh, peephole)

    outputs, (h_n, c_n) = _scan(x, step, (h, c), lengths, reverse)
    return outputs, h_n, c_n


def gru_layer(
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, lengths=None, reverse=False, linear_before_reset=True
):
    """GRU layer. Returns (outputs [B, T, H], h_n [B, H]).

    linear_before_reset=True is torch.nn.GRU; False is the original Cho et al. form (ONNX's default).
    """
    x, w_ih, w_hh, b_ih, b_hh, (h,) = _prepare(x, weight_ih, weight_hh, bias_ih, bias_hh, 3, [h0])

    def step(x_t, state):
        return (gru_cell(x_t, state[0], w_ih, w_hh, b_ih, b_hh, linear_before_reset),)

    outputs, (h_n,) = _scan(x, step, (h,), lengths, reverse)
    return outputs, h_n


# --------------------------------------------------------------------------------------------
# Stacks (what torch.nn.RNN/LSTM/GRU(num_layers=N, bidirectional=...) computes, without dropout)
# --------------------------------------------------------------------------------------------


def stacked(x, layers, cell, lengths=None, bidirectional=False, nonlinearity="tanh", state=None):
    """Run a stack of layers; each layer reads the previous layer's output.

    layers: one dict per layer with torch's single-layer names "weight_ih_l0", "weight_hh_l0",
        "bias_ih_l0", "bias_hh_l0" (+ the same with suffix "_reverse" when bidirectional).
        Biases may be absent (bias=False).
    cell: "rnn", "lstm" or "gru".
    state: optional initial states, one dict per layer: {"h": [D, B, H]} (+ "c" for lstm).

    Returns (outputs [B, T, D*H], states) where states has one dict per layer
    {"h": [D, B, H]} (+ "c": [D, B, H] for lstm), D = 2 if bidirectional else 1. When bidirectional
    each layer's output is concat(forward, backward) along the last axis, as in torch.
    """
    if cell not in GATES:
        raise ValueError(f"cell must be one of {sorted(GATES)}, got {cell!r}")
    if state is not None and len(state) != len(layers):
        raise ValueError(f"state has {len(state)} layers, the stack has {len(layers)}")
    suffixes = ["", "_reverse"] if bidirectional else [""]
    states = []
    out = np.asarray(x)
    for k, params in enumerate(layers):
        init = state[k] if state is not None else {}
        outs, hs, cs = [], [], []
        for d, suffix in enumerate(suffixes):

            def p(name, params=params, suffix=suffix):
                return params.get(f"{name}_l0{suffix}")

            weights = (p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"))
            h0 = init["h"][d] if "h" in init else None
            reverse = d == 1
            if cell == "lstm":
                c0 = init["c"][d] if "c" in init else None
                y, h_n, c_n = lstm_layer(out, *weights, h0=h0, c0=c0, lengths=lengths, reverse=reverse)
                cs.append(c_n)
            elif cell == "gru":
                y, h_n = gru_layer(out, *weights, h0=h0, lengths=lengths, reverse=reverse)
            else:
                y, h_n = rnn_layer(out, *weights, h0=h0, lengths=lengths, nonlinearity=nonlinearity, reverse=reverse)
            outs.append(y)
            hs.append(h_n)
        out = np.concatenate(outs, axis=-1)
        layer_state = {"h": np.stack(hs)}
        if cell == "lstm":
            layer_state["c"] = np.stack(cs)
        states.append(layer_state)
    return out, states


# --------------------------------------------------------------------------------------------
# Per-sequence normalisation of features (model.normalize: sequence)
# --------------------------------------------------------------------------------------------


def normalise_sequences(x, lengths, eps: float) -> np.ndarray:
    """Each sequence's features scaled by its own mean and population std over its real steps:
    (x - mean) / sqrt(var + eps) per feature, padded steps 0. Taken about the sequence's first
    step (x - x_0), which changes nothing in exact arithmetic and makes a constant series exactly 0
    in float32 too (toolkit.core.normalize states the definition). x [B, T, F], in x's dtype;
    lengths None: no padding."""
    x = np.asarray(x)
    lengths = _check_lengths(lengths, x.shape[0], x.shape[1])
    out = np.zeros_like(x)
    for b, n in enumerate(lengths):
        d = x[b, :n] - x[b, 0]
        centred = d - d.mean(axis=0)
        out[b, :n] = centred / np.sqrt((centred * centred).mean(axis=0) + eps)
    return out


def stack_frames(x, lengths, k: int) -> tuple[np.ndarray, np.ndarray]:
    """x [B, T, F] -> frames [B, ceil(T / k), k * F] and frame lengths ceil(lengths / k): each
    sequence's real steps in order, k per frame, zeros after its last real step
    (toolkit.models.frames states the definition)."""
    x = np.asarray(x)
    lengths = _check_lengths(lengths, x.shape[0], x.shape[1])
    frames = -(-x.shape[1] // k)
    out = np.zeros((x.shape[0], frames * k, x.shape[2]), dtype=x.dtype)
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n]
    return out.reshape(x.shape[0], frames, k * x.shape[2]), -(-lengths // k)


# --------------------------------------------------------------------------------------------
# A whole rnnkit model from its ONNX graph's weights
# --------------------------------------------------------------------------------------------


class GraphModel:
    """An rnnkit model recomputed from the equations (in `dtype`) with the weights of its model.onnx,
    named as `toolkit.export.graph` writes them: `embedding.weight` (tokens) or an optional
    `feature_mean` (features centred in the graph; the rest of the normalisation is folded into
    layer 0), `layer{i}.W/R/B` in ONNX layout [D, G*H, ...], `head.weight_t` [W, K] and
    `head.bias` (the regression target scale folded in). `model` is the manifest's model section.
    `sequence_eps`: features normalised per sequence with this eps (the manifest's
    `input.normalize_eps`), not by the graph's weights.
    """

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        model: dict,
        tokens: bool,
        per_step: bool,
        dtype=np.float64,
        sequence_eps: float | None = None,
    ):
        missing = [n for n in self.names(model, tokens) if n not in weights]
        if missing:
            raise KeyError(f"the graph has no initializer {', '.join(missing)}")
        self.w = {k: np.asarray(v, dtype=dtype) for k, v in weights.items() if np.asarray(v).dtype.kind == "f"}
        self.dtype = dtype
        self.model, self.tokens, self.per_step = model, tokens, per_step
        self.sequence_eps = sequence_eps
        self.directions = 2 if model["bidirectional"] else 1

    @staticmethod
    def names(model: dict, tokens: bool) -> list[str]:
        layers = [f"layer{i}.{n}" for i in range(model["num_layers"]) for n in "WRB"]
        return (["embedding.weight"] if tokens else []) + layers + ["head.weight_t", "head.bias"]

    def outputs(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """What model.onnx returns for x [B, T(, F)] with `lengths`: [B, T, K] or [B, K]."""
        top, finals, lengths = self._encode(x, lengths)
        if self.per_step:
            pooled = top
        elif self.model.get("pool", "last") == "attention":  # a softmax over each sequence's real steps
            pooled = np.stack([self._attend(top[b, :n]) for b, n in enumerate(np.asarray(lengths))])
        elif self.model.get("pool", "last") != "last":  # over each sequence's real steps
            reduce = np.mean if self.model["pool"] == "mean" else np.max
            pooled = np.stack([reduce(top[b, :n], axis=0) for b, n in enumerate(np.asarray(lengths))])
        elif self.directions == 2:  # the top layer's final states: forward at the end, backward at step 0
            h = finals[-1]["h"]
            pooled = h.sum(axis=0) if self.model["merge"] == "sum" else np.concatenate([h[0], h[1]], axis=-1)
        else:  # the top output (residual included) at each sequence's last real step
            pooled = top[np.arange(len(lengths)), np.asarray(lengths) - 1]
        return pooled @ self.w["head.weight_t"] + self.w["head.bias"]

    def _attend(self, h: np.ndarray) -> np.ndarray:
        """h [n, W] -> sum_t a_t h_t, a = softmax_t(v . tanh(W h_t + b)) (graph names: pool.attention_*)."""
        scores = (
            np.tanh(h @ self.w["pool.attention_proj_t"] + self.w["pool.attention_bias"])
            @ self.w["pool.attention_score_t"]
        )
        weights = np.exp(scores[:, 0] - scores[:, 0].max())
        return (weights / weights.sum()) @ h

    def final_state(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The state step.onnx returns after all of x from zeros: {"h": [L, B, H]} (+ "c")."""
        _, finals, _ = self._encode(x, None)
        return {name: np.concatenate([f[name] for f in finals], axis=0) for name in finals[0]}

    def _encode(self, x, lengths):
        """(top output, final states, the lengths of the top's steps: frames when stacked)."""
        if self.tokens:
            h = self.w["embedding.weight"][np.asarray(x)]
        elif self.sequence_eps is not None:
            h = normalise_sequences(np.asarray(x, dtype=self.dtype), lengths, self.sequence_eps)
        else:  # the std is folded into layer 0, or a node (feature_inverse_std) as with stacked frames
            h = np.asarray(x, dtype=self.dtype) - self.w.get("feature_mean", self.dtype(0))
            h = h * self.w.get("feature_inverse_std", self.dtype(1))
        k = self.model.get("frame_stack", 1)
        if k > 1:
            h, lengths = stack_frames(h, lengths, k)
        top, finals = onnx_stack(self.w, self.model, h, lengths)
        return top, finals, lengths


def onnx_stack(w: dict, model: dict, h: np.ndarray, lengths=None, initial: list[dict] | None = None):
    """The layers `layer{i}.W/R/B` of `w` (ONNX layout [D, G*H, ...]) over h [B, T, I], from zeros
    or `initial` (per layer {"h": [D, B, H]} (+ "c")). `model`: cell, num_layers, bidirectional,
    merge, residual, nonlinearity (a manifest's model section). Returns (top output, per layer
    {"h": [D, B, H]} (+ "c"))."""
    cell = model["cell"]
    directions = 2 if model["bidirectional"] else 1
    finals = []
    for i in range(model["num_layers"]):
        ys, hs, cs = [], [], []
        start = initial[i] if initial is not None else {}
        for d in range(directions):
            W, R, B = (w[f"layer{i}.{n}"][d] for n in "WRB")
            weights = FROM_ONNX[cell](W, R, B)
            h0 = start["h"][d] if "h" in start else None
            if cell == "lstm":
                c0 = start["c"][d] if "c" in start else None
                y, h_n, c_n = lstm_layer(h, *weights, h0=h0, c0=c0, lengths=lengths, reverse=d == 1)
                cs.append(c_n)
            elif cell == "gru":
                y, h_n = gru_layer(h, *weights, h0=h0, lengths=lengths, reverse=d == 1)
            else:
                nonlinearity = model.get("nonlinearity") or "tanh"
                y, h_n = rnn_layer(h, *weights, h0=h0, lengths=lengths, nonlinearity=nonlinearity, reverse=d == 1)
            ys.append(y)
            hs.append(h_n)
        out = _merge(ys, model.get("merge", "concat"))
        if model.get("residual") and i > 0:
            out = out + h
        finals.append({"h": np.stack(hs), **({"c": np.stack(cs)} if cs else {})})
        h = out
    return h, finals


def _merge(ys: list[np.ndarray], merge: str) -> np.ndarray:
    """One direction's outputs as they are; two summed or concatenated (forward, backward)."""
    if len(ys) == 1:
        return ys[0]
    return ys[0] + ys[1] if merge == "sum" else np.concatenate(ys, axis=-1)
