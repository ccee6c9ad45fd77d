"""The Evaluator's baseline: BestBlessedModelStrategy, the Resolver strategy of BlessingConfig BEST.

    Resolver(strategy_class=BestBlessedModelStrategy,
             model=Channel(type=Model), model_blessing=Channel(type=ModelBlessing))

Every blessing the project's Evaluator (components/evaluator) writes names the best blessed model
so far (BEST_ID: the winner of that evaluation's head-to-head on the same clips). The baseline is the model that the
newest blessing names, so a model blessed within tolerance but below the best leaves the best in
place and the next candidate meets the best again: quality cannot walk down run after run. Where
the newest blessing names none (blessed before this strategy) or a model not among the resolved
ones, it is TFX's LatestBlessedModelStrategy's choice.

The baseline is a Model artifact that already exists, so a rerun with unchanged inputs hands the
Evaluator the same inputs and TFX's cache holds. Kubeflow V2 compiles TFX's two built-in
strategies only: there the baseline is the latest blessed model (pipeline/orchestration/kubeflow.py).
"""
from __future__ import annotations

from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.types import standard_artifacts

from components.evaluator.executor import BEST_ID


class BestBlessedModelStrategy(resolver.ResolverStrategy):
    def resolve_artifacts(self, store, input_dict):
        latest = LatestBlessedModelStrategy().resolve_artifacts(store, input_dict)
        keys = {type(arts[0]): key for key, arts in input_dict.items() if arts}
        model_key = next((k for t, k in keys.items() if issubclass(t, standard_artifacts.Model)), None)
        blessing_key = next((k for t, k in keys.items() if issubclass(t, standard_artifacts.ModelBlessing)), None)
        if model_key is None or blessing_key is None:
            return latest
        blessed = [b for b in input_dict[blessing_key] if b.get_int_custom_property("blessed") == 1]
        newest = max(blessed, key=lambda b: b.id, default=None)
        best = next((m for m in input_dict[model_key] if newest is not None
                     and m.id == newest.get_int_custom_property(BEST_ID)), None)
        return {model_key: [best], blessing_key: [newest]} if best is not None else latest
