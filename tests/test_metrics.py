"""Task metrics (toolkit.core.metrics): hand-worked examples, conlleval edge cases, cross-checks."""

from __future__ import annotations

import ast
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from toolkit.core import metrics as M
from toolkit.core.metrics import (
    ClassifyMetrics,
    LMMetrics,
    RegressMetrics,
    TagMetrics,
    better,
    bio_spans,
    is_bio,
    metric_mode,
)
from toolkit.core.tasks import default_monitor, metrics_for


def all_python_floats(result: dict) -> bool:
    return all(type(v) is float for v in result.values())


# ------------------------------------------------------------------------------------------- module


def test_module_imports_only_numpy_and_stdlib():
    tree = ast.parse(Path(M.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    third_party = {r for r in roots if r not in sys.stdlib_module_names and r != "__future__"}
    assert third_party == {"numpy"}


# ----------------------------------------------------------------------------------------- classify


def test_classify_hand_worked_three_classes():
    # true: 0 0 0 1 1 2
    # pred: 0 0 1 1 2 2
    # class 0: tp 2, fp 0, fn 1 -> F1 = 2*2 / (4 + 0 + 1) = 4/5
    # class 1: tp 1, fp 1, fn 1 -> F1 = 2 / (2 + 1 + 1) = 1/2
    # class 2: tp 1, fp 1, fn 0 -> F1 = 2 / (2 + 1 + 0) = 2/3
    # macro = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90; accuracy = 4/6
    m = ClassifyMetrics(3)
    m.update(np.array([0, 0, 1]), np.array([0, 0, 0]))  # split over two batches
    m.update(np.array([1, 2, 2]), np.array([1, 1, 2]))
    out = m.compute()
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["macro_f1"] == pytest.approx(59 / 90)
    assert set(out) == {"accuracy", "macro_f1"}
    assert all_python_floats(out)


def test_classify_absent_class_does_not_count():
    # 4 classes, class 3 never true nor predicted; class 2 only predicted (F1 0 counts).
    # true: 0 1 1   pred: 0 1 2
    # class 0: F1 1; class 1: tp 1, fn 1 -> 2/3; class 2: fp 1 -> 0; class 3: skipped
    # macro = (1 + 2/3 + 0) / 3 = 5/9
    m = ClassifyMetrics(4)
    m.update([0, 1, 2], [0, 1, 1])
    assert m.compute()["macro_f1"] == pytest.approx(5 / 9)


def per_class_macro_f1(pred: np.ndarray, true: np.ndarray) -> float:
    scores = []
    for c in np.union1d(pred, true):
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(scores))


@pytest.mark.parametrize("seed", range(5))
def test_classify_macro_f1_matches_direct_per_class(seed):
    rng = np.random.default_rng(seed)
    k = 7
    true = rng.integers(0, k - 1, size=300)  # class k-1 never true...
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, k - 2, size=300))  # ...nor predicted
    m = ClassifyMetrics(k)
    for i in range(0, 300, 64):
        m.update(pred[i : i + 64], true[i : i + 64])
    out = m.compute()
    assert out["accuracy"] == pytest.approx(np.mean(pred == true))
    assert out["macro_f1"] == pytest.approx(per_class_macro_f1(pred, true))


def test_classify_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(42)
    true = rng.integers(0, 5, size=200)
    pred = np.where(rng.random(200) < 0.5, true, rng.integers(0, 4, size=200))
    m = ClassifyMetrics(6)  # class 5 absent from both
    m.update(pred, true)
    out = m.compute()
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(true, pred))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(true, pred, average="macro", zero_division=0))


