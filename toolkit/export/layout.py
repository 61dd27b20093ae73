"""torch <-> ONNX weight layout of the recurrent operators (LSTM, GRU, RNN), one direction.

torch stacks the gate blocks of `weight_ih`/`weight_hh` in one order and keeps two biases; ONNX's
operators use another gate order and one concatenated bias. The exporter writes ONNX weights with
`*_to_onnx`; the tests read them back with `*_from_onnx` to check graphs against the NumPy oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Number of gate blocks stacked in weight_ih / weight_hh for each cell.
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

# --------------------------------------------------------------------------------------------
# ONNX <-> torch weight layout, one direction
#
# ONNX:  W [G*H, I], R [G*H, H], B [2*G*H] = concat(Wb, Rb); gate blocks in ONNX order
#        LSTM i, o, f, c      GRU z, r, h      RNN single block.
# torch: weight_ih, weight_hh, bias_ih, bias_hh; gate blocks in torch order
#        LSTM i, f, g(=c), o  GRU r, z, n(=h)
# (ONNX tensors carry a leading num_directions axis: pass W[d], R[d], B[d].)
# --------------------------------------------------------------------------------------------

# torch block k = ONNX block _ONNX_BLOCK_OF_TORCH[cell][k]
_ONNX_BLOCK_OF_TORCH = {
    "lstm": [0, 2, 3, 1],  # torch i, f, g, o  <-  ONNX i(0), f(2), c(3), o(1)
    "gru": [1, 0, 2],  # torch r, z, n  <-  ONNX r(1), z(0), h(2)
    "rnn": [0],
}


def _reorder(a: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Permute the gate blocks stacked along axis 0: result block k = input block order[k]."""
    blocks = np.split(np.asarray(a), len(order), axis=0)
    return np.concatenate([blocks[j] for j in order], axis=0)


def _from_onnx(cell: str, W, R, B):
    order = _ONNX_BLOCK_OF_TORCH[cell]
    W, R = np.asarray(W), np.asarray(R)
    if W.ndim != 2 or R.ndim != 2:
        raise ValueError(f"expected one direction: W [G*H, I] and R [G*H, H], got {W.shape} and {R.shape}")
    rows = W.shape[0]
    if B is None:  # ONNX: B absent means zero biases
        B = np.zeros(2 * rows, dtype=W.dtype)
    B = np.asarray(B).reshape(-1)
    if B.shape != (2 * rows,):
        raise ValueError(f"B has shape {B.shape}, expected ({2 * rows},) = concat(Wb, Rb)")
    wb, rb = B[:rows], B[rows:]
    return _reorder(W, order), _reorder(R, order), _reorder(wb, order), _reorder(rb, order)


def _to_onnx(cell: str, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    inverse = np.argsort(_ONNX_BLOCK_OF_TORCH[cell])
    weight_ih, weight_hh = np.asarray(weight_ih), np.asarray(weight_hh)
    rows = weight_ih.shape[0]
    bias_ih = np.zeros(rows, weight_ih.dtype) if bias_ih is None else np.asarray(bias_ih)
    bias_hh = np.zeros(rows, weight_ih.dtype) if bias_hh is None else np.asarray(bias_hh)
    B = np.concatenate([_reorder(bias_ih, inverse), _reorder(bias_hh, inverse)])
    return _reorder(weight_ih, inverse), _reorder(weight_hh, inverse), B


def lstm_from_onnx(W, R, B=None):
    """ONNX LSTM (gates i,o,f,c) -> torch (i,f,g,o): returns (weight_ih, weight_hh, bias_ih, bias_hh)."""
    return _from_onnx("lstm", W, R, B)


def gru_from_onnx(W, R, B=None):
    """ONNX GRU (gates z,r,h) -> torch (r,z,n): returns (weight_ih, weight_hh, bias_ih, bias_hh)."""
    return _from_onnx("gru", W, R, B)


def rnn_from_onnx(W, R, B=None):
    """ONNX RNN -> torch: only the bias is split (Wb, Rb); returns (weight_ih, weight_hh, bias_ih, bias_hh)."""
    return _from_onnx("rnn", W, R, B)


def lstm_to_onnx(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch LSTM -> ONNX: returns (W, R, B) for one direction (no leading direction axis)."""
    return _to_onnx("lstm", weight_ih, weight_hh, bias_ih, bias_hh)


def gru_to_onnx(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch GRU -> ONNX: returns (W, R, B) for one direction (no leading direction axis)."""
    return _to_onnx("gru", weight_ih, weight_hh, bias_ih, bias_hh)


def rnn_to_onnx(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch RNN -> ONNX: returns (W, R, B) for one direction (no leading direction axis)."""
    return _to_onnx("rnn", weight_ih, weight_hh, bias_ih, bias_hh)


#: ONNX (W, R, B) -> torch (weight_ih, weight_hh, bias_ih, bias_hh), by cell.
FROM_ONNX = {"lstm": lstm_from_onnx, "gru": gru_from_onnx, "rnn": rnn_from_onnx}
