"""The parity certificate: torch (float64) against ONNX Runtime on fresh random inputs.

Cases (DESIGN.md, "Parity"): batch sizes 1, 2, 7, 32; lengths 1, 2, 17 and a long one; padded
batches of mixed lengths; the user's sample file when given; and, for unidirectional models, a
long stream fed through step.onnx in chunks of 1, 3, 64 and random sizes against model.onnx on
the whole sequence. Only real positions are compared (padding is undefined by contract).

Errors: `max_abs` = max |onnx - reference|; `max_rel` = max_abs / max |reference| (relative to
the output's scale, which stays meaningful where single values are near zero).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnxruntime as ort

FP32_TOLERANCE = 1e-5
LONG = 512
STREAM = 1000


@dataclass
class Case:
    name: str
    graph: str  # "model.onnx" or "step.onnx"
    reference: str  # "torch-fp64", or "model.onnx" (step graph, padding), or step.onnx in one call (verify)
    provider: str
    shapes: dict
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool = field(init=False)

    def __post_init__(self):
        self.passed = bool(self.max_abs <= self.tolerance)


@dataclass
class Report:
    seed: int
    tolerance: float
    cases: list[Case]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.passed]

    def summary(self) -> dict:
        worst = max(self.cases, key=lambda c: c.max_abs, default=None)
        return {
            "passed": self.passed,
            "cases": len(self.cases),
            "failed": len(self.failures),
            "max_abs": worst.max_abs if worst else None,
            "worst_case": worst.name if worst else None,
            "tolerance": self.tolerance,
            "seed": self.seed,
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "cases": [asdict(c) for c in self.cases]}


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
    return max_abs, max_abs / max(float(np.abs(want).max()), 1e-12)


class InputMaker:
    """Fresh random inputs the model can take: token ids past the specials, or features drawn
    around the training distribution (mean + std * N(0, 1))."""

    def __init__(self, manifest_input: dict, rng: np.random.Generator):
        self.spec, self.rng = manifest_input, rng

    def __call__(self, batch: int, steps: int) -> np.ndarray:
        if self.spec["kind"] == "tokens":
            return self.rng.integers(1, self.spec["vocab_size"], size=(batch, steps), dtype=np.int64)
        mean = np.asarray(self.spec["mean"], dtype=np.float64)
        std = np.asarray(self.spec["std"], dtype=np.float64)
        x = mean + std * self.rng.standard_normal((batch, steps, len(mean)))
        return x.astype(np.float32)


def fresh_seed(seed: int | None) -> int:
    """The given seed, or a fresh one (recorded in the report so a run can be repeated)."""
    return int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed


def run_full(session: ort.InferenceSession, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One call of model.onnx; its first input is `tokens` or `features`."""
    return session.run(None, {session.get_inputs()[0].name: x, "lengths": lengths})[0]


