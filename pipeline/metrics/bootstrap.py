"""lwlrap's confidence intervals by a paired bootstrap over clips (scipy.stats.bootstrap).

lwlrap is a ratio of sums over clips: sum_i hits_i / sum_i positives_i, where hits_i is the sum of
clip i's precisions at its positive labels (`clip_sums`) and positives_i its number of positive
labels. A bootstrap replicate draws n clips with replacement and recomputes that ratio. Drawing
the SAME clips for every model (`paired=True`) makes the replicates paired: the interval of
(candidate - baseline) then measures the difference on the same clips, and is narrower than the
two models' own intervals suggest when both models find the same clips hard.

Deterministic: the clips are put in one canonical order (sorted by their values) before a
generator seeded with SEED draws, so an interval does not depend on the order in which Beam
delivered the clips. Intervals are percentile intervals of the replicates. (Until issue 31 this was
a hand-written resampler; scipy's intervals differ from it by Monte Carlo noise, of the order of
the spread between two seeds of either, and it is faster from a few hundred clips on: BUILD_NOTES.md.)
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from pipeline.metrics.lwlrap import precision_at_hits

SEED = 0
_CHUNK_ELEMENTS = 1 << 22          # bound on the [resamples, clips] block scipy draws at once


def clip_sums(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """(hits [n], positives [n]) of [n, C] truth and scores: per clip, the sum of its precisions at
    its positive labels and its number of positive labels; sum(hits) / sum(positives) is lwlrap."""
    return precision_at_hits(truth, scores).sum(axis=1), np.count_nonzero(truth, axis=1)


def intervals(hits, positives, differences=(), confidence: float = 0.95, samples: int = 1000,
              seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), float64 [m + len(differences)]: the intervals of each model's lwlrap (hits [m, n],
    one row a model, the same clips in every column; positives [n]), then of row a's minus row b's
    for each (a, b) in `differences`, all from one paired bootstrap. Clips without a positive label
    are left out, as lwlrap leaves them out; with no clip left every value is NaN."""
    hits = np.atleast_2d(np.asarray(hits, dtype=np.float64))
    positives = np.asarray(positives, dtype=np.float64).reshape(-1)
    if hits.shape[1] != positives.size:
        raise ValueError(f"bootstrap: {hits.shape[1]} clips of hits but {positives.size} of positives")
    if samples < 1:
        raise ValueError(f"bootstrap: samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    keep = positives > 0
    hits, positives = hits[:, keep], positives[keep]
    m, n = hits.shape

    def lwlraps(*sample, axis=-1):
        *rows, pos = sample
        values = [r.sum(axis=axis) / pos.sum(axis=axis) for r in rows]
        return np.stack(values + [values[a] - values[b] for a, b in differences])

    if n < 2:       # no clip: nothing to say; one clip: every resample is that clip (scipy needs two)
        point = lwlraps(*hits, positives) if n else np.full(m + len(differences), np.nan)
        return point.copy(), point.copy()
    order = np.lexsort(np.vstack([hits, positives[None]]))      # canonical: by value, not by arrival
    hits, positives = hits[:, order], positives[order]
    result = stats.bootstrap((*hits, positives), lwlraps, paired=True, vectorized=True, n_resamples=samples,
                             batch=max(1, _CHUNK_ELEMENTS // n), confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high
