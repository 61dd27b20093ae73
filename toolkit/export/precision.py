"""Reduced-precision bundles: the certified fp32 graphs converted, held to a precision's budget,
and judged by what users care about, the task metric.

- int8 (CPU): ONNX Runtime's dynamic quantization (`quantize_dynamic`, int8 weights per output
  channel, activations quantized per call): each ONNX `LSTM` becomes `DynamicQuantizeLSTM`, the
  heads' MatMuls `MatMulInteger`. The cell state stays float32. ONNX Runtime has no integer
  kernel for `GRU` or `RNN`, so those cells are refused with the measurement that says why.
- fp16 (CUDA): every weight and operator in float16 behind float32 inputs and outputs
  (`onnxconverter_common.float16`, keep_io_types): callers, and a stream's carried state, stay
  float32. ONNX Runtime's CPU provider has no float16 recurrent kernels, so it is CUDA only.
- bf16: measured on an AVX-512 BF16 CPU and not adopted (see `REFUSED`).

The certificate of a reduced bundle is the fp32 one (`toolkit.export.parity`) with the precision's
`Rule`: the noise runs are the reference computed the way that precision stores it (int8: every
weight tensor on its int8 grid; fp16: the model in float16 on CUDA), and the budget is a few times
their error. It adds a `MetricCheck`: the task metric of the fp32 graphs and of the reduced ones
side by side on labelled data (the run's validation data, or `--eval-data`), refused when the
reduced bundle loses more than `max_drop`.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from toolkit.core import tasks
from toolkit.core.data import SequenceDataset
from toolkit.core.data.batching import pad
from toolkit.core.errors import RnnkitError
from toolkit.core.metrics import metric_mode
from toolkit.export import parity
from toolkit.runtime.infer import metrics_of

PRECISIONS = ("fp32", "int8", "fp16", "bf16")

# The noise runs are torch's own dynamic int8 (int8 weights, activations quantized per call: the
# scheme of ONNX Runtime's int8 graphs, implemented independently), with the weights as trained
# and moved by up to half an int8 step first. The factor and floor are fp32's (a floor of one
# int8 step of max|output| would let a regression centred at 5000 err by 39). Measured margins:
# README, "Reduced precision".
INT8 = parity.Rule(
    precision="int8",
    factor=8.0,
    floor_ulps=16.0,
    eps=parity.FP32_EPS,
    noise_dtype="qint8",
    weights="int8 grid",
    noise="largest error against the reference of torch's dynamic int8 runs of the same case (int8 "
    "weights, activations quantized per call; weights as trained and moved by up to half an int8 step)",
)
FP16 = parity.Rule(
    precision="fp16",
    factor=8.0,
    floor_ulps=4.0,
    eps=2.0**-10,
    noise_dtype="float16",
    noise="largest error against the reference of the float16 runs of the same case on CUDA (torch, as "
    "trained and with every weight moved by about one float16 ulp)",
)
RULES = {"fp32": parity.FP32, "int8": INT8, "fp16": FP16}

REFUSED = {
    "bf16": (
        "bf16 is not offered: on this CPU (AVX-512 BF16) OpenVINO's bf16 ran the biLSTM 2x256 benchmark no "
        "faster than ONNX Runtime int8 (README, 'Choosing a precision') with outputs moved as much, and ONNX "
        "Runtime has no bf16 recurrent kernels; use int8 on CPU or fp16 on CUDA"
    ),
}
NO_INTEGER_KERNEL = (
    "int8 needs ONNX Runtime's integer LSTM kernel (DynamicQuantizeLSTM); it has none for {cell}, whose "
    "quantized bundle would keep the recurrence in float32 and was measured no faster (README, 'Choosing "
    "a precision'). Export {cell} at fp32, or fp16 on CUDA; or train an LSTM for int8"
)
NO_CUDA = (
    "fp16 bundles run and are certified on CUDA only (ONNX Runtime's CPU provider has no float16 recurrent "
    "kernels), and this machine has no working CUDA provider; export fp16 where a GPU is, or int8 for CPUs"
)


class PrecisionError(RnnkitError, ValueError):
    """A precision this model or machine cannot be exported at (says why and what to use)."""

    exit_code = 2


def check(precision: str, cell: str, task: str, cuda: bool) -> parity.Rule:
    """The certificate's rule for `precision`, or a PrecisionError saying why this model or
    machine cannot have it."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision in REFUSED:
        raise PrecisionError(REFUSED[precision])
    if precision != "fp32" and tasks.of(task).predicts == "sequences":
        raise PrecisionError(
            f"{precision} is not certified for seq2seq bundles yet (their certificate compares decoded outputs "
            "token for token); export seq2seq at fp32"
        )
    if precision == "int8" and cell != "lstm":
        raise PrecisionError(NO_INTEGER_KERNEL.format(cell=cell.upper()))
    if precision == "fp16" and not cuda:
        raise PrecisionError(NO_CUDA)
    return RULES[precision]


