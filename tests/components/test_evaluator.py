"""components/evaluator: TFX's Evaluator executor as the pipeline runs it (FnApiRunner), and the
best-blessed-model Resolver strategy, on real exported models scored on the real eval Examples
of the `train_examples` fixture:

    good       the small recipe trained on the eval clips themselves (80 epochs): on these clips a
               genuinely better model (the session's `trained` model, 2 epochs on 47 clips of 80
               labels, scores at chance there)
    worse      the same recipe untrained (seeded random weights), with the same labels
    reordered  that untrained model exported with the labels in another order
    fewer      an untrained model of the first 40 labels only

The Resolver strategies get the blessings the executor wrote (ids as MLMD would number them), so
the chain of BEST baselines is the real one.
"""
import os
import shutil

import numpy as np
import pytest

from pipeline import config
from pipeline.metrics import lwlrap_tfma
from pipeline.metrics.lwlrap import lwlrap

pytestmark = pytest.mark.slow       # real models, TFX's executor and a Beam pipeline per evaluation
POINT, INTERVAL = config.BlessingConfig.POINT, config.BlessingConfig.INTERVAL
BEST, LATEST = config.BlessingConfig.BEST, config.BlessingConfig.LATEST
# the small recipe made to fit the clips it sees: no mixup or dropout, a larger step and head
MEMORIZE = ("epochs: 80 batch_size: 4 augment { mixup_alpha: 0 } model { dropout: 0 dense_units: 64 } "
            "optimizer { learning_rate: 0.01 }")


def _model_artifact(root, model_id: int, export_path: str):
    from tfx.types import standard_artifacts

    model = standard_artifacts.Model()
    model.uri, model.id = str(root / f"model{model_id}"), model_id
    shutil.copytree(export_path, os.path.join(model.uri, "Format-Serving"))
    return model


def _untrained_export(root, name: str, labels: list[str]) -> str:
    import keras

    from pipeline.training import export
    from pipeline.training import model as model_lib

    features, trainer = config.feature_config("small"), config.trainer_config("small")
    keras.utils.set_random_seed(7)
    model = model_lib.build_model(config.mel_shape(features), len(labels), trainer)
    (root / f"{name}.txt").write_text("\n".join(labels) + "\n")
    return export.export_saved_model(model, features, trainer, str(root / f"{name}.txt"), str(root / name),
                                     serving_cfg=config.ServingConfig(warmup_requests=0))


