"""lwlrap's confidence intervals by a paired bootstrap over clips (numpy only).

lwlrap is a ratio of sums over clips: sum_i hits_i / sum_i positives_i, where hits_i is the sum of
clip i's precisions at its positive labels (`clip_sums`) and positives_i its number of positive
labels. A bootstrap replicate draws n clips with replacement and recomputes that ratio. Drawing
the SAME clips for every model makes the replicates paired: the interval of
(candidate - baseline) then measures the difference on the same clips, and is narrower than the
two models' own intervals suggest when both models find the same clips hard.

Deterministic: the clips are put in one canonical order (sorted by their values) before a
generator seeded with SEED draws, so an interval does not depend on the order in which Beam
delivered the clips. Intervals are percentile intervals of the replicates.
"""
from __future__ import annotations

import numpy as np

from pipeline.metrics.lwlrap import precision_at_hits

SEED = 0
_CHUNK_ELEMENTS = 1 << 22          # bound on the [resamples, clips] index block drawn at once


def clip_sums(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """(hits [n], positives [n]) of [n, C] truth and scores: per clip, the sum of its precisions at
    its positive labels and its number of positive labels; sum(hits) / sum(positives) is lwlrap."""
    return precision_at_hits(truth, scores).sum(axis=1), np.count_nonzero(truth, axis=1)


def replicates(hits, positives, samples: int = 1000, seed: int = SEED) -> np.ndarray:
    """lwlrap of `samples` resamples of the clips: float64 [samples, m] for hits [m, n] (one row per
    model, the same clips in every column) and positives [n]. Clips without a positive label are
    left out, as lwlrap leaves them out; with no clip left every value is NaN."""
    hits = np.atleast_2d(np.asarray(hits, dtype=np.float64))
    positives = np.asarray(positives, dtype=np.float64).reshape(-1)
    if hits.shape[1] != positives.size:
        raise ValueError(f"bootstrap: {hits.shape[1]} clips of hits but {positives.size} of positives")
    if samples < 1:
        raise ValueError(f"bootstrap: samples must be >= 1, got {samples}")
    keep = positives > 0
    hits, positives = hits[:, keep], positives[keep]
    n = positives.size
    if n == 0:
        return np.full((samples, hits.shape[0]), np.nan)
    order = np.lexsort(np.vstack([hits, positives[None]]))      # canonical: by value, not by arrival
    hits, positives = hits[:, order], positives[order]
    rng = np.random.default_rng(seed)
    out = np.empty((samples, hits.shape[0]))
    step = max(1, _CHUNK_ELEMENTS // n)
    for a in range(0, samples, step):
        idx = rng.integers(0, n, size=(min(step, samples - a), n))
        out[a:a + idx.shape[0]] = hits[:, idx].sum(axis=-1).T / positives[idx].sum(axis=-1)[:, None]
    return out


def interval(values, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the two-sided percentile interval of replicates [samples, ...] along axis 0."""
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [tail, 1 - tail], axis=0)
    return low, high
