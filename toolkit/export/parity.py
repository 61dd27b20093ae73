"""The parity certificate: ONNX Runtime against a float64 reference on fresh random inputs, each
case held to a budget derived from what float32 itself does on that model and that input.

Cases (README, "Parity budget"): batch sizes 1, 2, 7, 32; lengths 1, 2, 17 and a long one; padded
batches of mixed lengths; the user's sample file when given; and, for models that stream, a
long stream fed through step.onnx in chunks of 1, 3, 64 and random sizes, outputs and final
state. Models normalised per sequence add constant series (every feature, or some, constant)
in a padded batch, and their inputs get an offset and scale of their own per sequence.
Only real positions are compared (padding is undefined by contract).

The budget (`Rule`). One fixed tolerance cannot be right: float32 carries about 7 digits, so a
logit of 5 after 512 recurrent steps is only known to ~1e-5 and a regression value of 5,000 to
~5e-4, while a wrong export can hide below a loose constant on small outputs. So every case
measures float32's own error on that very input: the reference runs again in float32, once as
is and twice with every weight moved by about one unit in the last place (what rounding the
stored weights does), and the largest error of those runs against the float64 reference is the
case's `noise`. ONNX Runtime passes when its error is at most

    budget = factor * noise + floor_ulps * eps * scale        (scale = max |reference|)

i.e. a few times what an independent float32 computation gets wrong, plus a floor of a few
units in the last place of the output's scale for cases where rounding happens to cancel. The
factor is 8, not 2, because ONNX Runtime's CPU kernels are a less exact float32 than torch's
(its Tanh errs by about 3x torch's on average) and a case's error is a sample: over 72 trained
models its error reached 6.1 times torch's float32 error on the same case (README). Each
case records scale, noise, budget and `margin` = error / budget (pass: margin <= 1), so a
reader sees how close it came. Reduced-precision bundles use the same rule with their own,
larger constants (a bf16 bundle's step.onnx runs at fp32 on ONNX Runtime and is held to fp32's).

Errors: `max_abs` = max |onnx - reference|; `max_rel` = max_abs / max |reference|.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from toolkit.core.data.batching import pad
from toolkit.core.streaming import frames_of
from toolkit.export import oracle
from toolkit.runtime.openvino import PROVIDER as OPENVINO
from toolkit.runtime.openvino import OpenVINOSession
from toolkit.runtime.providers import make_session

LONG = 512
STREAM = 1000
FP32_EPS = 2.0**-23  # float32 machine epsilon (one unit in the last place at 1.0)
FP32_MAX = float(np.finfo(np.float32).max)
WEIGHT_LEVELS = 64.0  # int8 bundles' weights: 7-bit symmetric, -64..64 (ONNX Runtime's reduce_range)


@dataclass(frozen=True)
class Rule:
    """How large an error a case may have (see the module docstring). `noise` says what the noise
    runs are: the reference computed in the bundle's precision (`noise_dtype`), its weights
    moved the way that precision stores them (`weights`: "ulp", each weight times 1 + u*move;
    "int8 grid", each tensor rounded to 255 levels and moved by up to half a level)."""

    precision: str = "fp32"
    factor: float = 8.0
    floor_ulps: float = 16.0
    eps: float = FP32_EPS
    noise_runs: int = 3  # the reference as is, and with its weights moved (twice)
    noise_dtype: str = "float32"
    weights: str = "ulp"
    move: float = FP32_EPS  # "ulp": each weight times 1 + u * move (one ulp of the noise runs' dtype)
    noise: str = (
        "largest error against the reference of the float32 runs of the same case "
        "(as is, and with every weight moved by about one ulp)"
    )

    def budget(self, noise: float, scale: float) -> float:
        return self.factor * noise + self.floor_ulps * self.eps * scale

    def to_dict(self) -> dict:
        return {**asdict(self), "budget": "factor * noise + floor_ulps * eps * max|reference|"}


FP32 = Rule()


@dataclass
class Case:
    name: str
    graph: str  # "model.onnx" or "step.onnx"
    reference: str  # "torch-fp64"; torch-free verify: "NumPy oracle fp64"; the padding case: "model.onnx"
    provider: str
    shapes: dict
    max_abs: float
    max_rel: float
    scale: float  # max |reference|
    noise: float  # float32's own error on this case (largest of the noise runs)
    budget: float
    margin: float = field(init=False)  # max_abs / budget: pass when <= 1
    passed: bool = field(init=False)
    reason: str = field(init=False)  # why it failed, in words ("" when it passed)

    def __post_init__(self):
        finite = bool(np.isfinite(self.max_abs) and np.isfinite(self.budget))
        self.margin = float(self.max_abs / self.budget) if finite and self.budget > 0 else float("inf")
        self.passed = finite and self.max_abs <= self.budget
        self.reason = "" if self.passed else self._why()

    def _why(self) -> str:
        if not (np.isfinite(self.noise) and self.scale <= FP32_MAX):
            return (
                f"float32 overflows on this input (the float64 reference reaches {self.scale:.3g}; "
                f"float32 ends at {FP32_MAX:.3g}): the model itself cannot run it in float32"
            )
        if not np.isfinite(self.max_abs):
            return "ONNX Runtime's output is not finite or not of the reference's shape"
        return f"error {self.max_abs:.2e} > budget {self.budget:.2e}"


@dataclass
class Report:
    seed: int
    rule: Rule
    cases: list[Case]
    #: Reduced precision: the task metric at fp32 and at the bundle's precision
    #: (toolkit.export.precision.MetricCheck); None for fp32 bundles.
    metric: object | None = None

    @property
    def passed(self) -> bool:
        metric_ok = self.metric is None or self.metric.passed
        return bool(self.cases) and all(c.passed for c in self.cases) and metric_ok

    @property
    def reasons(self) -> list[str]:
        """Why it failed, one line per failed case (and the metric check)."""
        why = [f"{c.name}: {c.reason}" for c in self.failures]
        if self.metric is not None and not self.metric.passed:
            why.append(f"task metric: {self.metric.reason}")
        return why

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.passed]

    def summary(self) -> dict:
        worst = max(self.cases, key=lambda c: c.margin, default=None)
        return {
            "passed": self.passed,
            "cases": len(self.cases),
            "failed": len(self.failures),
            "worst_case": worst.name if worst else None,
            "worst_margin": worst.margin if worst else None,
            "worst_reason": worst.reason if worst else None,
            "max_abs": max((c.max_abs for c in self.cases), default=None),
            "precision": self.rule.precision,
            "seed": self.seed,
        } | ({"metric": self._metric_summary()} if self.metric is not None else {})

    def _metric_summary(self) -> dict:
        m = self.metric
        keys = ("metric", "fp32", "reduced", "drop", "max_drop", "passed", "data")
        return {k: getattr(m, k) for k in keys}

    def to_dict(self) -> dict:
        d = {"summary": self.summary(), "rule": self.rule.to_dict(), "cases": [asdict(c) for c in self.cases]}
        return d | ({"metric": self.metric.to_dict()} if self.metric is not None else {})


def errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf"), float("inf")
    if got.size == 0:
        return 0.0, 0.0
    diff = np.abs(got - want)
    if not np.isfinite(diff).all():
        return float("inf"), float("inf")
    max_abs = float(diff.max())
    return max_abs, max_abs / max(float(np.abs(want).max()), 1e-300)


def noise(runs: list[np.ndarray], want: np.ndarray) -> float:
    """float32's own error on a case: the largest error of the noise runs against the reference."""
    return max((errors(r, want)[0] for r in runs), default=0.0)