def _trained_on_eval(root, train_examples) -> str:
    from pipeline.training import train

    files = [os.path.join(train_examples.out, f["path"]) for f in train_examples.manifest["splits"]["eval"]["files"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TF_CONFIG", raising=False)
        job = train.job_from_examples(str(train_examples.out), config.trainer_config("small", MEMORIZE),
                                      str(root / "work"), str(root / "export"), files=(files, files))
        return train.train(job)["export_path"]


@pytest.fixture(scope="module")
def artifacts(train_examples, tmp_path_factory):
    """Model artifacts (Format-Serving = an export) and an Examples artifact (Split-eval = the
    fixture's eval shards), laid out as TFX lays them out."""
    from tfx.types import artifact_utils, standard_artifacts

    root = tmp_path_factory.mktemp("evaluator")
    labels = train_examples.labels
    models = {"good": _model_artifact(root, 42, _trained_on_eval(root, train_examples)),
              "worse": _model_artifact(root, 43, _untrained_export(root, "worse", labels)),
              "reordered": _model_artifact(root, 44, _untrained_export(root, "reordered", labels[::-1])),
              "fewer": _model_artifact(root, 45, _untrained_export(root, "fewer", labels[:40]))}
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    os.makedirs(os.path.join(examples.uri, "Split-eval"))
    for f in train_examples.manifest["splits"]["eval"]["files"]:
        shutil.copy(os.path.join(train_examples.out, f["path"]), os.path.join(examples.uri, "Split-eval"))
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return root, models, examples


def _evaluate(artifacts, name, model, blessing, baseline=None):
    """The project's Evaluator executor on `model` (and the Resolver's baseline)."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from components.evaluator import executor

    root, models, examples = artifacts
    evaluation, bless = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, bless.uri = str(root / name / "evaluation"), str(root / name / "blessing")
    os.makedirs(evaluation.uri)
    os.makedirs(bless.uri)
    inputs = {"examples": [examples], "model": [models[model]]}
    if baseline is not None:
        inputs["baseline_model"] = [models[baseline]]
    ctx = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=["--runner=FnApiRunner"])
    executor.Executor(ctx).Do(inputs, {"evaluation": [evaluation], "blessing": [bless]},
                              {"blessing_config": config.to_text(blessing), "example_splits": '["eval"]'})
    return lwlrap_tfma.evaluation_metrics(evaluation.uri), bless


def _verdict(bless) -> str:
    return os.listdir(bless.uri)[0]


def _expected_lwlrap(model, train_examples):
    """lwlrap of the model's serving_default scores on the eval examples, computed here."""
    import tensorflow as tf

    serve = tf.saved_model.load(os.path.join(model.uri, "Format-Serving")).signatures["serving_default"]
    rows = train_examples.records["eval"]
    scores = serve(examples=tf.constant([r.serialized for r in rows]))["scores"].numpy()
    truth = np.zeros(scores.shape, dtype=bool)
    for i, r in enumerate(rows):
        truth[i, r.labels] = True
    return lwlrap(truth, scores)


def test_evaluator_blesses_a_model_over_the_bar_with_exact_lwlrap_and_its_interval(artifacts, train_examples):
    m, bless = _evaluate(artifacts, "first", "good", config.BlessingConfig(min_lwlrap=0.0))
    assert _verdict(bless) == "BLESSED" and bless.get_int_custom_property("blessed") == 1
    assert bless.get_int_custom_property("current_model_id") == 42
    expected = _expected_lwlrap(artifacts[1]["good"], train_examples)
    assert m["baseline"] is None and m["diff"] is None and m["examples"] == len(train_examples.records["eval"])
    assert abs(m["candidate"] - expected) < 1e-6
    low, high = m["candidate_ci"]
    assert low < m["candidate"] < high
    # the first blessed model is the best so far, and says it had no baseline
    assert bless.get_int_custom_property("best_model_id") == 42
    assert bless.get_string_custom_property("baseline_note") == "none (no blessed model yet)"


def test_evaluator_refuses_below_the_bar_with_the_reason(artifacts):
    # lwlrap is at most 1: this bar cannot be cleared
    m, bless = _evaluate(artifacts, "bar", "good", config.BlessingConfig(min_lwlrap=1.01), baseline="good")
    assert _verdict(bless) == "NOT_BLESSED" and bless.get_int_custom_property("blessed") == 0
    assert bless.get_int_custom_property("baseline_model_id") == 42
    assert bless.get_string_custom_property("reason") == f"lwlrap {m['candidate']:.4f} is below min_lwlrap 1.01"
    # the same model as its own baseline: the paired difference is 0 on every resample
    assert m["diff"] == 0 and m["diff_ci"] == (0, 0)
    for gate in (POINT, INTERVAL):
        # equal passes with tolerance 0, and fails when the candidate must beat the baseline by 0.01
        _, bless = _evaluate(artifacts, f"equal{gate}", "good",
                             config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=0.0, gate=gate), baseline="good")
        assert _verdict(bless) == "BLESSED"
        _, bless = _evaluate(artifacts, f"regress{gate}", "good",
                             config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=-0.01, gate=gate), baseline="good")
        assert _verdict(bless) == "NOT_BLESSED"


def test_a_better_baseline_refuses_a_worse_candidate_under_either_gate(artifacts):
    """The trained model as the blessed baseline, its untrained twin as the candidate: refused by
    the point gate and, its paired interval wholly below -tolerance, by the interval gate; and
    the other way round the trained candidate is blessed."""
    for gate in (POINT, INTERVAL):
        cfg = config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=0.01, gate=gate)
        m, bless = _evaluate(artifacts, f"worse{gate}", "worse", cfg, baseline="good")
        assert m["baseline"] - m["candidate"] > 0.05, m          # genuinely better: the models differ
        assert m["diff_ci"][1] < -0.01, m
        assert _verdict(bless) == "NOT_BLESSED" and bless.get_int_custom_property("baseline_model_id") == 42
        reason = bless.get_string_custom_property("reason")
        if gate == POINT:
            assert reason == (f"lwlrap {m['candidate']:.4f} is more than baseline_tolerance 0.01 below the "
                              f"baseline's {m['baseline']:.4f} (POINT gate)")
        else:
            low, high = m["diff_ci"]
            assert reason == (f"candidate - baseline is {m['diff']:+.4f}, 95% paired interval [{low:+.4f}, "
                              f"{high:+.4f}] on {m['examples']} clips: worse than the baseline by more than "
                              "baseline_tolerance 0.01 beyond the eval split's noise (INTERVAL gate)")
        _, bless = _evaluate(artifacts, f"better{gate}", "good", cfg, baseline="worse")
        assert _verdict(bless) == "BLESSED", bless.get_string_custom_property("reason")


@pytest.mark.parametrize("other", ["reordered", "fewer"])
def test_a_baseline_with_other_labels_is_no_baseline(artifacts, other):
    """Its score columns mean other labels: today's code would score it against the wrong labels
    (reordered) or fail on label indices past its outputs (fewer); it is no baseline instead, and
    the candidate is judged by the bar alone."""
    m, bless = _evaluate(artifacts, f"labels-{other}", "good", config.BlessingConfig(min_lwlrap=0.0), baseline=other)
    assert m["baseline"] is None and m["diff"] is None
    assert _verdict(bless) == "BLESSED" and not bless.has_custom_property("baseline_model_id")
    differ = ("the same 80 labels in another order" if other == "reordered"
              else "40 labels, 0 of them not among the candidate's 80")
    assert bless.get_string_custom_property("baseline_note") == (
        f"none: the best blessed model {artifacts[1][other].id} has other labels ({differ}), so it is no baseline")


