"""Model library: every cell x direction x task builds and runs; padding never changes a real
position's output (both directions); residual/merge/dropout behave; sampling obeys its knobs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.helpers import CELLS, VOCAB, make_model
from toolkit.core.sampling import sample_next


def random_inputs(tokens, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    if tokens:
        x = torch.randint(4, len(VOCAB), (B, T), generator=g)
        for b, n in enumerate(lengths):
            x[b, n:] = 0
    else:
        x = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
        for b, n in enumerate(lengths):
            x[b, n:] = 123.0  # padding garbage: must not leak into real positions
    return x, torch.tensor(lengths)


TASK_CASES = [("classify", False), ("tag", False), ("lm", False), ("regress", False), ("regress", True)]


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize(("task", "per_step"), TASK_CASES, ids=[f"{t}{'-step' if p else ''}" for t, p in TASK_CASES])
def test_padded_batch_equals_one_at_a_time(cell, nonlinearity, bidirectional, task, per_step):
    tokens = task != "regress"
    model = make_model(task, cell, nonlinearity, bidirectional, tokens=tokens, per_step=per_step)
    lengths = [5, 1, 9, 3]
    x, lens = random_inputs(tokens, lengths)
    with torch.no_grad():
        batched, _ = model(x, lens)
        worst = 0.0
        for b, n in enumerate(lengths):
            alone, _ = model(x[b : b + 1, :n], torch.tensor([n]))
            got = batched[b, :n] if model.per_step else batched[b]
            worst = max(worst, (got - alone[0]).abs().max().item())
    print(f"{cell}/{nonlinearity} bi={bidirectional} {task}: max |padded - alone| = {worst:.2e}")
    assert worst <= 1e-12


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
def test_state_carry_equals_full_sequence(cell, nonlinearity):
    """Unidirectional models can be run a chunk at a time with the state carried."""
    model = make_model("tag", cell, nonlinearity)
    x, _ = random_inputs(True, [40, 40])
    with torch.no_grad():
        full, _ = model(x)
        state, parts = None, []
        for start, stop in itertools.pairwise([0, 1, 4, 17, 30, 40]):
            y, state = model(x[:, start:stop], state=state)
            parts.append(y)
    err = (torch.cat(parts, dim=1) - full).abs().max().item()
    print(f"{cell}: chunked vs full max abs err {err:.2e}")
    assert err <= 1e-12


def test_output_shapes_and_merge():
    x, lens = random_inputs(True, [4, 6])
    assert make_model("classify")(x, lens)[0].shape == (2, 3)
    assert make_model("tag", bidirectional=True)(x, lens)[0].shape == (2, 6, 3)
    assert make_model("lm")(x, lens)[0].shape == (2, 6, len(VOCAB))
    bi_sum = make_model("tag", bidirectional=True, merge="sum")
    assert bi_sum.encoder.output_size == 8 and bi_sum.encoder.layers[1].input_size == 8
    bi_cat = make_model("tag", bidirectional=True)
    assert bi_cat.encoder.output_size == 16 and bi_cat.encoder.layers[1].input_size == 16
    xf, lf = random_inputs(False, [4, 6])
    assert make_model("regress", tokens=False)(xf, lf)[0].shape == (2, 2)
    assert make_model("regress", tokens=False, per_step=True)(xf, lf)[0].shape == (2, 6, 2)


def test_residual_adds_layer_input():
    """With residual on, layer 2's output is its recurrent output plus its input."""
    model = make_model("tag", residual=True)
    x, lens = random_inputs(True, [6, 6])
    enc = model.encoder
    with torch.no_grad():
        h1, _ = enc.layers[0](model.embedding(x))
        h2, _ = enc.layers[1](h1)
        expected = model.head(h2 + h1)
        got, _ = model(x, lens)
    assert torch.allclose(got, expected, atol=1e-12)


def test_regress_outputs_are_in_raw_units():
    model = make_model("regress", tokens=False)
    xf, lf = random_inputs(False, [4, 6])
    with torch.no_grad():
        raw, _ = model(xf, lf)
        z = model.normalised(raw)
        assert torch.allclose(z * model.target_std + model.target_mean, raw)


def test_dropout_only_between_layers_and_only_in_training():
    model = make_model("tag", dropout=0.5)
    x, lens = random_inputs(True, [6, 6])
    with torch.no_grad():
        a, _ = model(x, lens)
        b, _ = model(x, lens)
        assert torch.equal(a, b)  # eval: deterministic
        model.train()
        c, _ = model(x, lens)
    assert not torch.equal(a, c)


def test_sampling_knobs():
    logits = np.array([0.0, 3.0, 1.0, 2.0])
    rng = np.random.default_rng(0)
    assert sample_next(logits, rng, temperature=0) == 1
    draws = {sample_next(logits, rng, top_k=2) for _ in range(200)}
    assert draws == {1, 3}
    # top_p: token 1 alone has p = e^3 / sum ~ 0.64, with token 3 ~ 0.88 -> p=0.8 keeps two
    draws = {sample_next(logits, rng, top_p=0.8) for _ in range(200)}
    assert draws == {1, 3}
    counts = np.bincount([sample_next(logits, rng, temperature=100.0) for _ in range(4000)], minlength=4)
    print("temperature 100 counts:", counts)
    assert counts.min() > 800  # near uniform
    assert sample_next(logits, rng, temperature=0, exclude=(1,)) == 3
    draws = {sample_next(logits, rng, top_k=2, exclude=(1, 0)) for _ in range(200)}
    assert draws == {2, 3}
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, rng, top_k=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unidirectional_padded_batches_train_unpacked_with_the_packed_gradients(cell):
    """A unidirectional model skips packing for padded batches (its state is not needed there):
    the loss and every gradient equal those of the packed run, in float64."""
    model = make_model("tag", cell, "tanh", False, tokens=True, per_step=True)
    x, lens = random_inputs(True, [5, 1, 9, 3])
    targets = torch.randint(0, 3, x.shape, generator=torch.Generator().manual_seed(1))
    targets[x == 0] = -100  # padding: ignored by the loss

    def loss_and_grads(packed: bool):
        model.zero_grad()
        outputs, _, _ = model.encoder(model.embedding(x), lens, final_state=packed)
        logits = model.head(outputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    (a, ga), (b, gb) = loss_and_grads(True), loss_and_grads(False)
    worst = max((ga[k] - gb[k]).abs().max().item() for k in ga)
    print(f"{cell}: loss packed {a:.12f} unpacked {b:.12f}; max gradient difference {worst:.2e}")
    assert abs(a - b) <= 1e-12 and worst <= 1e-12
    _, state = model(x, lens)
    assert state is None  # not meaningful for an unpacked padded batch
