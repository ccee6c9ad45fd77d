"""Label-weighted label-ranking average precision (lwlrap), exact and mergeable.

lwlrap is the Freesound Audio Tagging 2019 metric. The reference is scikit-learn:

    nz = truth.sum(1) > 0
    label_ranking_average_precision_score(truth[nz], scores[nz], sample_weight=truth.sum(1)[nz])

For a positive label j of sample i, with ties counted as sklearn counts them,

    rank(i, j) = #{k : score[i, k] >= score[i, j]}            (all labels)
    L(i, j)    = #{k : truth[i, k] = 1, score[i, k] >= score[i, j]}   (positive labels)
    precision(i, j) = L(i, j) / rank(i, j)

and weighting each sample by its number of positive labels turns the metric into a plain mean
over all (sample, positive label) pairs:

    lwlrap = sum_{i,j: truth=1} precision(i, j) / #{(i, j): truth=1}

Why it is built this way: every (sample, positive label) pair contributes one precision that
depends on that sample's row only. So the whole metric is two per-class sums -- ``numerator[j]``
(sum of precisions of the samples where j is positive) and ``count[j]`` (number of those samples)
-- and partial sums from any split of the data add up to the exact value on the whole. That lets
a Beam ``CombineFn`` merge accumulators across workers and a Keras metric keep two [C] variables
that ``tf.distribute`` sums across replicas, with no approximation (unlike averaging per-batch
scores) and no need to keep all predictions around. Per-class lwlrap is ``numerator / count``;
the overall value is the count-weighted mean of the per-class values. Samples with no positive
label contribute nothing, as the reference skips them.

``precision_at_hits`` computes the per-pair precisions in numpy, vectorized, two exact ways:
for sparse truth (the FAT case, 1-3 labels of 80) each positive is compared with its own row in
chunked [pairs, C] blocks (O(positives x C)); for dense truth, one argsort per row, where in
ascending order an element's rank is C minus the start of its tie group and L is the row's
positive count minus the positives before that start (O(n C log C)). Both count ties exactly as
sklearn does; neither builds an [n, C, C] array.
Adapters live beside the code that uses them, so the plain metric needs only numpy:
``pipeline.metrics.lwlrap_keras`` (the trainer's Keras metric, in-graph) and ``pipeline.metrics.lwlrap_tfma`` (the
TFMA metric that TFX's Evaluator computes and blesses on).
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

__all__ = [
    "precision_at_hits",
    "LwlrapAccumulator",
    "lwlrap",
    "per_class_lwlrap",
]


# --------------------------------------------------------------------------------------------
# numpy core
# --------------------------------------------------------------------------------------------

def _validate(truth, scores, allow_1d: bool = False):
    """Check and convert inputs: returns (truth as bool [n, C], scores as a real array [n, C])."""
    truth = np.asarray(truth)
    scores = np.asarray(scores)
    if allow_1d and truth.ndim == 1 and scores.ndim == 1:
        truth = truth[None, :]
        scores = scores[None, :]
    if truth.ndim != 2 or scores.ndim != 2:
        raise ValueError(
            f"lwlrap: truth and scores must be 2-D [samples, classes]; got truth.shape={truth.shape}, "
            f"scores.shape={scores.shape}")
    if truth.shape != scores.shape:
        raise ValueError(
            f"lwlrap: truth and scores have different shapes: {truth.shape} vs {scores.shape}")
    if truth.shape[1] == 0:
        raise ValueError("lwlrap: need at least one class (got 0 columns)")

    if scores.dtype == bool:
        scores = scores.astype(np.int8)
    elif scores.dtype.kind == "u":
        scores = scores.astype(np.int64 if scores.dtype.itemsize < 8 else np.float64)
    elif scores.dtype.kind not in "if":
        try:
            scores = scores.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"lwlrap: scores must be numeric; got dtype {scores.dtype}") from exc
    if scores.dtype.kind == "f" and not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(
            f"lwlrap: scores must be finite; found {scores[tuple(bad)]!r} at index {tuple(int(b) for b in bad)}")

    if truth.dtype != bool:
        if truth.dtype.kind not in "iuf":
            raise ValueError(f"lwlrap: truth must be a binary 0/1 array; got dtype {truth.dtype}")
        binary = (truth == 0) | (truth == 1)
        if not np.all(binary):
            bad = np.argwhere(~binary)[0]
            raise ValueError(
                f"lwlrap: truth must be binary (0/1); found {truth[tuple(bad)]!r} at index "
                f"{tuple(int(b) for b in bad)}")
        truth = truth == 1
    return truth, scores


_METHODS = ("auto", "pairwise", "sort")
_CHUNK_ELEMENTS = 1 << 21      # bound on the [pairs, C] comparison block of the pairwise method
_PAIRWISE_MAX_MEAN_POSITIVES = 16


def _pairwise(truth: np.ndarray, scores: np.ndarray):
    """(rows, cols, precisions) of the positive pairs by direct comparison with their row.

    O(P C) time for P positive pairs, memory bounded by _CHUNK_ELEMENTS; the fast path for
    sparse truth (FAT 2019: 1-3 labels of 80)."""
    c = scores.shape[1]
    rows, cols = np.nonzero(truth)
    p = rows.size
    s_pos = scores[rows, cols]
    rank = np.empty(p, dtype=np.int64)
    hits = np.empty(p, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // c)
    for a in range(0, p, step):
        b = min(p, a + step)
        ge = scores[rows[a:b]] >= s_pos[a:b, None]       # labels scoring >= this positive
        rank[a:b] = np.count_nonzero(ge, axis=1)
        ge &= truth[rows[a:b]]                           # ... that are positive
        hits[a:b] = np.count_nonzero(ge, axis=1)
    return rows, cols, hits / rank


def _sort(truth: np.ndarray, scores: np.ndarray):
    """(order, precisions in that order): one ascending argsort per row, O(n C log C) whatever
    the number of positives; the fast path for dense truth.

    In ascending order, an element's tie group starts at index ``start``; the labels scoring >= it
    are the C - start from there on, and the positives among them are the row's positives minus
    those before ``start``. Precisions are 0 where truth is 0."""
    n, c = scores.shape
    order = np.argsort(scores, axis=1)
    s = np.take_along_axis(scores, order, axis=1)
    t = np.take_along_axis(truth, order, axis=1)
    is_first = np.empty((n, c), dtype=bool)
    is_first[:, :1] = True
    np.not_equal(s[:, 1:], s[:, :-1], out=is_first[:, 1:])
    start = np.where(is_first, np.arange(c, dtype=np.int64), 0)
    np.maximum.accumulate(start, axis=1, out=start)                 # first index of tie group
    before = np.cumsum(t, axis=1, dtype=np.int64)
    total = before[:, -1:].copy()
    before -= t                                                     # positives strictly before
    hits = total - np.take_along_axis(before, start, axis=1)        # positives with score >= s
    hits *= t
    return order, hits / (c - start)                               # c - start: labels >= s


def _choose(truth: np.ndarray, method: str) -> str:
    if method not in _METHODS:
        raise ValueError(f"lwlrap: method must be one of {_METHODS}, got {method!r}")
    if method != "auto":
        return method
    n_pos = int(np.count_nonzero(truth))
    return "pairwise" if n_pos <= _PAIRWISE_MAX_MEAN_POSITIVES * truth.shape[0] else "sort"


def _class_sums(truth: np.ndarray, scores: np.ndarray, method: str = "auto") -> np.ndarray:
    """Per-class sums of the positive pairs' precisions, float64 [C], on validated inputs."""
    c = truth.shape[1]
    if _choose(truth, method) == "pairwise":
        _, cols, prec = _pairwise(truth, scores)
        return np.bincount(cols, weights=prec, minlength=c)
    order, prec = _sort(truth, scores)
    return np.bincount(order.ravel(), weights=prec.ravel(), minlength=c)


