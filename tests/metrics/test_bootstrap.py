"""pipeline/metrics/bootstrap.py: the paired bootstrap of lwlrap over clips, on score arrays whose
intervals are known."""
import numpy as np
import pytest

from pipeline.metrics import bootstrap
from pipeline.metrics.lwlrap import lwlrap


def _case(n=60, c=10, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, c), dtype=bool)
    for i in range(n):
        truth[i, rng.choice(c, rng.integers(1, 4), replace=False)] = True
    return truth, rng.random((n, c)).round(1)


def test_clip_sums_add_up_to_lwlrap():
    truth, scores = _case()
    hits, positives = bootstrap.clip_sums(truth, scores)
    assert positives.tolist() == truth.sum(axis=1).tolist()
    assert hits.sum() / positives.sum() == pytest.approx(lwlrap(truth, scores), abs=1e-12)


def test_a_bernoulli_mean_gets_the_normal_interval():
    """One positive a clip, precision 1 or 0: lwlrap is the share of hits, and its 95% interval
    is p +- 1.96 sqrt(p (1 - p) / n) = 0.5 +- 0.049 for 200 hits of 400 clips."""
    hits = np.r_[np.ones(200), np.zeros(200)]
    low, high = bootstrap.intervals(hits, np.ones(400), samples=4000)
    assert low[0] == pytest.approx(0.5 - 0.049, abs=0.006) and high[0] == pytest.approx(0.5 + 0.049, abs=0.006)


def test_the_difference_is_paired_over_the_same_clips():
    """A candidate better by exactly 0.1 precision at every positive label: each replicate's
    difference is 0.1, though either model's own interval is wide; a model against itself: 0."""
    truth, scores = _case()
    base, positives = bootstrap.clip_sums(truth, scores)
    cand = base + 0.1 * positives
    low, high = bootstrap.intervals(np.stack([cand, base]), positives, differences=[(0, 1), (1, 1)])
    assert low[2] == pytest.approx(0.1, abs=1e-12) and high[2] == pytest.approx(0.1, abs=1e-12)
    assert (high[:2] - low[:2] > 0.05).all()
    assert low[3] == high[3] == 0


def test_seeded_and_independent_of_the_order_of_the_clips():
    truth, scores = _case()
    hits, positives = bootstrap.clip_sums(truth, scores)
    got = bootstrap.intervals(hits, positives, samples=200)
    perm = np.random.default_rng(1).permutation(hits.size)
    np.testing.assert_array_equal(bootstrap.intervals(hits[perm], positives[perm], samples=200), got)
    assert not np.array_equal(bootstrap.intervals(hits, positives, samples=200, seed=1), got)


def test_clips_without_positives_are_left_out_as_lwlrap_leaves_them_out():
    truth, scores = _case()
    hits, positives = bootstrap.clip_sums(truth, scores)
    with_empty = bootstrap.intervals(np.r_[hits, 0, 0], np.r_[positives, 0, 0], samples=100)
    np.testing.assert_array_equal(with_empty, bootstrap.intervals(hits, positives, samples=100))
    assert np.isnan(bootstrap.intervals([0.0], [0], samples=3)).all()
    np.testing.assert_array_equal(bootstrap.intervals([0.5], [1], samples=3), [[0.5], [0.5]])   # one clip: always it


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="3 clips of hits but 2"):
        bootstrap.intervals([1, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="samples must be >= 1"):
        bootstrap.intervals([1], [1], samples=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        bootstrap.intervals([1.0, 1.0], [1, 1], confidence=1.0)
