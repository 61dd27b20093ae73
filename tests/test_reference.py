"""The NumPy oracle (toolkit.export.oracle) against three independent implementations:

1. torch.nn.RNN/LSTM/GRU with random weights, packed variable-length batches, nonzero initial
   states, single layers and multi-layer (bidirectional) stacks, in float64 and float32;
2. the official ONNX operator test vectors of LSTM/GRU/RNN that ship with the installed onnx
   package (on-disk dirs in older releases; generated from onnx.backend.test.case.node since
   onnx removed the node-test artifacts from its wheel);
3. onnxruntime's LSTM/GRU/RNN kernels with random (non-uniform) weights, which pins the ONNX gate
   orders, peepholes, both GRU forms and sequence_lens; the official vectors use all-equal gate
   weights, so on their own they cannot detect a permuted gate order.

Every comparison prints its max abs error.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from toolkit.export import oracle as ref

REPO = Path(__file__).resolve().parents[1]

# ============================================================================================
# 1. Against torch
# ============================================================================================

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]
DTYPES = {"float64": (torch.float64, 1e-10), "float32": (torch.float32, 1e-5)}
# (num_layers, bidirectional): a single bidirectional layer is checked through the per-layer
# functions (forward and reverse); the stacks go through `stacked`.
ARCHS = {"single": (1, True), "stack3_bidir": (3, True), "stack2_unidir": (2, False)}
LENGTHS = [7, 1, 200, 64, 2, 200]  # length 1, long ones, unsorted (enforce_sorted=False)
INPUT, HIDDEN = 5, 16


def _torch_module(cell, nonlinearity, num_layers, bidirectional, dtype):
    torch.manual_seed(0)
    kw = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, **kw
    )
    return module.to(dtype).eval()


def _layer_params(module, k):
    """torch's *_l{k}[_reverse] parameters of layer k, renamed *_l0[_reverse], as numpy."""
    out = {}
    for name, p in module.named_parameters():
        base, _, rest = name.partition(f"_l{k}")
        if rest in ("", "_reverse") and name != base:
            out[f"{base}_l0{rest}"] = p.detach().numpy()
    return out


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=[f"{c}_{n}" if n else c for c, n in CELLS])
def test_against_torch(cell, nonlinearity, dtype_name, arch):
    dtype, tol = DTYPES[dtype_name]
    num_layers, bidirectional = ARCHS[arch]
    D = 2 if bidirectional else 1
    module = _torch_module(cell, nonlinearity, num_layers, bidirectional, dtype)

    g = torch.Generator().manual_seed(1)
    B, T = len(LENGTHS), max(LENGTHS)
    x = torch.randn(B, T, INPUT, generator=g, dtype=dtype)
    h0 = 0.5 * torch.randn(num_layers * D, B, HIDDEN, generator=g, dtype=dtype)
    c0 = 0.5 * torch.randn(num_layers * D, B, HIDDEN, generator=g, dtype=dtype)
    lengths = torch.tensor(LENGTHS)

    with torch.no_grad():
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = module(packed, (h0, c0) if cell == "lstm" else h0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    h_t, c_t = state if cell == "lstm" else (state, None)

    xn, lens = x.numpy(), np.array(LENGTHS)
    if arch == "single":
        p = _layer_params(module, 0)
        outs, hs, cs = [], [], []
        for d, suffix in enumerate(["", "_reverse"]):
            w = [p[f"{n}_l0{suffix}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if cell == "lstm":
                y, h, c = ref.lstm_layer(xn, *w, h0=h0[d].numpy(), c0=c0[d].numpy(), lengths=lens, reverse=d == 1)
                cs.append(c)
            elif cell == "gru":
                y, h = ref.gru_layer(xn, *w, h0=h0[d].numpy(), lengths=lens, reverse=d == 1)
            else:
                y, h = ref.rnn_layer(xn, *w, h0=h0[d].numpy(), lengths=lens, nonlinearity=nonlinearity, reverse=d == 1)
            outs.append(y)
            hs.append(h)
        y_ref, h_ref = np.concatenate(outs, -1), np.stack(hs)
        c_ref = np.stack(cs) if cell == "lstm" else None
    else:
        layers = [_layer_params(module, k) for k in range(num_layers)]
        init = [
            {"h": h0[k * D : (k + 1) * D].numpy(), **({"c": c0[k * D : (k + 1) * D].numpy()} if cell == "lstm" else {})}
            for k in range(num_layers)
        ]
        y_ref, states = ref.stacked(
            xn, layers, cell, lengths=lens, bidirectional=bidirectional, nonlinearity=nonlinearity or "tanh", state=init
        )
        h_ref = np.concatenate([s["h"] for s in states])
        c_ref = np.concatenate([s["c"] for s in states]) if cell == "lstm" else None

    assert y_ref.dtype == xn.dtype, "the oracle must compute in the dtype of its inputs"
    assert y_ref.shape == (B, T, D * HIDDEN)
    real = np.arange(T)[None, :] < lens[:, None]  # [B, T]
    err_y = _max_err(y_ref[real], out.numpy()[real])
    err_h = _max_err(h_ref, h_t.numpy())
    err_c = _max_err(c_ref, c_t.numpy()) if cell == "lstm" else 0.0
    pad_ref = float(np.max(np.abs(y_ref[~real])))
    print(
        f"\n[torch {cell}{'/' + nonlinearity if nonlinearity else ''} {dtype_name} {arch}] max abs err: "
        f"outputs {err_y:.2e}, h_n {err_h:.2e}" + (f", c_n {err_c:.2e}" if cell == "lstm" else "")
    )
    assert pad_ref == 0.0, "outputs at padded positions must be exactly 0"
    assert float(np.max(np.abs(out.numpy()[~real]))) == 0.0
    assert max(err_y, err_h, err_c) <= tol


# ============================================================================================
# 2. Official ONNX operator test vectors
# ============================================================================================

VECTOR_GLOBS = ["test_lstm_*", "test_gru_*", "test_rnn_*", "test_simple_rnn_*"]
RNN_OPS = ("LSTM", "GRU", "RNN")
SLOTS = {
    "LSTM": ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"],
    "GRU": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
    "RNN": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
}
OUT_SLOTS = {"LSTM": ["Y", "Y_h", "Y_c"], "GRU": ["Y", "Y_h"], "RNN": ["Y", "Y_h"]}
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
ONNX_TOL = 1e-5


def _onnx_node_data_dir() -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")


def _vector_dirs(root: str | None = None) -> list[str]:
    """On-disk vectors (model.onnx + test_data_set_0/*.pb) whose node is an LSTM/GRU/RNN."""
    root = root or _onnx_node_data_dir()
    found = set()
    for pattern in VECTOR_GLOBS:
        for d in glob.glob(os.path.join(root, pattern)):
            model = os.path.join(d, "model.onnx")
            if os.path.isfile(model) and onnx.load(model).graph.node[0].op_type in RNN_OPS:
                found.add(d)
    return sorted(found)


def _generated_vectors() -> dict:
    """The same vectors as onnx now builds them in memory (onnx.backend.test.case.node.*; its own
    backend Runner does the same since the node-test artifacts left the wheel). Importing a case
    module runs its export_* functions (seeded) and appends TestCases to _NodeTestCases."""
    found = {}
    pkg = "onnx.backend.test.case.node"
    for module in ("lstm", "gru", "rnn"):
        if importlib.util.find_spec(f"{pkg}.{module}") is not None:
            importlib.import_module(f"{pkg}.{module}")
    cases = getattr(importlib.import_module(pkg), "_NodeTestCases", [])
    for tc in cases:
        node = tc.model.graph.node[0]
        if len(tc.model.graph.node) == 1 and node.op_type in RNN_OPS:
            inputs, outputs = tc.data_sets[0]
            found[tc.name] = (node, [_as_array(a) for a in inputs], [_as_array(a) for a in outputs])
    return found


def _as_array(a):
    return numpy_helper.to_array(a) if isinstance(a, onnx.TensorProto) else np.asarray(a)


def _load_pb(path):
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def _load_vector_dir(d):
    model = onnx.load(os.path.join(d, "model.onnx"))
    assert len(model.graph.node) == 1, f"{d}: expected a single-node model"
    data = os.path.join(d, "test_data_set_0")

    def files(prefix):
        n = len(glob.glob(os.path.join(data, f"{prefix}_*.pb")))
        return [_load_pb(os.path.join(data, f"{prefix}_{i}.pb")) for i in range(n)]

    return model.graph.node[0], files("input"), files("output")


VECTOR_DIRS = _vector_dirs()
GENERATED = _generated_vectors()
VECTOR_PARAMS = [pytest.param(("dir", d), id=f"dir:{os.path.basename(d)}") for d in VECTOR_DIRS] + [
    pytest.param(("gen", name), id=f"gen:{name}") for name in sorted(GENERATED)
]


def node_attributes(node) -> dict:
    """The node's attributes as Python values, strings (and lists of strings) decoded."""

    def decode(v):
        if isinstance(v, bytes):
            return v.decode()
        return [decode(e) for e in v] if isinstance(v, list) else v

    return {a.name: decode(onnx.helper.get_attribute_value(a)) for a in node.attribute}


def run_onnx_node_with_oracle(node, inputs):
    """Evaluate an ONNX LSTM/GRU/RNN node with the oracle.

    inputs: arrays of the node's non-empty inputs, in order. Returns {output slot name: array}
    for Y, Y_h (and Y_c), in the node's own layout. Raises pytest.skip for unsupported features.
    """
    op = node.op_type
    attrs = node_attributes(node)
    direction = attrs.get("direction", "forward")
    D = 2 if direction == "bidirectional" else 1
    layout = attrs.get("layout", 0)

    if "clip" in attrs:
        pytest.skip("feature not supported by the oracle: clip (cell clipping)")
    if attrs.get("input_forget", 0):
        pytest.skip("feature not supported by the oracle: input_forget (coupled input/forget gates)")
    if "activation_alpha" in attrs or "activation_beta" in attrs:
        pytest.skip("feature not supported by the oracle: activation_alpha/activation_beta")
    acts = [a.lower() for a in attrs.get("activations", DEFAULT_ACTIVATIONS[op] * D)]
    per_dir = len(DEFAULT_ACTIVATIONS[op])
    acts = [acts[d * per_dir : (d + 1) * per_dir] for d in range(D)]
    for a in acts:
        if a != DEFAULT_ACTIVATIONS[op] and not (op == "RNN" and a == ["relu"]):
            pytest.skip(f"feature not supported by the oracle: activations={attrs['activations']}")

    named = {}  # ONNX slot name -> array; inputs hold only the non-empty names, in order
    it = iter(inputs)
    for slot, name in zip(SLOTS[op], node.input, strict=False):
        if name:
            named[slot] = next(it)

    x = named["X"] if layout == 1 else np.swapaxes(named["X"], 0, 1)  # -> [B, T, I]
    B, T, _ = x.shape
    H = attrs.get("hidden_size", named["R"].shape[-1])

    def state(slot):  # -> [D, B, H] or None
        s = named.get(slot)
        return None if s is None else (np.swapaxes(s, 0, 1) if layout == 1 else s)

    h0, c0 = state("initial_h"), state("initial_c")
    lengths = named.get("sequence_lens")
    convert = {"LSTM": ref.lstm_from_onnx, "GRU": ref.gru_from_onnx, "RNN": ref.rnn_from_onnx}[op]
    ys, hs, cs = [], [], []
    for d in range(D):
        bias = named["B"][d] if "B" in named else None
        w = convert(named["W"][d], named["R"][d], bias)
        reverse = direction == "reverse" or d == 1
        h0_d = None if h0 is None else h0[d]
        if op == "LSTM":
            p = named["P"][d] if "P" in named else None
            c0_d = None if c0 is None else c0[d]
            y, h, c = ref.lstm_layer(x, *w, h0=h0_d, c0=c0_d, lengths=lengths, reverse=reverse, peephole=p)
            cs.append(c)
        elif op == "GRU":
            lbr = bool(attrs.get("linear_before_reset", 0))
            y, h = ref.gru_layer(x, *w, h0=h0_d, lengths=lengths, reverse=reverse, linear_before_reset=lbr)
        else:
            y, h = ref.rnn_layer(x, *w, h0=h0_d, lengths=lengths, reverse=reverse, nonlinearity=acts[d][0])
        assert h.shape == (B, H)
        ys.append(y)
        hs.append(h)

    y = np.stack(ys)  # [D, B, T, H]
    result = {
        "Y": y.transpose(2, 0, 1, 3) if layout == 0 else y.transpose(1, 2, 0, 3),  # [T,D,B,H] / [B,T,D,H]
        "Y_h": np.stack(hs) if layout == 0 else np.stack(hs, axis=1),  # [D,B,H] / [B,D,H]
    }
    if op == "LSTM":
        result["Y_c"] = np.stack(cs) if layout == 0 else np.stack(cs, axis=1)
    return result


def test_onnx_vectors_found():
    """Fail (not skip) when no official vectors can be found at all: silence is not a pass."""
    print(
        f"\nONNX {onnx.__version__}: {len(VECTOR_DIRS)} vector dirs under {_onnx_node_data_dir()}, "
        f"{len(GENERATED)} generated vectors ({', '.join(sorted(GENERATED))})"
    )
    assert VECTOR_DIRS or GENERATED, (
        f"no LSTM/GRU/RNN test vectors found in onnx {onnx.__version__} "
        f"(neither {_onnx_node_data_dir()}/{{{','.join(VECTOR_GLOBS)}}} nor onnx.backend.test.case.node)"
    )
    found_ops = {node.op_type for node, _, _ in GENERATED.values()} | {
        onnx.load(os.path.join(d, "model.onnx")).graph.node[0].op_type for d in VECTOR_DIRS
    }
    assert found_ops == set(RNN_OPS), f"vectors found only for {sorted(found_ops)}"


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_onnx_vector(vector):
    kind, key = vector
    node, inputs, expected = _load_vector_dir(key) if kind == "dir" else GENERATED[key]
    # The vectors are float32; the oracle runs in float64 so the error is the vector's own rounding.
    inputs = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in inputs]
    got = run_onnx_node_with_oracle(node, inputs)
    out_names = [slot for slot, name in zip(OUT_SLOTS[node.op_type], node.output, strict=False) if name]
    assert len(out_names) == len(expected)
    errs = {}
    for slot, want in zip(out_names, expected, strict=True):
        assert got[slot].shape == want.shape, f"{slot}: shape {got[slot].shape} != expected {want.shape}"
        errs[slot] = _max_err(got[slot], want)
    attrs = node_attributes(node)
    print(
        f"\n[onnx {os.path.basename(str(key))} {attrs}] max abs err "
        + ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
    )
    assert max(errs.values()) <= ONNX_TOL


# ============================================================================================
# 3. Against onnxruntime's kernels, random weights (pins the gate orders the vectors cannot)
# ============================================================================================

ORT_CASES = {
    "lstm": ("LSTM", {}),
    "lstm_peephole": ("LSTM", {}),
    "gru_lbr0": ("GRU", {"linear_before_reset": 0}),
    "gru_lbr1": ("GRU", {"linear_before_reset": 1}),
    "rnn_tanh": ("RNN", {}),
    "rnn_relu": ("RNN", {"activations": ["Relu"]}),
}


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("case", list(ORT_CASES))
def test_against_onnxruntime(case, direction):
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper

    op, attrs = ORT_CASES[case]
    attrs = dict(attrs)
    D = 2 if direction == "bidirectional" else 1
    if "activations" in attrs:
        attrs["activations"] = attrs["activations"] * D
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    T, B, I, H = 9, 4, 3, 5
    rng = np.random.default_rng(7)

    def rand(*shape, scale=0.6):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    arrays = {
        "X": rand(T, B, I, scale=1.0),  # layout 0 (ORT does not implement layout=1)
        "W": rand(D, G * H, I),
        "R": rand(D, G * H, H),
        "B": rand(D, 2 * G * H),
        "sequence_lens": np.array([9, 1, 4, 6], dtype=np.int32),
        "initial_h": rand(D, B, H),
    }
    if op == "LSTM":
        arrays["initial_c"] = rand(D, B, H)
        if case == "lstm_peephole":
            arrays["P"] = rand(D, 3 * H)
    names = [s if s in arrays else "" for s in SLOTS[op]]
    while names and not names[-1]:
        names.pop()
    outputs = OUT_SLOTS[op]
    node = helper.make_node(op, names, outputs, hidden_size=H, direction=direction, **attrs)
    graph = helper.make_graph(
        [node],
        f"{case}_{direction}",
        [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in arrays.items()
        ],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip(outputs, session.run(None, arrays), strict=True))

    inputs = [arrays[n].astype(np.float64) if arrays[n].dtype.kind == "f" else arrays[n] for n in names if n]
    got = run_onnx_node_with_oracle(node, inputs)
    errs = {k: _max_err(got[k], want[k]) for k in outputs}
    print(f"\n[onnxruntime {case} {direction}] max abs err " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= ONNX_TOL


# ============================================================================================
# 4. Converters and import hygiene
# ============================================================================================


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnx_converters_roundtrip(cell):
    G, H, I = ref.GATES[cell], 3, 2
    rng = np.random.default_rng(0)
    W, R, B = rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)), rng.standard_normal(2 * G * H)
    from_onnx = getattr(ref, f"{cell}_from_onnx")
    to_onnx = getattr(ref, f"{cell}_to_onnx")
    w_ih, w_hh, b_ih, b_hh = from_onnx(W, R, B)
    for a, b in zip(to_onnx(w_ih, w_hh, b_ih, b_hh), (W, R, B), strict=True):
        np.testing.assert_array_equal(a, b)
    # Block bookkeeping: torch's second LSTM block (forget) is ONNX's third; GRU's r and z swap.
    if cell == "lstm":
        np.testing.assert_array_equal(w_ih[H : 2 * H], W[2 * H : 3 * H])
        np.testing.assert_array_equal(b_hh[3 * H :], B[4 * H + H : 4 * H + 2 * H])
    if cell == "gru":
        np.testing.assert_array_equal(w_hh[:H], R[H : 2 * H])
    zeros = from_onnx(W, R, None)
    assert not zeros[2].any() and not zeros[3].any()


def test_reference_does_not_import_torch_or_onnx():
    code = (
        "import sys; import toolkit.export.oracle; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime')); "
        "print('heavy modules loaded:', bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    print(proc.stdout.strip(), proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
