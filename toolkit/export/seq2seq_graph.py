"""ONNX graphs of a trained Seq2SeqModel (toolkit.models.seq2seq), built node by node as
graph.py builds the others, from the same recurrent-layer pieces.

- `encoder.onnx` (`build_encoder_graph`): `tokens` int64 [batch, time], `lengths` int64 [batch]
  -> `memory` [batch, time, M] (every source step; padding beyond lengths), `keys` [batch, time,
  H] (the memory projected for the attention once per input, not once per step; attention
  models only), `mask` bool [batch, time] (the real source steps), and the decoder's initial
  state `h` (and `c`) [decoder layers, batch, H] through the bridge.
- `decoder_step.onnx` (`build_decoder_step_graph`): `previous` int64 [batch] (the last token;
  <bos> first), `h` (`c`), and with attention `memory`, `keys`, `mask` -> `logprobs` [batch, V]
  (log-softmax over the target vocabulary), `h_next` (`c_next`), and with attention `attention`
  [batch, time] (the weights over the source steps).

A row of the decoder's batch is one hypothesis: the search gathers the rows it keeps, of the
state and of memory/keys/mask alike (toolkit.core.search).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from toolkit.core.config import ModelConfig
from toolkit.core.data.types import InputSpec, OutputSpec
from toolkit.export.graph import DEFAULT_OPSET, _encoder, _GraphBuilder, _Plan

__all__ = ["build_decoder_step_graph", "build_encoder_graph", "decoder_state_names"]


def decoder_state_names(cfg: ModelConfig) -> list[str]:
    return ["h", "c"] if cfg.decoder().cell == "lstm" else ["h"]


def _plan(cfg: ModelConfig, vocab_size: int, opset: int) -> _Plan:
    return _Plan(cfg, "seq2seq", True, True, None, vocab_size, opset)


def _matrix(weights, name: str) -> np.ndarray:
    return np.asarray(weights[name], dtype=np.float64).T  # torch Linear: x W^T


def _linear(g: _GraphBuilder, x: str, weights, module: str, out: str) -> str:
    """torch.nn.Linear `module` on the last axis of x: x W^T (+ b)."""
    y = g.one("MatMul", [x, g.const(f"{module}.weight_t", _matrix(weights, f"{module}.weight"))], f"{out}.mm")
    if f"{module}.bias" not in weights:
        return g.one("Identity", [y], out)
    return g.one("Add", [y, g.const(f"{module}.bias", weights[f"{module}.bias"])], out)


def build_encoder_graph(
    weights: Mapping[str, np.ndarray], cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec, opset=None
) -> onnx.ModelProto:
    opset = opset or DEFAULT_OPSET
    dec = cfg.decoder()
    plan = _plan(cfg, len(output_spec.target_vocab), opset)
    g = _GraphBuilder()
    x = g.one("Gather", [g.const("source_embedding.weight", weights["source_embedding.weight"]), "tokens"], "embedded")
    x = g.one("Transpose", [x], "x_time_major", perm=[1, 0, 2])
    seq = g.one("Cast", ["lengths"], "sequence_lens", to=TensorProto.INT32)
    top, finals = _encoder(g, plan, weights, x, seq, None)
    memory = g.one("Transpose", [top], "memory", perm=[1, 0, 2])
    outputs = [_info("memory", ["batch", "time", cfg.output_size], "the encoder's output at every source step")]
    if cfg.attention != "none":
        _linear(g, memory, weights, "key", "keys")
        outputs.append(_info("keys", ["batch", "time", cfg.hidden_size], "the memory projected for the attention"))
    # mask[b, t] = t < lengths[b]
    shape = g.one("Shape", ["tokens"], "tokens_shape")
    time = g.one("Gather", [shape, g.ints("one_index", 1)], "time", axis=0)
    steps = g.one("Range", [g.ints("zero", 0), time, g.ints("one", 1)], "steps")
    column = g.one("Unsqueeze", ["lengths", g.ints("axis1", [1])], "lengths_column")
    g.one("Less", [steps, column], "mask")
    outputs.append(
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "time"], doc_string="real source steps")
    )
    names = decoder_state_names(cfg)
    if not cfg.bidirectional and dec.cell == cfg.cell and dec.num_layers == cfg.num_layers:  # copied: s_0 = h_T
        for k, n in enumerate(names):
            g.one("Concat", [f[k] for f in finals], n, axis=0)
    else:  # tanh(W [final h of every layer and direction] + b), one projection per state tensor
        parts = []
        for i, f in enumerate(finals):
            bdh = g.one("Transpose", [f[0]], f"bridge.layer{i}.bdh", perm=[1, 0, 2])
            parts.append(g.one("Reshape", [bdh, g.ints(f"bridge.layer{i}.shape", [0, -1])], f"bridge.layer{i}.flat"))
        summary = g.one("Concat", parts, "bridge.summary", axis=1) if len(parts) > 1 else parts[0]
        for k, n in enumerate(names):
            y = g.one("Tanh", [_linear(g, summary, weights, f"bridge.{k}", f"bridge.{k}.pre")], f"bridge.{k}.tanh")
            shape = g.ints(f"bridge.{k}.shape", [0, dec.num_layers, cfg.hidden_size])
            g.one("Transpose", [g.one("Reshape", [y, shape], f"bridge.{k}.blh")], n, perm=[1, 0, 2])
    state_dims = [dec.num_layers, "batch", cfg.hidden_size]
    outputs += [_info(n, state_dims, f"the decoder's initial {n}") for n in names]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"], doc_string="source token ids"),
        helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"], doc_string="real steps, 1..time"),
    ]
    return _finish(g, plan, "rnnkit_seq2seq_encoder", inputs, outputs, "rnnkit seq2seq encoder and bridge")


def build_decoder_step_graph(
    weights: Mapping[str, np.ndarray], cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec, opset=None
) -> onnx.ModelProto:
    opset = opset or DEFAULT_OPSET
    dec = cfg.decoder()
    vocab = len(output_spec.target_vocab)
    plan = _plan(dec, vocab, opset)
    g = _GraphBuilder()
    names = decoder_state_names(cfg)
    table = g.const("target_embedding.weight", weights["target_embedding.weight"])
    x = g.one("Gather", [table, "previous"], "embedded")
    x = g.one("Unsqueeze", [x, g.ints("axis0", [0])], "x_time_major")  # [1, B, E]
    top, finals = _encoder(g, plan, weights, x, "", names, module="decoder")
    s = g.one("Squeeze", [top, g.ints("time_axis", [0])], "s")  # [B, H]
    inputs = [helper.make_tensor_value_info("previous", TensorProto.INT64, ["batch"], doc_string="the last token")]
    state_dims = [dec.num_layers, "batch", cfg.hidden_size]
    inputs += [_info(n, state_dims, f"decoder {n} per layer") for n in names]
    outputs = []
    if cfg.attention != "none":
        if cfg.attention == "additive":
            q = g.one("Unsqueeze", [_linear(g, s, weights, "query", "query"), g.ints("axis1", [1])], "query_b1h")
            energy = g.one("Tanh", [g.one("Add", ["keys", q], "energy_in")], "energy")
            scores = _linear(g, energy, weights, "energy", "scores_bs1")  # [B, S, 1]
        else:
            column = g.one("Unsqueeze", [s, g.ints("axis2", [2])], "s_bh1")
            scores = g.one("MatMul", ["keys", column], "scores_bs1")
        scores = g.one("Squeeze", [scores, g.ints("axis2b", [2])], "scores")
        masked = g.one("Where", ["mask", scores, g.const("minus_inf", np.float32(-np.inf))], "scores_masked")
        weights_ = g.one("Softmax", [masked], "attention", axis=-1)
        row = g.one("Unsqueeze", [weights_, g.ints("axis1b", [1])], "attention_b1s")
        context = g.one("Squeeze", [g.one("MatMul", [row, "memory"], "context_b1m"), g.ints("axis1c", [1])], "context")
        both = g.one("Concat", [s, context], "s_context", axis=1)
        s = g.one("Tanh", [_linear(g, both, weights, "combine", "combine_pre")], "combined")
        inputs += [
            _info("memory", ["batch", "time", cfg.output_size], "encoder.onnx's memory rows of these hypotheses"),
            _info("keys", ["batch", "time", cfg.hidden_size], "encoder.onnx's keys rows of these hypotheses"),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "time"], doc_string="real source steps"),
        ]
    g.one("LogSoftmax", [_linear(g, s, weights, "head", "logits")], "logprobs", axis=-1)
    outputs.append(_info("logprobs", ["batch", vocab], "log P(next token) over the target vocabulary"))
    for k, n in enumerate(names):
        g.one("Concat", [f[k] for f in finals], f"{n}_next", axis=0)
        outputs.append(_info(f"{n}_next", state_dims, f"decoder {n} after this token"))
    if cfg.attention != "none":
        outputs.append(_info("attention", ["batch", "time"], "attention weights over the source steps"))
    return _finish(g, plan, "rnnkit_seq2seq_decoder_step", inputs, outputs, "rnnkit seq2seq decoder, one token")


def _info(name: str, dims: list, doc: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims, doc_string=doc)


def _finish(g: _GraphBuilder, plan: _Plan, name: str, inputs, outputs, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers, doc_string=doc)
    opsets = [helper.make_opsetid("", plan.opset)]
    model = helper.make_model(
        graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets), producer_name="rnnkit"
    )
    onnx.checker.check_model(model, full_check=True)
    return model
