"""Padding, length buckets and truncated-BPTT windows."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.core.data import (
    PAD_TARGET,
    Example,
    SequenceDataset,
    StreamDataset,
    bucket_batches,
    pad_batch,
    stream_windows,
)


def token_dataset(lengths: list[int], target: str = "classify") -> SequenceDataset:
    rng = np.random.default_rng(0)
    examples = []
    for i, n in enumerate(lengths):
        inputs = rng.integers(4, 50, size=n).astype(np.int64)
        if target == "classify":
            y = i % 3
        elif target == "tag":
            y = rng.integers(0, 5, size=n).astype(np.int64)
        else:
            y = None
        examples.append(Example(inputs=inputs, target=y, source=f"f:{i + 1}"))
    return SequenceDataset(examples)


def test_pad_batch_tokens_and_tags():
    data = token_dataset([3, 1, 2], target="tag")
    batch = pad_batch(data.examples, [0, 1, 2])
    assert batch.inputs.dtype == np.int64 and batch.inputs.shape == (3, 3)
    assert batch.lengths.dtype == np.int64 and batch.lengths.tolist() == [3, 1, 2]
    assert batch.inputs[1, 1:].tolist() == [0, 0]  # <pad>
    assert batch.targets.dtype == np.int64 and batch.targets[1, 1:].tolist() == [PAD_TARGET, PAD_TARGET]
    for b, ex in enumerate(data.examples):
        n = len(ex)
        assert batch.inputs[b, :n].tolist() == ex.inputs.tolist()
        assert batch.targets[b, :n].tolist() == ex.target.tolist()
    assert batch.index.dtype == np.int64 and batch.index.tolist() == [0, 1, 2]


def test_pad_batch_classify_and_missing_targets():
    data = token_dataset([2, 4])
    batch = pad_batch(data.examples, np.array([5, 7]))
    assert batch.targets.dtype == np.int64 and batch.targets.tolist() == [0, 1]
    unlabeled = token_dataset([2, 4], target="none")
    assert pad_batch(unlabeled.examples, [0, 1]).targets is None
    mixed = [data.examples[0], unlabeled.examples[1]]
    assert pad_batch(mixed, [0, 1]).targets is None


def test_pad_batch_features_and_regress():
    a = Example(inputs=np.ones((2, 3), np.float32), target=np.array([[1.0], [2.0]], np.float32))
    b = Example(inputs=np.full((4, 3), 2.0, np.float32), target=np.array([[3.0], [4.0], [5.0], [6.0]], np.float32))
    batch = pad_batch([a, b], [0, 1])
    assert batch.inputs.dtype == np.float32 and batch.inputs.shape == (2, 4, 3)
    assert batch.inputs[0, 2:].sum() == 0
    assert batch.targets.shape == (2, 4, 1) and batch.targets.dtype == np.float32
    assert batch.targets[0, :, 0].tolist() == [1.0, 2.0, 0.0, 0.0]
    c = Example(inputs=np.ones((1, 3), np.float32), target=np.array([1.0, 2.0], np.float32))
    d = Example(inputs=np.ones((2, 3), np.float32), target=np.array([3.0, 4.0], np.float32))
    per_sequence = pad_batch([c, d], [0, 1])
    assert per_sequence.targets.shape == (2, 2) and per_sequence.targets.tolist() == [[1, 2], [3, 4]]


def check_cover(data: SequenceDataset, batches, batch_size: int) -> None:
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(len(data)))  # every example exactly once
    for batch in batches:
        assert 1 <= len(batch.index) <= batch_size
        for row, i in enumerate(batch.index):
            ex = data.examples[i]
            n = len(ex)
            assert batch.lengths[row] == n
            assert batch.inputs[row, :n].tolist() == ex.inputs.tolist()
            assert (batch.inputs[row, n:] == 0).all()
            assert batch.targets[row] == ex.target


def test_bucket_batches_training():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 60, size=203).tolist()
    data = token_dataset(lengths)
    batches = bucket_batches(data, 8, np.random.default_rng(7), pool=5)
    check_cover(data, batches, 8)
    assert len(batches) == 26
    # buckets: padding is small compared with random batches
    waste = sum(int(b.lengths.max()) * len(b.lengths) - int(b.lengths.sum()) for b in batches)
    assert waste < 0.2 * sum(lengths)
    again = bucket_batches(data, 8, np.random.default_rng(7), pool=5)
    assert [b.index.tolist() for b in again] == [b.index.tolist() for b in batches]
    other = bucket_batches(data, 8, np.random.default_rng(8), pool=5)
    assert [b.index.tolist() for b in other] != [b.index.tolist() for b in batches]


def test_bucket_batches_evaluation_order():
    data = token_dataset([5, 1, 3, 3, 2, 9, 1])
    batches = bucket_batches(data, 3)
    check_cover(data, batches, 3)
    order = np.concatenate([b.index for b in batches])
    assert [len(data.examples[i]) for i in order] == sorted(len(e) for e in data.examples)
    assert order.tolist()[:2] == [1, 6]  # stable among equal lengths
    assert bucket_batches(SequenceDataset([]), 4) == []


def test_stream_windows_reassemble():
    n = 103
    stream = StreamDataset(inputs=np.arange(n, dtype=np.int64), targets=np.arange(1, n + 1, dtype=np.int64))
    windows = stream_windows(stream, batch_size=4, bptt=7)
    rows, per_row = 4, n // 4
    assert all(x.shape[0] == rows for x, _ in windows)
    assert [x.shape[1] for x, _ in windows] == [7, 7, 7, 4]  # 25 = 3 * 7 + 4
    inputs = np.concatenate([x for x, _ in windows], axis=1)
    targets = np.concatenate([y for _, y in windows], axis=1)
    for b in range(rows):
        assert inputs[b].tolist() == list(range(b * per_row, (b + 1) * per_row))
        assert targets[b].tolist() == list(range(b * per_row + 1, (b + 1) * per_row + 1))


def test_stream_windows_features_and_small_streams():
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    stream = StreamDataset(inputs=values, targets=values[:, :1] * 10)
    windows = stream_windows(stream, batch_size=16, bptt=4)  # B = min(16, 10) = 10 rows of 1 step
    assert len(windows) == 1
    x, y = windows[0]
    assert x.shape == (10, 1, 3) and y.shape == (10, 1, 1)
    assert x[:, 0].tolist() == values.tolist()
    windows = stream_windows(stream, batch_size=2, bptt=3)
    assert [w[0].shape for w in windows] == [(2, 3, 3), (2, 2, 3)]
    assert np.concatenate([w[0] for w in windows], axis=1)[1].tolist() == values[5:].tolist()
    assert stream_windows(StreamDataset(np.zeros(0, np.int64), np.zeros(0, np.int64)), 4, 4) == []
    with pytest.raises(ValueError):
        stream_windows(stream, batch_size=0, bptt=3)
