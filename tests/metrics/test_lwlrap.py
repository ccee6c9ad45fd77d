"""pipeline/metrics/lwlrap.py against scikit-learn's reference and a per-(sample, label) loop: random and
tied scores, empty and all-positive rows, one class; accumulator merging. The Keras and TFMA
adapters have their own test modules."""
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from pipeline.metrics import lwlrap as lw
from pipeline.metrics.lwlrap import LwlrapAccumulator, lwlrap, per_class_lwlrap, precision_at_hits

from tests import REPO
METHODS = ["auto", "pairwise", "sort"]


# ------------------------------------------------------------------------------ references

def sklearn_lwlrap(truth, scores):
    """The competition's reference: sklearn LRAP over samples with a label, weighted by #labels.

    Scores are cast to float64 first: that keeps every order and tie (float32 -> float64 is
    exact), but sklearn 1.5.2 given float32 scores accumulates its result in float32 (errors
    ~1e-9 relative to the exact value), which test_float32_scores_sklearn_rounding pins down."""
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    nz = truth.sum(1) > 0
    return label_ranking_average_precision_score(
        truth[nz], scores[nz], sample_weight=truth.sum(1)[nz])


def loop_precisions(truth, scores):
    """Straightforward per-(i, j) definition, independent of the module."""
    n, c = truth.shape
    out = np.zeros((n, c))
    for i in range(n):
        for j in range(c):
            if truth[i, j]:
                ge = [k for k in range(c) if scores[i, k] >= scores[i, j]]
                out[i, j] = sum(1 for k in ge if truth[i, k]) / len(ge)
    return out


def loop_per_class(truth, scores):
    prec = loop_precisions(truth, scores)
    cnt = truth.sum(0)
    return np.array([prec[:, j].sum() / cnt[j] if cnt[j] else np.nan for j in range(truth.shape[1])])


def random_truth(rng, n, c, lo=1, hi=3, empty_frac=0.0):
    """Each row gets lo..hi positives (capped at c); a fraction of rows is left empty."""
    truth = np.zeros((n, c), dtype=np.int64)
    for i in range(n):
        if rng.random() < empty_frac:
            continue
        k = int(rng.integers(lo, min(hi, c) + 1))
        truth[i, rng.choice(c, k, replace=False)] = 1
    return truth


def cases():
    rng = np.random.default_rng(20190401)
    out = {}
    out["random_50x80"] = (random_truth(rng, 50, 80), rng.random((50, 80)))
    out["random_7x5"] = (random_truth(rng, 7, 5), rng.random((7, 5)))
    out["random_dense_40x12"] = (random_truth(rng, 40, 12, 3, 10), rng.normal(size=(40, 12)))
    out["tied_round1_60x80"] = (random_truth(rng, 60, 80, 1, 6), np.round(rng.random((60, 80)), 1))
    out["tied_int0to3_30x10"] = (random_truth(rng, 30, 10, 1, 5), rng.integers(0, 4, (30, 10)))
    out["tied_all_equal_6x9"] = (random_truth(rng, 6, 9, 1, 4), np.full((6, 9), 0.25))
    out["float32_tied_25x80"] = (random_truth(rng, 25, 80),
                                 np.round(rng.random((25, 80)), 2).astype(np.float32))
    t = random_truth(rng, 40, 80, empty_frac=0.3)
    out["empty_rows_mixed_40x80"] = (t, np.round(rng.random((40, 80)), 1))
    t = random_truth(rng, 20, 6)
    t[[2, 7, 11]] = 1                                       # all-positive rows
    t[[4, 5]] = 0                                           # and empty ones
    out["all_positive_rows_20x6"] = (t, rng.integers(0, 3, (20, 6)).astype(float))
    t = (rng.random((15, 1)) < 0.6).astype(int)
    out["single_class_15x1"] = (t, rng.random((15, 1)))
    return out


CASES = cases()


# ------------------------------------------------------------------------------ numpy core

@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_sklearn(name):
    truth, scores = CASES[name]
    assert abs(lwlrap(truth, scores) - sklearn_lwlrap(truth, scores)) < 1e-9


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_precisions_and_per_class_match_loop(name, method, monkeypatch):
    truth, scores = CASES[name]
    # steer "auto" (used by the accumulator and the convenience functions) to the same path
    threshold = {"auto": lw._PAIRWISE_MAX_MEAN_POSITIVES, "pairwise": 10 ** 9, "sort": -1}[method]
    monkeypatch.setattr(lw, "_PAIRWISE_MAX_MEAN_POSITIVES", threshold)
    ref = loop_precisions(truth, scores)
    got = precision_at_hits(truth, scores, method=method)
    assert got.shape == truth.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert np.all(got[truth == 0] == 0)
    np.testing.assert_allclose(per_class_lwlrap(truth, scores), loop_per_class(truth, scores),
                               rtol=0, atol=1e-12, equal_nan=True)
    assert abs(lwlrap(truth, scores) - sklearn_lwlrap(truth, scores)) < 1e-9


@pytest.mark.parametrize("name", sorted(CASES))
def test_overall_is_count_weighted_mean_of_per_class(name):
    truth, scores = CASES[name]
    pc = per_class_lwlrap(truth, scores)
    cnt = truth.sum(0)
    assert np.all(np.isnan(pc) == (cnt == 0))
    seen = cnt > 0
    weighted = np.sum(pc[seen] * cnt[seen]) / cnt.sum()
    assert abs(lwlrap(truth, scores) - weighted) < 1e-12


