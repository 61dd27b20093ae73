"""Reduced-precision bundles: the certified fp32 graphs converted, held to a precision's budget,
and judged by what users care about, the task metric.

- int8 (CPU): ONNX Runtime's dynamic quantization (`quantize_dynamic`, 7-bit weights per output
  channel so that CPUs without VNNI compute the same, activations quantized per call): each ONNX
  `LSTM` becomes `DynamicQuantizeLSTM`, the heads' MatMuls `MatMulInteger`. The cell state stays
  float32. ONNX Runtime has no integer kernel for `GRU` or `RNN`, so those cells are refused with
  the measurement that says why.
- fp16 (CUDA): every weight and operator in float16 behind float32 inputs and outputs
  (`onnxconverter_common.float16`, keep_io_types): callers, and a stream's carried state, stay
  float32. ONNX Runtime's CPU provider has no float16 recurrent kernels, so it is CUDA only.
- bf16 (CPU, GRU and RNN): the fp32 graphs, run by OpenVINO's CPU plugin at bfloat16 inference
  precision where the CPU has AVX512-BF16 or AMX (toolkit.runtime.openvino). For LSTM, int8 is
  faster, so bf16 is refused there.

The certificate of a reduced bundle is the fp32 one (`toolkit.export.parity`) with the precision's
`Rule`: the noise runs are the reference computed the way that precision computes, by an
independent implementation (int8: torch's dynamic int8; bf16: torch bfloat16 on the CPU; fp16:
torch float16 on CUDA), and the budget is a few times their error. It adds a `MetricCheck`: the
task metric of the fp32 graphs and of the reduced ones side by side on labelled data (the run's
validation data, or `--eval-data`), refused when the reduced bundle loses more than `max_drop`.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from toolkit.core import tasks
from toolkit.core.data import SequenceDataset
from toolkit.core.errors import RnnkitError
from toolkit.core.metrics import metric_mode
from toolkit.export import parity
from toolkit.runtime.engine import in_length_order, run_full
from toolkit.runtime.infer import metrics_of, sequences_of
from toolkit.runtime.openvino import bf16_works

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
    "weights, activations quantized per call; weights as trained and moved by up to half a step of the 7-bit grid "
    "int8 bundles store them on)",
)
# fp16 and bf16 compute from weights, inputs and state rounded to their format, and a short case
# compares a handful of values, each a sample of that rounding: the noise runs' sample can fall
# far below the bundle's. bf16's "batch 1 length 1" case (one output) once erred 4.07e-03 at scale
# 0.85 against torch bfloat16 runs that happened to err 3.97e-04: margin 1.28 under a floor of 16
# float32 ulps. Their floor is one ulp of their own format (0.8% of the scale for bf16; budgets of
# long cases are ~6%). Measured margins and a swapped-gate graph caught: README, "Reduced precision".
FP16 = parity.Rule(
    precision="fp16",
    floor_ulps=1.0,
    eps=2.0**-10,  # float16 machine epsilon
    noise_dtype="float16",
    move=2.0**-10,
    noise="largest error against the reference of the float16 runs of the same case on CUDA (torch, as "
    "trained and with every weight moved by about one float16 ulp)",
)
BF16 = parity.Rule(
    precision="bf16",
    floor_ulps=1.0,
    eps=2.0**-7,  # bfloat16 machine epsilon
    noise_dtype="bfloat16",
    move=2.0**-7,
    noise="largest error against the reference of the bfloat16 runs of the same case (torch on the CPU, as "
    "trained and with every weight moved by about one bfloat16 ulp)",
)
RULES = {"fp32": parity.FP32, "int8": INT8, "fp16": FP16, "bf16": BF16}

NO_INTEGER_KERNEL = (
    "int8 needs ONNX Runtime's integer LSTM kernel (DynamicQuantizeLSTM); it has none for {cell}, whose "
    "quantized bundle would keep the recurrence in float32 and was measured no faster (README, 'Reduced "
    "precision'). Export {cell} at bf16 (OpenVINO, CPUs with AVX512-BF16 or AMX) or fp16 (CUDA)"
)
LSTM_BF16 = (
    "bf16 is offered for GRU and RNN, which have no int8 kernel: for an LSTM, int8 ran faster than OpenVINO's "
    "bf16 (README, 'Reduced precision'); export it with --precision int8"
)
BIDIRECTIONAL_BF16 = (
    "bf16 runs on OpenVINO, whose bidirectional recurrent operators start the backward direction of a padded "
    "sequence at the padded end, not at its own last step (OpenVINO 2026.4, in fp32 too: outputs off by up "
    "to 0.55 on a padded batch, caught by the certificate); bf16 is offered for unidirectional GRU and RNN. "
    "Export this model at fp32"
)
NO_BF16 = "bf16 bundles run on OpenVINO's CPU plugin where the CPU computes in bfloat16 (AVX512-BF16 or AMX): {why}"
# Models normalised per sequence (toolkit.core.normalize): int8 keeps the normalisation nodes in
# float32 and is certified; these two would compute it at their own precision.
SEQUENCE_REFUSED = {
    "fp16": "fp16 is not offered for models normalised per sequence: the graph sums each sequence's squared "
    "deviations over time in the input's units, which overflows float16 (max 65504) for raw features that vary by "
    "about 10 over a few hundred steps, and no GPU has yet certified the alternative (the normalisation kept in "
    "float32). Export this model at fp32 (or int8 for an LSTM)",
    "bf16": "bf16 is not offered for models normalised per sequence: OpenVINO computes the normalisation's sums "
    "over time in bfloat16 and does not keep a constant series at exactly 0 (OpenVINO 2026.4: a GRU's outputs 0.15 "
    "off on a constant series at 4e5, where torch's bfloat16 runs were 0.001 off; the certificate's budget 0.03). "
    "Export this model at fp32",
}
NO_CUDA = (
    "fp16 bundles run and are certified on CUDA only (ONNX Runtime's CPU provider has no float16 recurrent "
    "kernels), and this machine has no working CUDA provider; export fp16 where a GPU is, or int8 for CPUs"
)


class PrecisionError(RnnkitError, ValueError):
    """A precision this model or machine cannot be exported at (says why and what to use)."""

    exit_code = 2


def check(
    precision: str, cell: str, task: str, cuda: bool, bidirectional: bool = False, normalize: str = "dataset"
) -> parity.Rule:
    """The certificate's rule for `precision`, or a PrecisionError saying why this model or
    machine cannot have it."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "fp32" and tasks.of(task).predicts == "sequences":
        raise PrecisionError(
            f"{precision} is not certified for seq2seq bundles yet (their certificate compares decoded outputs "
            "token for token); export seq2seq at fp32"
        )
    if precision == "int8" and cell != "lstm":
        raise PrecisionError(NO_INTEGER_KERNEL.format(cell=cell.upper()))
    if precision == "bf16" and cell == "lstm":
        raise PrecisionError(LSTM_BF16)
    if precision == "bf16" and bidirectional:
        raise PrecisionError(BIDIRECTIONAL_BF16)
    if precision in SEQUENCE_REFUSED and normalize == "sequence":
        raise PrecisionError(SEQUENCE_REFUSED[precision])
    # What the model cannot have is said before what this machine lacks, so the answer for a
    # model is the same on every CPU.
    if precision == "bf16" and not bf16_works():
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise PrecisionError(NO_BF16.format(why="pip install 'rnnkit[openvino]'")) from None
        raise PrecisionError(NO_BF16.format(why="this CPU does not (OpenVINO reports no BF16); use fp32")) from None
    if precision == "fp16" and not cuda:
        raise PrecisionError(NO_CUDA)
    return RULES[precision]