def _resolve(strategy, models, *blessings):
    """A Resolver strategy's baseline among `models` and the executor's `blessings` (numbered in
    order, as MLMD numbers them)."""
    for i, b in enumerate(blessings):
        b.id = 100 + i
    out = strategy().resolve_artifacts(None, {"model": list(models), "model_blessing": list(blessings)})
    return out["model"][0].id


def test_the_best_blessed_model_stays_the_baseline_so_quality_cannot_drift(artifacts):
    """good is blessed; worse is then blessed within a generous tolerance (the latest blessed
    model, but not the best); the next candidate (worse again) meets good under BEST and is refused
    at tolerance 0.01, while under LATEST it meets only itself and passes."""
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

    from pipeline.orchestration.baseline import BestBlessedModelStrategy

    models = artifacts[1]
    _, first = _evaluate(artifacts, "chain1", "good", config.BlessingConfig(min_lwlrap=0.0))
    m, second = _evaluate(artifacts, "chain2", "worse", config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=1),
                          baseline="good")
    assert _verdict(second) == "BLESSED" and m["baseline"] > m["candidate"]
    assert second.get_int_custom_property("best_model_id") == 42      # the baseline won on the same clips
    low, high = m["diff_ci"]
    assert second.get_string_custom_property("not_best") == (
        f"the served model (model 42) scored higher on the same clips: candidate - baseline {m['diff']:+.4f} "
        f"[{low:+.4f}, {high:+.4f}]")
    assert not first.has_custom_property("not_best")
    pool = (models["good"], models["worse"])
    assert _resolve(BestBlessedModelStrategy, pool, first, second) == 42
    assert _resolve(LatestBlessedModelStrategy, pool, first, second) == 43

    best = config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=0.01, baseline=BEST)
    m, third = _evaluate(artifacts, "chain3-best", "worse", best, baseline="good")
    assert third.get_string_custom_property("baseline_note") == "best blessed model 42"
    assert _verdict(third) == "NOT_BLESSED" and m["diff_ci"][1] < -0.01

    latest = config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=0.01, baseline=LATEST)
    m, third = _evaluate(artifacts, "chain3-latest", "worse", latest, baseline="worse")
    assert third.get_string_custom_property("baseline_note") == "latest blessed model 43"
    assert _verdict(third) == "BLESSED" and m["diff"] == 0
    # the winner of a head-to-head on the same clips is the next best
    _, fourth = _evaluate(artifacts, "chain4", "good", best, baseline="worse")
    assert fourth.get_int_custom_property("best_model_id") == 42
    assert _resolve(BestBlessedModelStrategy, pool, first, second, fourth) == 42
    # a blessing from before BEST_ID existed names no best model: the latest blessed one, as TFX resolves it
    del second.mlmd_artifact.custom_properties["best_model_id"]
    assert _resolve(BestBlessedModelStrategy, pool, first, second) == 43


def test_the_run_report_shows_the_intervals_the_baseline_and_the_reason(artifacts):
    from ml_metadata.proto import metadata_store_pb2

    from pipeline.orchestration import run_report

    cfg = config.BlessingConfig(min_lwlrap=0.0, baseline_tolerance=0.01)
    m, bless = _evaluate(artifacts, "report", "worse", cfg, baseline="good")
    execution = metadata_store_pb2.Execution()
    execution.custom_properties["blessing_config"].string_value = config.to_text(cfg)
    ev = metadata_store_pb2.Artifact(uri=os.path.join(artifacts[0], "report", "evaluation"))
    run = run_report.ComponentRun(component="Evaluator", state="COMPLETE", execution=execution,
                                  outputs={"evaluation": [ev], "blessing": [bless.mlmd_artifact]})
    (c_low, c_high), (b_low, b_high), (d_low, d_high) = m["candidate_ci"], m["baseline_ci"], m["diff_ci"]
    assert run_report.describe(run) == (
        f"lwlrap {m['candidate']:.4f} [{c_low:.4f}, {c_high:.4f}] on {m['examples']} eval examples, baseline "
        f"{m['baseline']:.4f} [{b_low:.4f}, {b_high:.4f}] (best blessed model 42); candidate - baseline {m['diff']:+.4f} [{d_low:+.4f}, {d_high:+.4f}] on the same clips "
        "(95% intervals; gate INTERVAL, tolerance 0.01, min_lwlrap 0) -> NOT BLESSED: "
        + bless.get_string_custom_property("reason"))