def convert(blob: bytes, precision: str) -> bytes:
    """The fp32 graph `blob` at `precision` (inputs and outputs keep their names and dtypes)."""
    if precision == "fp32":
        return blob
    model = onnx.load_model_from_string(blob)
    if precision == "fp16":
        from onnxconverter_common import float16

        return float16.convert_float_to_float16(model, keep_io_types=True).SerializeToString()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static (calibrated) quantization
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "int8.onnx")
            quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=True)
            return out.read_bytes()
    finally:
        root.setLevel(level)


def default_max_drop(metric: str, fp32_value: float) -> float:
    """How much of the task metric a reduced bundle may lose unless the user says: half a point of
    accuracy or F1, 0.01 nats of cross-entropy per token, 1% of the fp32 RMSE."""
    if metric == "rmse":
        return 0.01 * abs(fp32_value)
    return 0.01 if metric in ("cross_entropy", "loss") else 0.005


@dataclass
class MetricCheck:
    """The task metric of the fp32 graphs and of the reduced ones on the same labelled data."""

    metric: str
    direction: str  # "max" | "min": which way is better
    data: str  # what was scored, in words
    sequences: int
    fp32: float
    reduced: float
    max_drop: float
    fp32_metrics: dict
    reduced_metrics: dict
    drop: float = field(init=False)  # how much worse the reduced bundle is (negative: better)
    passed: bool = field(init=False)

    def __post_init__(self):
        self.drop = self.fp32 - self.reduced if self.direction == "max" else self.reduced - self.fp32
        self.passed = math.isfinite(self.drop) and self.drop <= self.max_drop

    @property
    def reason(self) -> str:
        if self.passed:
            return ""
        return (
            f"{self.metric} {self.fp32:.4f} at fp32 but {self.reduced:.4f} reduced: a drop of {self.drop:.4f} > "
            f"--max-metric-drop {self.max_drop:.4f}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


def metric_check(
    fp32_blob: bytes,
    reduced_blob: bytes,
    provider: str,
    config,
    output_spec,
    data,
    data_name: str,
    max_drop: float | None = None,
) -> MetricCheck:
    """Score model.onnx at fp32 and at the reduced precision on the labelled `data` (a dataset of
    toolkit.core.data) with the task's metrics, and compare on the metric the run selected on."""
    fp32 = _scores(fp32_blob, provider, config, output_spec, data)
    reduced = _scores(reduced_blob, provider, config, output_spec, data)
    metric = config.train.monitor
    if metric not in fp32:
        metric = tasks.default_monitor(config.task, output_spec.labels)[0]
    direction = metric_mode(metric)
    limit = default_max_drop(metric, fp32[metric]) if max_drop is None else max_drop
    count = len(data.examples) if isinstance(data, SequenceDataset) else 1
    return MetricCheck(metric, direction, data_name, count, fp32[metric], reduced[metric], limit, fp32, reduced)


def _scores(blob: bytes, provider: str, config, output_spec, data, batch_size: int = 64) -> dict:
    session = parity.session(blob, provider)
    if isinstance(data, SequenceDataset):
        inputs, targets = [e.inputs for e in data.examples], [e.target for e in data.examples]
    else:  # a stream (text, csv series): one long sequence
        inputs, targets = [data.inputs], [data.targets]
    per_step = tasks.of(config.task).outputs_per_step(output_spec.per_step)
    outputs: list = [None] * len(inputs)
    order = np.argsort([len(x) for x in inputs], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        x, lengths = pad([inputs[i] for i in rows])
        y = parity.run_full(session, x, lengths)
        for k, i in enumerate(rows):
            outputs[i] = y[k, : lengths[k]] if per_step else y[k]
    return metrics_of(config, output_spec, outputs, targets)