def precision_at_hits(truth, scores, *, method: str = "auto") -> np.ndarray:
    """Per-(sample, positive label) precision, float64 [n, C]; 0 where truth is 0.

    For truth[i, j] = 1: #{positive k with scores[i, k] >= scores[i, j]} divided by
    #{k with scores[i, k] >= scores[i, j]} -- scikit-learn's LRAP precision, exact with ties.

    Args:
      truth: [n, C] binary (bool, or numbers that are all 0 or 1).
      scores: [n, C] finite real scores (any float/int dtype; compared in that dtype).
      method: "pairwise" (compare each positive with its row: O(positives x C), best for sparse
        truth), "sort" (one argsort per row: O(n C log C), best for dense truth), or "auto"
        (pairwise up to 16 positives per sample on average). All give identical results.
    Raises:
      ValueError: not 2-D, shapes differ, zero classes, non-finite scores, non-binary truth.
    """
    truth, scores = _validate(truth, scores)
    out = np.zeros(truth.shape, dtype=np.float64)
    if _choose(truth, method) == "sort":
        order, prec = _sort(truth, scores)
        np.put_along_axis(out, order, prec, axis=1)
    else:
        rows, cols, prec = _pairwise(truth, scores)
        out[rows, cols] = prec
    return out


class LwlrapAccumulator:
    """Streaming, mergeable lwlrap state: per-class sums of precisions and positive counts.

    ``numerator`` is float64 [C], ``count`` int64 [C]; both are plain numpy arrays, so the object
    pickles cleanly (Beam's accumulator coder).
    ``num_classes`` may be left None and is then fixed by the first ``add``.
    """

    __slots__ = ("numerator", "count")

    def __init__(self, num_classes: Optional[int] = None):
        if num_classes is None:
            self.numerator = None
            self.count = None
        else:
            num_classes = int(num_classes)
            if num_classes < 1:
                raise ValueError(f"LwlrapAccumulator: num_classes must be >= 1, got {num_classes}")
            self.numerator = np.zeros(num_classes, dtype=np.float64)
            self.count = np.zeros(num_classes, dtype=np.int64)

    @property
    def num_classes(self) -> Optional[int]:
        return None if self.numerator is None else int(self.numerator.shape[0])

    def _ensure(self, num_classes: int, what: str) -> None:
        if self.numerator is None:
            self.numerator = np.zeros(num_classes, dtype=np.float64)
            self.count = np.zeros(num_classes, dtype=np.int64)
        elif self.numerator.shape[0] != num_classes:
            raise ValueError(
                f"LwlrapAccumulator: {what} has {num_classes} classes, accumulator has "
                f"{self.numerator.shape[0]}")

    def add(self, truth, scores) -> "LwlrapAccumulator":
        """Add a batch ([n, C] arrays) or one sample ([C] arrays). Returns self."""
        return self._add(*_validate(truth, scores, allow_1d=True))

    def _add(self, truth: np.ndarray, scores: np.ndarray) -> "LwlrapAccumulator":
        self._ensure(truth.shape[1], "input")
        self.numerator += _class_sums(truth, scores)
        self.count += np.count_nonzero(truth, axis=0)
        return self

    def merge(self, other: "LwlrapAccumulator") -> "LwlrapAccumulator":
        """Add another accumulator's sums into this one (in place). Returns self."""
        if other.numerator is None:
            return self
        self._ensure(other.numerator.shape[0], "merged accumulator")
        self.numerator += other.numerator
        self.count += other.count
        return self

    @classmethod
    def merged(cls, accumulators: Iterable["LwlrapAccumulator"]) -> "LwlrapAccumulator":
        """A new accumulator holding the sum of ``accumulators`` (which are left unchanged)."""
        out = cls()
        for acc in accumulators:
            out.merge(acc)
        return out

    def overall(self) -> float:
        """lwlrap over everything added; NaN if no positive label has been seen."""
        if self.numerator is None:
            return float("nan")
        total = int(self.count.sum())
        if total == 0:
            return float("nan")
        return float(self.numerator.sum() / total)

    def per_class(self) -> np.ndarray:
        """Per-class lwlrap, float64 [C]; NaN for classes never positive."""
        if self.numerator is None:
            return np.zeros(0, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.numerator / np.maximum(self.count, 1), np.nan)

    def __getstate__(self):
        return (self.numerator, self.count)

    def __setstate__(self, state):
        self.numerator, self.count = state

    def __repr__(self) -> str:
        return (f"LwlrapAccumulator(num_classes={self.num_classes}, "
                f"positives={0 if self.count is None else int(self.count.sum())}, "
                f"lwlrap={self.overall():.6f})")


# The one-shot forms: what bench/bench_lwlrap.py and bench/quality.py score with, and the public
# face of the numpy core that the tests hold against scikit-learn's reference.
def lwlrap(truth, scores) -> float:
    """Overall lwlrap of [n, C] truth and scores (NaN if truth has no positive label)."""
    return LwlrapAccumulator()._add(*_validate(truth, scores)).overall()


def per_class_lwlrap(truth, scores) -> np.ndarray:
    """Per-class lwlrap, float64 [C] (NaN for classes with no positive sample)."""
    return LwlrapAccumulator()._add(*_validate(truth, scores)).per_class()