def test_methods_agree_on_larger_inputs():
    rng = np.random.default_rng(5)
    for density in (0.02, 0.3, 0.9):
        truth = rng.random((300, 80)) < density
        scores = np.round(rng.random((300, 80)), 2)
        a = precision_at_hits(truth, scores, method="pairwise")
        b = precision_at_hits(truth, scores, method="sort")
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        assert abs(lwlrap(truth, scores) - sklearn_lwlrap(truth, scores)) < 1e-9


def test_pairwise_chunking(monkeypatch):
    truth, scores = CASES["tied_round1_60x80"]
    full = precision_at_hits(truth, scores, method="pairwise")
    monkeypatch.setattr(lw, "_CHUNK_ELEMENTS", 200)         # a few positives per chunk
    np.testing.assert_array_equal(precision_at_hits(truth, scores, method="pairwise"), full)


def test_float32_scores_sklearn_rounding():
    truth, scores = CASES["float32_tied_25x80"]
    nz = truth.sum(1) > 0
    raw = label_ranking_average_precision_score(truth[nz], scores[nz], sample_weight=truth.sum(1)[nz])
    assert abs(lwlrap(truth, scores) - raw) < 1e-6          # sklearn's own float32 rounding
    assert abs(lwlrap(truth, scores) - sklearn_lwlrap(truth, scores)) < 1e-9


def test_score_ties_are_compared_exactly():
    # 0.1 + 0.2 != 0.3 in float64: not a tie, so the ranks differ from the rounded version.
    truth = np.array([[1, 0, 1]])
    scores = np.array([[0.1 + 0.2, 0.3, 0.0]])
    assert abs(lwlrap(truth, scores) - sklearn_lwlrap(truth, scores)) < 1e-12
    np.testing.assert_allclose(precision_at_hits(truth, scores)[0], [1.0, 0.0, 2 / 3])


def test_no_positive_labels():
    truth = np.zeros((4, 5), dtype=int)
    scores = np.random.default_rng(0).random((4, 5))
    assert np.isnan(lwlrap(truth, scores))
    assert np.all(np.isnan(per_class_lwlrap(truth, scores)))
    assert np.all(precision_at_hits(truth, scores) == 0)
    assert precision_at_hits(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("truth, scores, match", [
    (np.ones((3, 4)), np.ones((3, 5)), "different shapes"),
    (np.ones((3, 4)), np.ones((4, 4)), "different shapes"),
    (np.ones(4), np.ones(4), "2-D"),
    (np.ones((2, 0)), np.ones((2, 0)), "at least one class"),
    (np.ones((2, 3)), np.array([[0.1, np.nan, 0.2], [0.0, 0.0, 0.0]]), "finite"),
    (np.ones((2, 3)), np.array([[0.1, np.inf, 0.2], [0.0, 0.0, 0.0]]), "finite"),
    (np.array([[0, 1, 2], [0, 0, 1]]), np.ones((2, 3)), "binary"),
    (np.array([[0, 0.5, 1], [0, 0, 1]]), np.ones((2, 3)), "binary"),
    (np.array([[0, -1, 1], [0, 0, 1]]), np.ones((2, 3)), "binary"),
])
def test_bad_inputs(truth, scores, match):
    with pytest.raises(ValueError, match=match):
        precision_at_hits(truth, scores)
    with pytest.raises(ValueError, match=match):
        lwlrap(truth, scores)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        precision_at_hits(np.ones((2, 3)), np.ones((2, 3)), method="fast")


# ------------------------------------------------------------------------------ accumulator

def test_accumulator_chunks_merge_to_whole():
    truth, scores = CASES["empty_rows_mixed_40x80"]
    whole = LwlrapAccumulator().add(truth, scores)
    bounds = [0, 3, 4, 17, 17, 30, 40]                      # includes an empty chunk and 1 row
    parts = [LwlrapAccumulator(80).add(truth[a:b], scores[a:b]) for a, b in zip(bounds, bounds[1:])]
    merged = LwlrapAccumulator.merged(parts)
    np.testing.assert_allclose(merged.numerator, whole.numerator, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(merged.count, whole.count)
    assert abs(merged.overall() - sklearn_lwlrap(truth, scores)) < 1e-9
    np.testing.assert_allclose(merged.per_class(), per_class_lwlrap(truth, scores),
                               atol=1e-12, equal_nan=True)
    # in-place merge, row-by-row adds (1-D rows), empty accumulators
    acc = LwlrapAccumulator()
    acc.merge(LwlrapAccumulator())
    for i in range(truth.shape[0]):
        acc.add(truth[i], scores[i])
    assert abs(acc.overall() - whole.overall()) < 1e-12
    assert whole.count.dtype == np.int64 and whole.numerator.dtype == np.float64


def test_accumulator_state_roundtrip_and_checks():
    import pickle
    truth, scores = CASES["random_50x80"]
    acc = LwlrapAccumulator().add(truth, scores)
    back = pickle.loads(pickle.dumps(acc))      # Beam's accumulator coder pickles it
    np.testing.assert_array_equal(back.numerator, acc.numerator)
    np.testing.assert_array_equal(back.count, acc.count)
    assert back.overall() == acc.overall()
    empty = LwlrapAccumulator()
    assert np.isnan(empty.overall()) and empty.per_class().shape == (0,)
    assert pickle.loads(pickle.dumps(empty)).num_classes is None
    with pytest.raises(ValueError, match="classes"):
        LwlrapAccumulator(5).add(truth, scores)
    with pytest.raises(ValueError, match="classes"):
        acc.merge(LwlrapAccumulator(3).add(np.eye(3), np.eye(3)))


def test_plain_metric_imports_neither_beam_nor_keras():
    """Anyone who wants the numbers imports numpy only; the adapters live beside their users."""
    code = "import sys; import pipeline.metrics.lwlrap; print(sorted(m for m in ('keras', 'apache_beam', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