def pad(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    shape = (len(sequences), int(lengths.max()), *sequences[0].shape[1:])
    out = np.zeros(shape, dtype=sequences[0].dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, lengths


def real_positions(y: np.ndarray, lengths: np.ndarray, per_step: bool) -> np.ndarray:
    """Concatenate the real steps of each sequence (per-step outputs) or return y as is."""
    if not per_step:
        return y
    return np.concatenate([y[b, : int(n)] for b, n in enumerate(lengths)], axis=0)


def session(path_or_bytes, provider: str, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if provider == "CUDAExecutionProvider":
        # TF32 off: with it, fp32 LSTMs drift past the 1e-5 budget (FIELD-NOTES).
        providers = [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
    s = ort.InferenceSession(path_or_bytes, options, providers=providers)
    if s.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} was asked for but the session runs on {s.get_providers()[0]}")
    return s


def full_cases(run_full, reference, make_inputs, per_step: bool, provider: str, sample=None) -> list[Case]:
    """model.onnx against the reference on the standard batch/length grid (and a sample)."""
    grid = [("batch 1 length 1", [1]), ("batch 2 length 2", [2, 2]), ("batch 7 length 17", [17] * 7)]
    grid += [("batch 32 lengths 1..40 padded", list(np.random.default_rng(0).integers(1, 41, size=32)))]
    grid += [
        (f"batch 2 length {LONG}", [LONG, LONG]),
        (f"batch 7 padded lengths 1..{LONG}", [1, 2, 17, 64, 130, 300, LONG]),
    ]
    cases = []
    for name, lengths in grid:
        seqs = [make_inputs(1, int(n))[0] for n in lengths]
        x, lens = pad(seqs)
        cases.append(_compare(name, run_full, reference, x, lens, per_step, provider))
    if sample is not None:
        x, lens = sample
        cases.append(_compare(f"sample file ({len(lens)} sequences)", run_full, reference, x, lens, per_step, provider))
    return cases


def _compare(name, run_full, reference, x, lens, per_step, provider) -> Case:
    got = run_full(x, lens)
    want = reference(x, lens)
    max_abs, max_rel = errors(real_positions(got, lens, per_step), real_positions(want, lens, per_step))
    shapes = {"inputs": list(x.shape), "lengths": [int(lens.min()), int(lens.max())]}
    return Case(name, "model.onnx", "torch-fp64", provider, shapes, max_abs, max_rel, FP32_TOLERANCE)


def stream_cases(
    run_full: Callable,
    run_step: Callable,
    reference_state: Callable,
    make_inputs,
    per_step: bool,
    provider: str,
    rng: np.random.Generator,
) -> list[Case]:
    """step.onnx fed a long stream in chunks (state carried) against model.onnx on all of it.

    Per-step tasks compare every step. Per-sequence tasks (classify, regress) compare the step
    graph's output at step t with model.onnx on the prefix of length t, for several t in one
    padded batch. The final state is compared with torch's (float64)."""
    x = make_inputs(2, STREAM)
    if per_step:
        want = run_full(x, np.array([STREAM, STREAM], dtype=np.int64))
        positions = None
    else:
        prefixes = [1, 2, 3, 64, 65, 500, STREAM - 1, STREAM]
        batch = np.concatenate([x] * len(prefixes), axis=0)
        lens = np.repeat(np.array(prefixes, dtype=np.int64), x.shape[0])
        want = run_full(batch, lens)  # [len(prefixes) * 2, K], row p*2 + b
        positions = lens - 1
    state_want = reference_state(x)
    sizes = {"chunks of 1": [1], "chunks of 3": [3], "chunks of 64": [64]}
    sizes["random chunks 1..100"] = list(rng.integers(1, 101, size=STREAM))
    cases = []
    for name, pattern in sizes.items():
        outputs, state, start, i = [], None, 0, 0
        while start < STREAM:
            size = int(pattern[i % len(pattern)])
            y, state = run_step(x[:, start : start + size], state)
            outputs.append(y)
            start, i = start + size, i + 1
        got = np.concatenate(outputs, axis=1)
        if positions is not None:
            rows = np.tile(np.arange(x.shape[0]), len(positions) // x.shape[0])
            got = got[rows, positions]
        shapes = {"inputs": list(x.shape), "chunks": i}
        max_abs, max_rel = errors(got, want)
        label = f"stream of {STREAM}, {name}"
        cases.append(Case(label, "step.onnx", "model.onnx", provider, shapes, max_abs, max_rel, FP32_TOLERANCE))
        for key, value in state_want.items():
            # An LSTM's cell state is unbounded (|c| reaches tens over a long stream) and fp32
            # carries ~7 significant digits, so the state budget scales with its magnitude.
            tolerance = FP32_TOLERANCE * max(1.0, float(np.abs(value).max()))
            s_abs, s_rel = errors(state[key], value)
            shapes_s = {**shapes, "state": key, "shape": list(value.shape)}
            cases.append(
                Case(f"{label}, final {key}", "step.onnx", "torch-fp64", provider, shapes_s, s_abs, s_rel, tolerance)
            )
    return cases


def padding_case(run_full, make_inputs, per_step: bool, provider: str) -> Case:
    """model.onnx on a padded batch of mixed lengths against each sequence run alone: padding
    must not change any real position's output, in either direction."""
    lengths = [1, 2, 17, 3, 64, 9, 130]
    seqs = [make_inputs(1, n)[0] for n in lengths]
    x, lens = pad(seqs)
    batched = run_full(x, lens)
    alone = [run_full(s[None], np.array([len(s)], dtype=np.int64))[0] for s in seqs]
    got = [batched[b, : len(s)] if per_step else batched[b] for b, s in enumerate(seqs)]
    worst_abs, worst_rel = 0.0, 0.0
    for g, a in zip(got, alone, strict=True):
        e_abs, e_rel = errors(g, a)
        worst_abs, worst_rel = max(worst_abs, e_abs), max(worst_rel, e_rel)
    shapes = {"inputs": list(x.shape), "lengths": lengths}
    return Case(
        "padded batch vs one at a time",
        "model.onnx",
        "model.onnx",
        provider,
        shapes,
        worst_abs,
        worst_rel,
        FP32_TOLERANCE,
    )


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
