"""The Triton variant of `step.onnx`: batch-first state and the sequence batcher's controls.

Triton's implicit state (onnxruntime backend) gives a model each sequence's state as one row of a
batched tensor whose *first* dimension is the batch; `state.dims` exclude it. The bundle's step
graph carries `h`/`c` as [L, batch, H] (what the ONNX recurrent operators take), so this variant
wraps the very same nodes and weights with Transposes:

    h [B, L, H] --Mul(1 - START)--> Transpose --> (step.onnx's nodes) --> Transpose --> new [B, L, H]
    h_next = Where(READY, new, h after the reset)

START (float 1 on a sequence's first request) zeroes the row's state, so a sequence starts from
zeros even where a server reuses a state buffer; READY (0 for an empty slot of the `direct`
strategy) keeps that row's state as it was. Inputs, outputs and names are otherwise those of
step.onnx: the chunk (`tokens` [B, T] | `features` [B, T, F]) in, `logits` | `values` out.
The transposes and masks move values without arithmetic on them, so the variant is certified to
give step.onnx's numbers (repository.certify).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

START, READY = "START", "READY"
_INNER = "__step_"  # prefix of step.onnx's own state tensors inside the variant


def batch_first_step(step: onnx.ModelProto, state: list[dict]) -> onnx.ModelProto:
    """The Triton variant of the step graph `step` whose state entries are the manifest's `state`."""
    names = {s["name"]: s["output"] for s in state}
    graph = step.graph
    rename = {n: _INNER + n for n in (*names, *names.values())}
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(i, i) for i in node.input]
        copy.output[:] = [rename.get(o, o) for o in node.output]
        nodes.append(copy)

    pre, post = [], []
    pre.append(helper.make_node("Unsqueeze", [START, "__axis2"], ["__start3"]))  # [B, 1, 1]
    pre.append(helper.make_node("Sub", ["__one", "__start3"], ["__keep3"]))
    pre.append(helper.make_node("Unsqueeze", [READY, "__axis2"], ["__ready3"]))
    pre.append(helper.make_node("Cast", ["__ready3"], ["__ready_bool"], to=TensorProto.BOOL))
    for h, h_next in names.items():
        pre.append(helper.make_node("Mul", [h, "__keep3"], [f"__{h}_reset"]))
        pre.append(helper.make_node("Transpose", [f"__{h}_reset"], [rename[h]], perm=[1, 0, 2]))
        post.append(helper.make_node("Transpose", [rename[h_next]], [f"__{h_next}_new"], perm=[1, 0, 2]))
        post.append(helper.make_node("Where", ["__ready_bool", f"__{h_next}_new", f"__{h}_reset"], [h_next]))

    dims = {s["name"]: s["shape"] for s in state}
    inputs, outputs = [], []
    for value in graph.input:
        if value.name in names:
            layers, _, hidden = dims[value.name]
            inputs.append(_info(value.name, ["batch", layers, hidden], f"{value.name} per sequence, batch first"))
        else:
            inputs.append(value)
    for control, doc in ((START, "1 on a sequence's first request (resets its state)"), (READY, "1 for a real row")):
        inputs.append(_info(control, ["batch", 1], doc))
    for value in graph.output:
        if value.name in names.values():
            state_name = next(h for h, out in names.items() if out == value.name)
            layers, _, hidden = dims[state_name]
            outputs.append(_info(value.name, ["batch", layers, hidden], f"{state_name} after the chunk, batch first"))
        else:
            outputs.append(value)

    constants = [
        helper.make_tensor("__one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("__axis2", TensorProto.INT64, [1], [2]),
    ]
    variant = helper.make_graph(
        pre + nodes + post,
        graph.name + "_triton",
        inputs,
        outputs,
        initializer=[*graph.initializer, *constants],
        doc_string=(graph.doc_string + " Triton variant: state batch first, START/READY controls.").strip(),
    )
    model = helper.make_model(variant, opset_imports=step.opset_import, ir_version=step.ir_version)
    model.producer_name, model.producer_version = step.producer_name, step.producer_version
    onnx.checker.check_model(model, full_check=True)
    return model


def _info(name: str, dims: list, doc: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims, doc_string=doc)