def convert(blob: bytes, precision: str) -> bytes:
    """The fp32 graph `blob` at `precision` (inputs and outputs keep their names and dtypes)."""
    if precision in ("fp32", "bf16"):  # bf16: OpenVINO computes the fp32 graph in bfloat16
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
            # 7-bit weights (reduce_range): on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade
            # Lake) ONNX Runtime's u8s8 kernels add pairs of products in int16, which saturates
            # with 8-bit weights. The demo's JapaneseVowels int8 graph under an AVX2-only CPU
            # (qemu -cpu Haswell) was 1.11 off fp32 where it is 0.068 off with VNNI; with 7-bit
            # weights both CPUs give the same bits (0.047 off). tests/test_precision_cpus.py.
            quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
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
    """Score model.onnx at fp32 (ONNX Runtime, CPU) and at the reduced precision (on `provider`) on
    the labelled `data` (a dataset of toolkit.core.data) with the task's metrics, and compare on
    the metric the run selected on."""
    fp32 = _scores(fp32_blob, "CPUExecutionProvider", config, output_spec, data)
    reduced = _scores(reduced_blob, provider, config, output_spec, data)
    metric = config.train.monitor
    if metric not in fp32:
        metric = tasks.default_monitor(config.task, output_spec.labels)[0]
    direction = metric_mode(metric)
    limit = default_max_drop(metric, fp32[metric]) if max_drop is None else max_drop
    count = len(data.examples) if isinstance(data, SequenceDataset) else 1
    return MetricCheck(metric, direction, data_name, count, fp32[metric], reduced[metric], limit, fp32, reduced)


def _scores(blob: bytes, provider: str, config, output_spec, data, batch_size: int = 64) -> dict:
    """The task metrics of model.onnx on a labelled dataset, batched as `rnnkit infer` batches."""
    session = parity.session(blob, provider)
    inputs, targets = sequences_of(data)
    per_step = tasks.of(config.task).outputs_per_step(output_spec.per_step)
    name = session.get_inputs()[0].name  # tokens or features: the graphs this export just built
    outputs = in_length_order(inputs, batch_size, lambda batch: run_full(session, name, batch, per_step))
    return metrics_of(config, output_spec, outputs, targets)
