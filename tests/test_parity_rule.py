"""The parity rule on hand-made numbers: budget, margin and the reason a case fails."""

from __future__ import annotations

import numpy as np

from toolkit.export import parity

RULE = parity.FP32


def case(got, want, noise):
    return parity.compare("c", "model.onnx", "torch-fp64", "cpu", {}, np.asarray(got), np.asarray(want), noise, RULE)


def test_budget_is_factor_times_noise_plus_a_floor_of_ulps_of_the_scale():
    c = case([5.0 + 1e-6], [5.0], noise=2e-7)
    budget = 8 * 2e-7 + 16 * 2.0**-23 * 5.0
    print(f"error {c.max_abs:.3e}, budget {c.budget:.3e} (expected {budget:.3e}), margin {c.margin:.3f}")
    assert np.isclose(c.budget, budget) and np.isclose(c.margin, c.max_abs / budget)
    assert c.passed and c.reason == ""


def test_an_error_above_budget_says_both_numbers():
    c = case([5.0 + 1e-4], [5.0], noise=2e-7)
    print(c.reason)
    assert not c.passed and c.margin > 1 and c.reason == f"error {c.max_abs:.2e} > budget {c.budget:.2e}"


def test_float32_overflow_is_named_as_such():
    c = case([np.inf], [1e59], noise=np.inf)  # a ReLU RNN whose state grows past float32 on long inputs
    print(c.reason)
    assert not c.passed and "float32 overflows" in c.reason and "1e+59" in c.reason


def test_a_non_finite_or_misshapen_onnx_output_is_named():
    for got in ([np.nan], [1.0, 2.0]):
        c = case(got, [1.0], noise=1e-7)
        assert not c.passed and c.reason.startswith("ONNX Runtime's output is not finite"), c.reason


def test_perturbed_weights_move_learned_weights_by_about_one_ulp_and_leave_statistics():
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal(10_000).astype(np.float32),
        "feature_mean": np.full(3, 5000.0, np.float32),
        "target_std": np.full(1, 0.1, np.float32),
        "steps": np.arange(3),
    }
    moved = parity.perturbed_weights(weights, rng)
    ulps = np.abs(moved["w"].view(np.int32).astype(np.int64) - weights["w"].view(np.int32))
    print(f"weights moved: {np.mean(ulps > 0):.2f} of them, by at most {ulps.max()} ulp")
    # 2 ulp: a weight just above a power of two moved down into the finer binade below it
    assert ulps.max() <= 2 and 0.2 < np.mean(ulps > 0) < 1.0
    for k in ("feature_mean", "target_std", "steps"):
        assert np.array_equal(moved[k], weights[k])
