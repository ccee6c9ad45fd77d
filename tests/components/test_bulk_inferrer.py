"""components/bulk_inferrer: which model scores the test clips (the served one), on TFX artifacts."""
from tfx.types import standard_artifacts

from components.bulk_inferrer import executor


def _model(id_):
    m = standard_artifacts.Model()
    m.id, m.uri = id_, f"/models/{id_}"
    return m


def _inputs(best=None, baseline=None):
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", 1)
    if best is not None:
        blessing.set_int_custom_property("best_model_id", best)
        blessing.set_string_custom_property("not_best", "the served model scored higher")
    inputs = {"examples": [standard_artifacts.Examples()], "model": [_model(2)], "model_blessing": [blessing]}
    if baseline is not None:
        inputs["baseline_model"] = [_model(baseline)]
    return inputs


def test_the_baseline_scores_when_it_beat_the_candidate_on_the_same_clips():
    out = executor.served_model(_inputs(best=1, baseline=1))
    assert [m.id for m in out["model"]] == [1] and "baseline_model" not in out


def test_the_candidate_scores_when_it_is_the_best_or_no_best_was_recorded():
    for inputs in (_inputs(best=2, baseline=1), _inputs(baseline=1), _inputs(best=1)):
        out = executor.served_model(inputs)
        assert [m.id for m in out["model"]] == [2] and "baseline_model" not in out
