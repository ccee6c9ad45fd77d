"""A workaround for Keras 3's model.fit under MultiWorkerMirroredStrategy (keras-team/keras#20585).

Keras 3.15 (the pinned version) fails there in two places: building the model from the first
batch converts a PerReplica value to a tensor ("Attempt to convert a value (PerReplica...) to a
Tensor"), and each step's scalar logs are reduced along axis 0 ("Invalid reduction dimension 0 for
input with 0 dimensions"). `apply()` patches both, only for multi-worker strategies: the first
batch is taken from the local replica, and per-replica scalars are averaged with axis=None. Other
strategies go through Keras' own code untouched.

It patches private Keras functions, so it checks they exist and is applied only by the trainer
for multi-worker runs; FATP_KERAS_MULTIWORKER_PATCH=0 turns it off (the tests use that to notice
when a Keras release fixes the bug, and this module can go).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_applied = False


def apply() -> bool:
    """Patch Keras once; returns whether the patch is active."""
    global _applied
    if _applied:
        return True
    if os.environ.get("FATP_KERAS_MULTIWORKER_PATCH", "1") == "0":
        return False
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as kt

    needed = ("_collective_all_reduce_multi_worker", "reduce_per_replica")
    if not all(hasattr(kt, n) for n in needed) or not hasattr(kt.TensorFlowTrainer, "_maybe_symbolic_build"):
        log.warning("Keras internals changed; multi-worker workaround not applied (keras-team/keras#20585)")
        return False
    build, reduce = kt.TensorFlowTrainer._maybe_symbolic_build, kt.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and kt._collective_all_reduce_multi_worker(strategy):
            for _, _, it in iterator:
                data_batch = tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], next(it))
                break
            iterator = None
        return build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if kt._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce(values, strategy, reduction)

    kt.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    kt.reduce_per_replica = reduce_per_replica
    _applied = True
    log.info("applied the Keras multi-worker fit workaround (keras-team/keras#20585)")
    return True