def compare(
    name: str,
    graph: str,
    reference: str,
    provider: str,
    shapes: dict,
    got: np.ndarray,
    want: np.ndarray,
    case_noise: float,
    rule: Rule,
) -> Case:
    max_abs, max_rel = errors(got, want)
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.abs(want).max()) if want.size and np.isfinite(want).all() else float("inf")
    budget = rule.budget(case_noise, scale)
    return Case(name, graph, reference, provider, shapes, max_abs, max_rel, scale, case_noise, budget)


class Reference:
    """What ONNX Runtime's outputs are compared with. `outputs(x, lengths)` -> (the reference's
    outputs, the noise runs' outputs); `state(x)` -> (final state per name, one such dict per
    noise run) after the whole of x from zeros. Implemented with torch in the exporter
    (`TorchReference`) and, without torch, by the NumPy oracle (`OracleReference`)."""

    name = "reference"

    def outputs(self, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        raise NotImplementedError

    def state(self, x: np.ndarray) -> tuple[dict, list[dict]]:
        raise NotImplementedError


# Data statistics, not learned weights: torch and the graph apply them as stored, so moving
# them would measure the model's sensitivity to its data, not float32's rounding (an ulp of a
# feature mean of 5000 is 5e-4, which is 0.5% of a feature spread of 0.1).
STATISTICS = frozenset({"feature_mean", "feature_std", "target_mean", "target_std"})


def perturbed_weights(weights: dict[str, np.ndarray], rng: np.random.Generator, eps: float = FP32_EPS) -> dict:
    """Every float weight (but the data `STATISTICS`) times (1 + u * eps), u uniform in [-1, 1]:
    moved by about one unit in the last place, as rounding the stored weights (or folding
    normalisation into them) does."""
    out = {}
    for k, v in weights.items():
        if np.issubdtype(v.dtype, np.floating) and k not in STATISTICS:
            v = (v.astype(np.float64) * (1.0 + rng.uniform(-1.0, 1.0, size=v.shape) * eps)).astype(v.dtype)
        out[k] = v
    return out


def int8_grid_weights(weights: dict[str, np.ndarray], rng: np.random.Generator | None) -> dict:
    """Every float weight matrix (torch's layout, one output unit per row; biases, which int8
    graphs keep in float32, and the data `STATISTICS` excluded) moved by a uniform fraction of up
    to half a step of the grid int8 bundles store it on (`precision.convert`): 7-bit symmetric,
    step = max|w| / 64 per row (per output channel), per table for embeddings. A rounding of
    unknown sign. `rng` None: rounded to the grid."""
    out = {}
    for k, v in weights.items():
        if np.issubdtype(v.dtype, np.floating) and k not in STATISTICS and v.ndim >= 2 and v.size:
            w = v.astype(np.float64)
            top = np.abs(w).max() if "embedding" in k else np.abs(w).max(axis=-1, keepdims=True)
            step = np.where(top > 0, top / WEIGHT_LEVELS, 1.0)
            w = np.round(w / step) * step if rng is None else w + rng.uniform(-0.5, 0.5, size=v.shape) * step
            v = w.astype(v.dtype)
        out[k] = v
    return out


def noise_weights(weights: dict[str, np.ndarray], rng: np.random.Generator, rule: Rule) -> list[dict]:
    """The weights of the `rule.noise_runs` noise runs: as stored (the run's own arithmetic
    rounds them), then moved by about one unit of the precision (an ulp, or half an int8 step)."""
    if rule.weights == "int8 grid":
        return [weights] + [int8_grid_weights(weights, rng) for _ in range(rule.noise_runs - 1)]
    return [weights] + [perturbed_weights(weights, rng, rule.move) for _ in range(rule.noise_runs - 1)]


class OracleReference(Reference):
    """Torch-free reference for `rnnkit verify` without a checkpoint: the NumPy oracle in float64
    (`oracle.GraphModel`, the textbook equations) with the weights read back from model.onnx. The
    noise runs are the oracle in float32, as stored and with every weight moved by about one ulp:
    independent of the graphs under test, as torch's float32 runs are for the certificate. It
    proves the graphs compute the equations with their own weights (the certificate with the
    checkpoint proves those weights are the trained ones)."""

    name = "NumPy oracle fp64"

    def __init__(self, blobs: dict[str, bytes], manifest: dict, rng: np.random.Generator, rule: Rule = FP32):
        graph = onnx.load_model_from_string(blobs["model.onnx"])
        weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
        tokens = manifest["input"]["kind"] == "tokens"
        model, per_step = manifest["model"], manifest["output"]["per_step"]
        eps = manifest["input"].get("normalize_eps")  # features normalised per sequence
        copies = noise_weights(weights, rng, rule)
        try:
            self.model = oracle.GraphModel(weights, model, tokens, per_step, sequence_eps=eps)
            self.fp32 = [oracle.GraphModel(w, model, tokens, per_step, np.float32, eps) for w in copies]
        except KeyError as e:
            raise ValueError(f"model.onnx is not a graph rnnkit writes: {e.args[0]}") from None

    def outputs(self, x, lengths):
        return self.model.outputs(x, lengths), [m.outputs(x, lengths) for m in self.fp32]

    def state(self, x):
        return self.model.final_state(x), [m.final_state(x) for m in self.fp32]


class InputMaker:
    """Fresh random inputs the model can take: token ids past the specials, or features drawn
    around the training distribution (mean + std * N(0, 1)); for a model normalised per
    sequence, each sequence also moved by its own offset (N(0, 3) stds) and scaled by its own
    factor (e^N(0, 1)), what that normalisation takes away."""

    def __init__(self, manifest_input: dict, rng: np.random.Generator):
        self.spec, self.rng = manifest_input, rng
        self.per_sequence = manifest_input.get("normalize") == "sequence"

    def __call__(self, batch: int, steps: int) -> np.ndarray:
        if self.spec["kind"] == "tokens":
            return self.rng.integers(1, self.spec["vocab_size"], size=(batch, steps), dtype=np.int64)
        mean = np.asarray(self.spec["mean"], dtype=np.float64)
        std = np.asarray(self.spec["std"], dtype=np.float64)
        z = self.rng.standard_normal((batch, steps, len(mean)))
        if self.per_sequence:
            z = 3.0 * self.rng.standard_normal((batch, 1, len(mean))) + z * np.exp(
                self.rng.standard_normal((batch, 1, len(mean)))
            )
        return (mean + std * z).astype(np.float32)


def fresh_seed(seed: int | None) -> int:
    """The given seed, or a fresh one (recorded in the report so a run can be repeated)."""
    return int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed


def run_full(session: ort.InferenceSession, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One call of model.onnx; its first input is `tokens` or `features`."""
    return session.run(None, {session.get_inputs()[0].name: x, "lengths": lengths})[0]


def real_positions(y: np.ndarray, lengths: np.ndarray, per_step: bool) -> np.ndarray:
    """Concatenate the real steps of each sequence (per-step outputs) or return y as is."""
    if not per_step:
        return y
    return np.concatenate([y[b, : int(n)] for b, n in enumerate(lengths)], axis=0)


def session(path_or_bytes, provider: str, threads: int | None = None) -> ort.InferenceSession:
    """A session on exactly `provider` (CPUExecutionProvider or CUDAExecutionProvider), TF32 off:
    with it an fp32 LSTM drifts 3e-5 from float64 (measured on an H100), which is TF32's precision, not
    float32's, and the noise runs (float32 on the CPU) do not have it."""
    if provider == OPENVINO:  # bf16 bundles: OpenVINO's CPU plugin at bf16 (toolkit.runtime.openvino)
        return OpenVINOSession(path_or_bytes, threads)
    device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    return make_session(path_or_bytes, device, threads, tf32=False)


def full_cases(
    run_full: Callable,
    reference: Reference,
    make_inputs,
    per_step: bool,
    provider: str,
    rule: Rule = FP32,
    sample=None,
) -> list[Case]:
    """model.onnx against the reference on the standard batch/length grid (and a sample)."""
    grid = [("batch 1 length 1", [1]), ("batch 2 length 2", [2, 2]), ("batch 7 length 17", [17] * 7)]
    grid += [("batch 32 lengths 1..40 padded", list(np.random.default_rng(0).integers(1, 41, size=32)))]
    grid += [
        (f"batch 2 length {LONG}", [LONG, LONG]),
        (f"batch 7 padded lengths 1..{LONG}", [1, 2, 17, 64, 130, 300, LONG]),
    ]
    inputs = [(name, pad([make_inputs(1, int(n))[0] for n in lengths])) for name, lengths in grid]
    if sample is not None:
        inputs.append((f"sample file ({len(sample[1])} sequences)", sample))
    cases = []
    for name, (x, lens) in inputs:
        want, runs = reference.outputs(x, lens)
        got, want, *runs = (real_positions(y, lens, per_step) for y in (run_full(x, lens), want, *runs))
        shapes = {"inputs": list(x.shape), "lengths": [int(lens.min()), int(lens.max())]}
        case_noise = noise(runs, want)
        cases.append(compare(name, "model.onnx", reference.name, provider, shapes, got, want, case_noise, rule))
    return cases


def stream_cases(
    run_step: Callable,
    reference: Reference,
    make_inputs,
    per_step: bool,
    provider: str,
    rng: np.random.Generator,
    rule: Rule = FP32,
    frame_stack: int = 1,
) -> list[Case]:
    """step.onnx fed a long stream in chunks (state carried) against the reference on all of it.

    Per-step tasks compare every step. Per-sequence tasks (classify, regress) compare the step
    graph's output at step t with the reference on the prefix of length t, for several t in one
    padded batch. The final state after the stream is compared too.

    A frame-stacked model (K steps per frame) is fed as a stream runs it: chunks of whole frames
    (1, 3, 64 and random 1..100 frames), then the last, partial frame alone (the stream is K // 2
    steps short of whole frames), which the graph fills as model.onnx fills a sequence's last
    frame. Its output f is compared with the reference on the prefix of min((f + 1) K, length)
    steps, and the state after the whole frames with the reference's after those steps."""
    k = frame_stack
    length = STREAM if k == 1 else frames_of(STREAM, k) * k - k // 2
    whole = length // k * k  # the steps of whole frames: what a stream's state has taken in
    x = make_inputs(2, length)
    if per_step:
        want, runs = reference.outputs(x, np.array([length, length], dtype=np.int64))
        positions = None
    else:
        count = frames_of(length, k)  # outputs of the stream: one per frame
        frames = sorted({1, 2, 3, 64, 65, 500, count - 1, count} & set(range(1, count + 1)))
        prefixes = [min(f * k, length) for f in frames]
        batch = np.concatenate([x] * len(prefixes), axis=0)
        lens = np.repeat(np.array(prefixes, dtype=np.int64), x.shape[0])
        want, runs = reference.outputs(batch, lens)  # [len(prefixes) * 2, K], row p*2 + b
        positions = np.repeat(np.array(frames) - 1, x.shape[0])
    output_noise = noise(runs, want)
    state_want, state_runs = reference.state(x[:, :whole])
    sizes = {"chunks of 1": [1], "chunks of 3": [3], "chunks of 64": [64]}
    sizes["random chunks 1..100"] = list(rng.integers(1, 101, size=STREAM))
    unit = "" if k == 1 else f" frames of {k}"
    cases = []
    for name, pattern in sizes.items():
        outputs, state, start, i = [], None, 0, 0
        while start < whole:
            size = int(pattern[i % len(pattern)]) * k
            y, state = run_step(x[:, start : min(start + size, whole)], state)
            outputs.append(y)
            start, i = min(start + size, whole), i + 1
        if whole < length:  # the partial last frame: outputs only, the state stays after whole frames
            outputs.append(run_step(x[:, whole:], state)[0])
            i += 1
        got = np.concatenate(outputs, axis=1)
        if positions is not None:
            rows = np.tile(np.arange(x.shape[0]), len(positions) // x.shape[0])
            got = got[rows, positions]
        shapes = {"inputs": list(x.shape), "chunks": i}
        label = f"stream of {length}, {name}{unit}"
        cases.append(compare(label, "step.onnx", reference.name, provider, shapes, got, want, output_noise, rule))
        for key, value in state_want.items():
            # An LSTM's cell state is unbounded (|c| reaches tens over a long stream): its scale,
            # and so its floor, is its own.
            state_noise = noise([r[key] for r in state_runs], value)
            shapes_s = {**shapes, "state": key, "shape": list(value.shape)}
            name = f"{label}, final {key}"
            cases.append(
                compare(name, "step.onnx", reference.name, provider, shapes_s, state[key], value, state_noise, rule)
            )
    return cases


def all_cases(
    blobs: dict[str, bytes],
    reference: Reference,
    make_inputs,
    per_step: bool,
    provider: str,
    rng: np.random.Generator,
    rule: Rule = FP32,
    sample=None,
    frame_stack: int = 1,
    streams: tuple[Reference, Rule] | None = None,
) -> list[Case]:
    """The certificate's cases on one provider: model.onnx on the grid (and a sample), padding,
    and step.onnx on streams when the bundle has one (fed whole frames of `frame_stack` steps),
    against `streams` = (reference, rule) where those differ from the full graph's."""
    full = session(blobs["model.onnx"], provider)
    run = lambda x, lens: run_full(full, x, lens)  # noqa: E731
    cases = full_cases(run, reference, make_inputs, per_step, provider, rule, sample)
    cases.append(padding_case(run, reference, make_inputs, per_step, provider, rule))
    if getattr(make_inputs, "per_sequence", False):
        cases.append(constant_case(run, reference, make_inputs, per_step, provider, rule))
    if "step.onnx" in blobs:
        # bf16 bundles stream on ONNX Runtime at fp32 (toolkit.runtime.engine): certified where they run
        where = "CPUExecutionProvider" if provider == OPENVINO else provider
        step = session(blobs["step.onnx"], where)
        stepped = lambda c, s: run_step(step, c, s)  # noqa: E731
        stream_reference, stream_rule = streams or (reference, rule)
        cases += stream_cases(stepped, stream_reference, make_inputs, per_step, where, rng, stream_rule, frame_stack)
    return cases


def padding_case(run_full, reference: Reference, make_inputs, per_step: bool, provider: str, rule: Rule = FP32) -> Case:
    """model.onnx on a padded batch of mixed lengths against each sequence run alone: padding
    must not change any real position's output, in either direction. Two float32 runs of the
    graph may differ by rounding, so the budget is float32's noise on this batch."""
    lengths = [1, 2, 17, 3, 64, 9, 130]
    seqs = [make_inputs(1, n)[0] for n in lengths]
    x, lens = pad(seqs)
    batched = real_positions(run_full(x, lens), lens, per_step)
    alone = [run_full(s[None], np.array([len(s)], dtype=np.int64))[0] for s in seqs]
    alone = np.concatenate(alone, axis=0) if per_step else np.stack(alone)
    want, runs = reference.outputs(x, lens)
    want = real_positions(want, lens, per_step)
    case_noise = noise([real_positions(r, lens, per_step) for r in runs], want)
    shapes = {"inputs": list(x.shape), "lengths": lengths}
    name = "padded batch vs one at a time"
    return compare(name, "model.onnx", "model.onnx", provider, shapes, batched, alone, case_noise, rule)


def constant_case(run_full, reference: Reference, make_inputs, per_step: bool, provider: str, rule: Rule = FP32):
    """Features normalised per sequence: constant series (each one's normalised input is exactly
    0, never NaN) of lengths 1..130 padded together, one of them constant in its first feature
    only. Their values come from the model's inputs and include a large offset (1e4 stds)."""
    lengths = [1, 2, 17, 64, 130, 9]
    seqs = [np.repeat(make_inputs(1, 1)[0], n, axis=0) for n in lengths]
    std = np.asarray(make_inputs.spec["std"], dtype=np.float32)
    seqs[2] = seqs[2] + np.float32(1e4) * std  # far from the training data: still exactly 0
    seqs[-1][:, 1:] = make_inputs(1, lengths[-1])[0][:, 1:]  # the other features vary
    x, lens = pad(seqs)
    got = real_positions(run_full(x, lens), lens, per_step)
    want, runs = reference.outputs(x, lens)
    want, runs = real_positions(want, lens, per_step), [real_positions(r, lens, per_step) for r in runs]
    shapes = {"inputs": list(x.shape), "lengths": lengths}
    name = "constant series, padded (normalised per sequence)"
    return compare(name, "model.onnx", reference.name, provider, shapes, got, want, noise(runs, want), rule)


def run_step(session, chunk: np.ndarray, state: dict | None):
    """One call of step.onnx; zeros as the initial state (the manifest's documented start)."""
    feeds = {session.get_inputs()[0].name: chunk}
    for inp in session.get_inputs()[1:]:
        if state is not None:
            feeds[inp.name] = state[inp.name]
        else:
            layers, hidden = inp.shape[0], inp.shape[2]
            feeds[inp.name] = np.zeros((layers, chunk.shape[0], hidden), dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, feeds)
    new_state = {n.removesuffix("_next"): v for n, v in zip(names[1:], values[1:], strict=True)}
    return values[0], new_state