def test_classify_rejects_out_of_range_and_mismatch():
    m = ClassifyMetrics(3)
    with pytest.raises(ValueError, match="outside"):
        m.update([0, 3], [0, 1])
    with pytest.raises(ValueError, match="outside"):
        m.update([0, 1], [-100, 1])
    with pytest.raises(ValueError):
        m.update([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        m.update(np.array([0.5]), np.array([0]))


# ---------------------------------------------------------------------------------------- tag/BIO


def test_is_bio():
    assert is_bio(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert is_bio(["O", "B-PER", "I-PER", "E-PER", "S-PER"])  # BIOES
    assert is_bio(["O", "I-PER"])  # IOB1
    assert not is_bio(["NOUN", "VERB", "DET"])
    assert not is_bio(["O"])
    assert not is_bio([])
    assert not is_bio(["O", "B-PER", "X-PER"])
    assert not is_bio(["O", "B-"])


def test_bio_spans_basic_and_end_of_sequence():
    #         0        1        2    3        4
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    # the LOC chunk runs to the end of the sequence: end (exclusive) = 5
    assert bio_spans(tags) == {(0, 2, "PER"), (3, 5, "LOC")}
    assert bio_spans(["O", "O"]) == set()
    assert bio_spans([]) == set()


def test_bio_spans_conlleval_edge_cases():
    # I- after O starts a chunk (conlleval), also at the start of the sequence
    assert bio_spans(["O", "I-PER", "I-PER"]) == {(1, 3, "PER")}
    assert bio_spans(["I-PER", "O"]) == {(0, 1, "PER")}
    # a type change ends the chunk and I- starts a new one of the new type
    assert bio_spans(["B-PER", "I-LOC", "I-LOC"]) == {(0, 1, "PER"), (1, 3, "LOC")}
    # B- right after a chunk of the same type starts a new chunk
    assert bio_spans(["B-PER", "B-PER", "I-PER"]) == {(0, 1, "PER"), (1, 3, "PER")}
    # BIOES: E- closes, S- is a one-token chunk, I-/E- after E- start a new chunk
    assert bio_spans(["B-PER", "I-PER", "E-PER", "S-LOC", "O"]) == {(0, 3, "PER"), (3, 4, "LOC")}
    assert bio_spans(["S-PER", "S-PER"]) == {(0, 1, "PER"), (1, 2, "PER")}
    assert bio_spans(["B-PER", "E-PER", "E-PER"]) == {(0, 2, "PER"), (2, 3, "PER")}
    assert bio_spans(["O", "E-PER"]) == {(1, 2, "PER")}
    # types may contain dashes: split at the first one
    assert bio_spans(["B-WORK-OF-ART", "I-WORK-OF-ART"]) == {(0, 2, "WORK-OF-ART")}
    with pytest.raises(ValueError):
        bio_spans(["B-PER", "NOUN"])


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
IDX = {t: i for i, t in enumerate(TAGS)}


def ids(*tags: str) -> list[int]:
    return [IDX[t] for t in tags]


def test_tag_metrics_hand_worked_with_padding():
    # sentence 1 (length 5, no padding)
    #   true: B-PER I-PER O B-LOC I-LOC   -> chunks PER(0,2) LOC(3,5)
    #   pred: B-PER I-PER O B-LOC O       -> chunks PER(0,2) LOC(3,4)
    # sentence 2 (length 3, 2 padded steps whose values must be ignored)
    #   true: O I-LOC I-LOC               -> chunk LOC(1,3)  (I- after O starts a chunk)
    #   pred: O B-LOC I-LOC               -> chunk LOC(1,3)  -> counts as correct
    # tokens: 8, wrong 2 (sentence 1 position 4; sentence 2 position 1, B-LOC vs I-LOC, although
    # its chunk is right) -> accuracy 6/8
    # chunks: correct 2 (PER(0,2), LOC(1,3)); guessed 3; true 3 -> P = R = F1 = 2/3
    pad = -100
    true = np.array([ids("B-PER", "I-PER", "O", "B-LOC", "I-LOC"), ids("O", "I-LOC", "I-LOC") + [pad, pad]])
    pred = np.array([ids("B-PER", "I-PER", "O", "B-LOC", "O"), ids("O", "B-LOC", "I-LOC", "B-PER", "I-PER")])
    m = TagMetrics(TAGS)
    m.update(pred, true, np.array([5, 3]))
    out = m.compute()
    assert set(out) == {"accuracy", "span_f1", "span_precision", "span_recall"}
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["span_precision"] == pytest.approx(2 / 3)
    assert out["span_recall"] == pytest.approx(2 / 3)
    assert out["span_f1"] == pytest.approx(2 / 3)
    assert all_python_floats(out)


def test_tag_metrics_precision_recall_differ_and_chunks_do_not_cross_sequences():
    # Two sequences whose boundary would join chunks if they were concatenated:
    #   seq a true: O B-PER     pred: O B-PER
    #   seq b true: I-PER O     pred: O O
    # true chunks: PER(a 1..2), PER(b 0..1) = 2; guessed: PER(a 1..2) = 1; correct 1
    # P = 1/1, R = 1/2, F1 = 2 * 1 * 0.5 / 1.5 = 2/3; accuracy 3/4
    true = np.array([ids("O", "B-PER"), ids("I-PER", "O")])
    pred = np.array([ids("O", "B-PER"), ids("O", "O")])
    m = TagMetrics(TAGS)
    m.update(pred, true, [2, 2])
    out = m.compute()
    assert out["span_precision"] == pytest.approx(1.0)
    assert out["span_recall"] == pytest.approx(0.5)
    assert out["span_f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(3 / 4)


def test_tag_metrics_type_mismatch_is_wrong():
    # same boundaries, wrong type -> no correct chunk
    m = TagMetrics(TAGS)
    m.update([ids("B-LOC", "I-LOC")], [ids("B-PER", "I-PER")], [2])
    out = m.compute()
    assert out["span_f1"] == 0.0 and out["accuracy"] == 0.0


def test_tag_metrics_bioes():
    tags = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "S-LOC"]
    t = {x: i for i, x in enumerate(tags)}
    # true: B-PER E-PER S-LOC O   -> PER(0,2), LOC(2,3)
    # pred: S-PER S-PER S-LOC O   -> PER(0,1), PER(1,2), LOC(2,3)
    # correct 1 (LOC); P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 2/5; accuracy 2/4
    true = [[t["B-PER"], t["E-PER"], t["S-LOC"], t["O"]]]
    pred = [[t["S-PER"], t["S-PER"], t["S-LOC"], t["O"]]]
    m = TagMetrics(tags)
    m.update(pred, true, [4])
    out = m.compute()
    assert out["span_precision"] == pytest.approx(1 / 3)
    assert out["span_recall"] == pytest.approx(1 / 2)
    assert out["span_f1"] == pytest.approx(2 / 5)
    assert out["accuracy"] == pytest.approx(2 / 4)


def test_tag_metrics_match_direct_span_count_on_random_data():
    rng = np.random.default_rng(0)
    tags = ["O", "B-A", "I-A", "B-B", "I-B", "E-A", "S-B"]
    correct = guessed = truth = 0
    m = TagMetrics(tags)
    for _ in range(5):
        true = rng.integers(0, len(tags), size=(8, 12))
        pred = np.where(rng.random((8, 12)) < 0.7, true, rng.integers(0, len(tags), size=(8, 12)))
        lengths = rng.integers(0, 13, size=8)
        m.update(pred, true, lengths)
        for b in range(8):
            n = lengths[b]
            g = bio_spans([tags[i] for i in pred[b, :n]])
            c = bio_spans([tags[i] for i in true[b, :n]])
            correct, guessed, truth = correct + len(g & c), guessed + len(g), truth + len(c)
    out = m.compute()
    assert out["span_precision"] == pytest.approx(correct / guessed)
    assert out["span_recall"] == pytest.approx(correct / truth)


def test_tag_metrics_non_bio_reports_accuracy_only():
    m = TagMetrics(["NOUN", "VERB", "DET"])
    m.update(np.array([[0, 1, 2, 0]]), np.array([[0, 1, 1, -100]]), np.array([3]))
    assert m.compute() == {"accuracy": pytest.approx(2 / 3)}


def test_tag_metrics_no_chunks_anywhere_is_zero_like_conlleval():
    m = TagMetrics(TAGS)
    m.update([[0, 0]], [[0, 0]], [2])
    out = m.compute()
    assert out["accuracy"] == 1.0
    assert out["span_f1"] == out["span_precision"] == out["span_recall"] == 0.0


def test_tag_metrics_rejects_bad_input():
    m = TagMetrics(TAGS)
    with pytest.raises(ValueError):
        m.update([[0, 1]], [[0, 1]], [3])  # length > T
    with pytest.raises(ValueError, match="outside"):
        m.update([[0, 9]], [[0, 1]], [2])
    with pytest.raises(ValueError):
        m.update([[0, 1]], [[0, 1, 2]], [2])


# ------------------------------------------------------------------------------------------------- lm


def test_lm_char_level():
    # 3 batches: nll 6.0 over 4 tokens, 3.0 over 2, 0.0 over 0 -> CE = 9 / 6 = 1.5 nats/token
    m = LMMetrics("char")
    m.update(6.0, 4)
    m.update(3.0, 2)
    m.update(0.0, 0)
    out = m.compute()
    assert set(out) == {"cross_entropy", "perplexity", "bpc"}
    assert out["cross_entropy"] == pytest.approx(1.5)
    assert out["perplexity"] == pytest.approx(math.exp(1.5))
    assert out["bpc"] == pytest.approx(1.5 / math.log(2))
    assert all_python_floats(out)


def test_lm_word_level_and_uniform_model():
    # a uniform model over 256 symbols: CE = ln 256 -> perplexity 256, 8 bits per token
    m = LMMetrics("word")
    m.update(10 * math.log(256), 10)
    out = m.compute()
    assert set(out) == {"cross_entropy", "perplexity", "bits_per_token"}
    assert out["perplexity"] == pytest.approx(256)
    assert out["bits_per_token"] == pytest.approx(8)


def test_lm_huge_cross_entropy_gives_inf_perplexity():
    m = LMMetrics("char")
    m.update(1e6, 1)
    assert m.compute()["perplexity"] == math.inf


def test_lm_bad_level():
    with pytest.raises(ValueError):
        LMMetrics("byte")


# -------------------------------------------------------------------------------------------- regress


def test_regress_with_mask_over_leading_dims():
    # pred/true [B=2, T=3, D=2]; mask [2, 3] keeps (0,0), (0,1), (1,0); everything else is junk.
    pred = np.zeros((2, 3, 2))
    true = np.full((2, 3, 2), 100.0)
    true[0, 0] = [1.0, -1.0]  # errors 1, 1
    true[0, 1] = [2.0, 0.0]  # errors 2, 0
    true[1, 0] = [0.0, 3.0]  # errors 0, 3
    mask = np.array([[True, True, False], [True, False, False]])
    # abs errors 1 1 2 0 0 3 -> MAE = 7/6; squares 1 1 4 0 0 9 -> RMSE = sqrt(15/6)
    m = RegressMetrics()
    m.update(pred, true, mask)
    out = m.compute()
    assert out["mae"] == pytest.approx(7 / 6)
    assert out["rmse"] == pytest.approx(math.sqrt(15 / 6))
    assert all_python_floats(out)


def test_regress_streams_across_batches_and_full_mask():
    # batch 1 [B=2, D=1] no mask: errors 1, -3; batch 2 with a full-shape mask keeps error 2 only
    # MAE = (1 + 3 + 2) / 3 = 2; RMSE = sqrt((1 + 9 + 4) / 3)
    m = RegressMetrics()
    m.update(np.array([[1.0], [0.0]]), np.array([[0.0], [3.0]]))
    m.update(np.array([[2.0, 5.0]]), np.array([[0.0, 0.0]]), np.array([[True, False]]))
    out = m.compute()
    assert out["mae"] == pytest.approx(2.0)
    assert out["rmse"] == pytest.approx(math.sqrt(14 / 3))


def test_regress_bad_mask():
    with pytest.raises(ValueError, match="broadcast"):
        RegressMetrics().update(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.ones((3, 2), bool))


# ------------------------------------------------------------------------------------ loss & empties


def test_add_loss_mean_is_reported():
    m = ClassifyMetrics(2)
    m.update([0], [0])
    assert "loss" not in m.compute()  # only after add_loss
    m.add_loss(3.0, 2)
    m.add_loss(1.0, 2)
    assert m.compute()["loss"] == pytest.approx(1.0)
    r = RegressMetrics()
    r.add_loss(2.0, 4)
    assert r.compute()["loss"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make",
    [lambda: ClassifyMetrics(3), lambda: TagMetrics(TAGS), lambda: LMMetrics("char"), lambda: RegressMetrics()],
)
def test_empty_accumulators_return_nan_without_warnings(make):
    m = make()
    m.add_loss(0.0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m.compute()
    assert out and all(math.isnan(v) for v in out.values())
    assert all_python_floats(out)


# ------------------------------------------------------------------------------- factory & monitor


def test_metrics_for():
    assert isinstance(metrics_for("classify", ["a", "b"]), ClassifyMetrics)
    assert metrics_for("classify", ["a", "b", "c"]).num_classes == 3
    assert isinstance(metrics_for("tag", TAGS), TagMetrics)
    lm = metrics_for("lm", None, "word")
    assert isinstance(lm, LMMetrics) and lm.level == "word"
    assert metrics_for("lm", None).level == "char"
    assert isinstance(metrics_for("regress", None), RegressMetrics)
    with pytest.raises(ValueError):
        metrics_for("translate", None)
    with pytest.raises(ValueError):
        metrics_for("classify", None)


def test_default_monitor_and_modes():
    assert default_monitor("classify", ["a", "b"]) == ("accuracy", "max")
    assert default_monitor("tag", TAGS) == ("span_f1", "max")
    assert default_monitor("tag", ["NOUN", "VERB"]) == ("accuracy", "max")
    assert default_monitor("lm", None) == ("cross_entropy", "min")
    assert default_monitor("regress", None) == ("rmse", "min")
    with pytest.raises(ValueError):
        default_monitor("translate", None)
    for task, labels in [("classify", ["a"]), ("tag", TAGS), ("tag", ["N"]), ("lm", None), ("regress", None)]:
        name, mode = default_monitor(task, labels)
        assert name in metrics_for(task, labels).compute()  # the monitored metric is reported
        assert metric_mode(name) == mode
    assert metric_mode("bpc") == "min" and metric_mode("macro_f1") == "max"


def test_better():
    assert better(0.9, 0.8, "max") and not better(0.8, 0.9, "max")
    assert better(0.8, 0.9, "min") and not better(0.9, 0.8, "min")
    assert not better(0.5, 0.5, "max") and not better(0.5, 0.5, "min")  # strict
    nan = float("nan")
    assert better(1.0, nan, "min") and not better(nan, 1.0, "max") and not better(nan, nan, "min")
    with pytest.raises(ValueError):
        better(1.0, 0.0, "up")


# ---- seq2seq ----------------------------------------------------------------------------------


def _levenshtein_recursive(a, b):
    """The textbook recursion, memoised: the reference for edit_distance."""
    from functools import cache

    @cache
    def d(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_edit_distance_hand_worked_and_against_the_recursion():
    from toolkit.core.metrics import edit_distance

    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2 and edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance("flaw", "lawn") == 2
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = tuple(rng.integers(0, 3, rng.integers(0, 9)))
        b = tuple(rng.integers(0, 3, rng.integers(0, 9)))
        assert edit_distance(a, b) == edit_distance(b, a) == _levenshtein_recursive(a, b)


def test_seq2seq_metrics_hand_worked():
    """G2P: 'cat' -> K AE T and 'cot' -> K AA T; one output exact, one with a substitution."""
    from toolkit.core.metrics import Seq2SeqMetrics

    m = Seq2SeqMetrics()
    m.update([[5, 6, 7], [5, 6, 7, 8]], [[5, 6, 7], [5, 9, 7]])  # 2nd: a substitution and an insertion
    m.update_teacher_forced(np.array([[5, 6, 0], [5, 9, 7]]), np.array([[5, 6, 7], [5, 9, 7]]), [[1, 1, 1], [1, 1, 0]])
    got = m.compute()
    print(got)
    assert got["exact_match"] == 0.5 and got["sequence_error_rate"] == 0.5
    assert got["error_rate"] == pytest.approx(2 / 6)  # 2 edits over 6 reference phonemes
    assert got["token_accuracy"] == pytest.approx(4 / 5)
    assert Seq2SeqMetrics().compute() == {}  # each metric appears once what it needs was seen
