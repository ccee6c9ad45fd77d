"""The TFX pipeline end to end through `fatp-pipeline` (LocalDagRunner, ML Metadata in SQLite,
caching), on generated data with the small presets: a run that blesses and pushes, a cached
rerun, a run that is refused and pushes nothing, changed data, a run killed during training and
resumed, lineage, bad input; two machines' runs sharing one ML Metadata store on a MariaDB
server; and the same pipeline compiled for Kubeflow V2.

The runs of one pipeline root build on each other (cache, baseline), so they are module fixtures
that run in order: first -> again (the model meets itself as baseline) -> cached -> refused ->
changed data.
"""
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.data import demo_data
from pipeline.metrics import lwlrap_tfma
from pipeline.orchestration import run_local as local_runner
from pipeline.orchestration import run_report

pytestmark = pytest.mark.slow

from tests import REPO
NAME = "fat-test"
TEST_COMPONENTS = ("TestExampleGen", "BulkInferrer", "SubmissionWriter")   # the data folder holds test/


def _flags(root, data, **over) -> list[str]:
    """fatp-pipeline flags: small presets, 2 epochs. The data hold 40 labelled clips + the 9 bad rows
    of the demo generator (18%), so max_error_ratio is raised to 0.3 for the runs to go through and
    report their dead letters; the bad-input test sets it back to 0.05."""
    opts = {"data_dir": data, "pipeline_root": root / "pipeline", "serving_root": root / "serving",
            "pipeline_name": NAME, "feature_preset": "small", "trainer_preset": "small", "epochs": 2,
            "eval_ratio": 0.3, "max_error_ratio": 0.3, **over}
    return [x for k, v in opts.items() for x in (f"--{k}", str(v))]


def _pipeline(capsys, root, data, *switches, metadata_store=None, **over):
    """Run fatp-pipeline; (rc, out, err, MLMD store, {component: ComponentRun} of the latest run).
    switches: flags without a value; metadata_store: a metadata_connection.Store (default: the
    root's SQLite)."""
    rc = local_runner.run(_flags(root, data, **over) + list(switches))
    out, err = capsys.readouterr()
    store = run_report.open_store(metadata_store or str(root / "pipeline" / "metadata.sqlite"))
    run_id = run_report.latest_run_id(store, NAME)
    runs = {r.component: r for r in run_report.component_runs(store, NAME, run_id)} if run_id else {}
    return rc, out, err, store, runs


def _tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfx")
    demo_data.generate(str(root / "data"), train=40, test=4, seed=1, broken=True)
    return root


@pytest.fixture(scope="module")
def first(root):
    """The first run, with a temp folder of its own (test_a_run_leaves_no_copy_of_tfx_in_the_temp_folder)."""
    os.makedirs(root / "tmp")
    with pytest.MonkeyPatch.context() as mp, _Capture() as cap:
        mp.delenv("TF_CONFIG", raising=False)
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        result = _pipeline(cap, root, root / "data", min_lwlrap=0)
    return result


class _Capture:
    """capsys for module fixtures: redirect stdout/stderr to files while a run prints its report."""

    def __enter__(self):
        self._saved = sys.stdout, sys.stderr
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        sys.stdout, sys.stderr = self._out, self._err
        return self

    def readouterr(self):
        texts = []
        for f in (self._out, self._err):
            f.seek(0)
            texts.append(f.read())
            f.seek(0)
            f.truncate()
        return tuple(texts)

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self._saved


def _rerun(root, **over):
    """Another run on the same pipeline root: (its _pipeline result, the serving tree before it)."""
    before = _tree(root / "serving")
    with _Capture() as cap:
        result = _pipeline(cap, root, root / "data", **over)
    return result, before


@pytest.fixture(scope="module")
def again(root, first):
    return _rerun(root, min_lwlrap=0)


@pytest.fixture(scope="module")
def cached(root, again):
    return _rerun(root, min_lwlrap=0)


@pytest.fixture(scope="module")
def refused(root, cached):
    return _rerun(root, min_lwlrap=1.01)    # lwlrap <= 1: out of reach


def test_first_run_blesses_and_pushes_a_model_that_scores(root, first):
    rc, out, err, store, runs = first
    assert rc == 0, err[-3000:]
    assert set(runs) == {"AudioExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer",
                         "latest_blessed_model_resolver", "Evaluator", "Pusher", *TEST_COMPONENTS}
    assert all(r.state == "COMPLETE" for r in runs.values()), {c: r.state for c, r in runs.items()}
    blessing = runs["Evaluator"].outputs["blessing"][0]
    assert run_report.prop(blessing, "blessed") == 1
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    pushed = runs["Pusher"].outputs["pushed_model"][0]
    assert run_report.prop(pushed, "pushed") == 1
    versions = os.listdir(root / "serving" / "fat_tagger")
    assert len(versions) == 1 and versions[0].isdigit()
    version_dir = root / "serving" / "fat_tagger" / versions[0]
    assert run_report.prop(pushed, "pushed_destination") == str(version_dir)
    # the report names the outcome, the figures and the pushed path
    assert "BLESSED" in out and f"pushed {version_dir}" in out and "baseline none (no blessed model yet)" in out
    assert "9 dead letters" in out and "unsafe_path 1" in out
    assert re.search(r"Trainer +COMPLETE +eval lwlrap 0\.\d{4} after 2 epochs \(\d+ s\)", out), out
    # the pushed SavedModel scores the eval examples exactly as the Trainer's model does
    import tensorflow as tf

    examples = runs["AudioExampleGen"].outputs["examples"][0]
    eval_dir = os.path.join(examples.uri, "Split-eval")
    batch = [r.numpy() for f in sorted(os.listdir(eval_dir))
             for r in tf.data.TFRecordDataset(os.path.join(eval_dir, f), compression_type="GZIP")]
    from tests.serving_loader import ServedModel

    served = ServedModel(str(version_dir))        # loaded the way TF Serving loads it
    pushed_scores = served.run("serving_default", examples=np.array(batch, dtype=object))["scores"]
    served.close()
    trained_dir = os.path.join(runs["Trainer"].outputs["model"][0].uri, "Format-Serving")
    trained_scores = tf.saved_model.load(trained_dir).signatures["serving_default"](
        examples=tf.constant(batch))["scores"].numpy()
    assert os.path.exists(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))
    assert pushed_scores.shape == (len(batch), 80)
    np.testing.assert_allclose(pushed_scores, trained_scores, atol=1e-6)
    # and the Evaluator's lwlrap is the lwlrap of those scores
    from pipeline.metrics.lwlrap import lwlrap

    truth = np.zeros(pushed_scores.shape, dtype=bool)
    for i, raw in enumerate(batch):
        truth[i, list(tf.train.Example.FromString(raw).features.feature["labels"].int64_list.value)] = True
    evaluated = lwlrap_tfma.evaluation_metrics(runs["Evaluator"].outputs["evaluation"][0].uri)
    assert abs(evaluated["candidate"] - lwlrap(truth, pushed_scores)) < 1e-5


def test_a_run_leaves_no_copy_of_tfx_in_the_temp_folder(root, first):
    """Before beam_staging, each Beam component (AudioExampleGen, StatisticsGen, Evaluator,
    TestExampleGen, BulkInferrer) left tmpXXXX/build/tfx/ with a 52 MB sdist of TFX behind."""
    left = [os.path.relpath(d, root / "tmp") for d, _, _ in os.walk(root / "tmp")]
    assert not [d for d in left if "tfx" in d.split(os.sep)], left


def test_first_run_ends_with_the_blessed_models_submission(root, first):
    """TestExampleGen (test/, sample_submission.csv) -> BulkInferrer (the Trainer's model with the
    Evaluator's blessing) -> SubmissionWriter: submission.csv in the sample's rows and columns,
    each row the model's serving_default scores of that clip, and the report names its path."""
    import csv

    import tensorflow as tf

    rc, out, err, _, runs = first
    assert rc == 0, err[-3000:]
    assert [a.id for a in runs["BulkInferrer"].inputs["model_blessing"]] == [
        runs["Evaluator"].outputs["blessing"][0].id]
    submission = runs["SubmissionWriter"].outputs["submission"][0]
    path = os.path.join(submission.uri, "submission.csv")
    assert run_report.prop(submission, "written") == 1 and run_report.prop(submission, "path") == path
    assert f"submission {path} (4 rows, 4 scored)" in out
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    with open(root / "data" / "sample_submission.csv", newline="") as f:
        want_header, *want_rows = list(csv.reader(f))
    assert header == want_header and [r[0] for r in rows] == [r[0] for r in want_rows]
    test_dir = os.path.join(runs["TestExampleGen"].outputs["examples"][0].uri, "Split-test")
    batch = [r.numpy() for f in sorted(os.listdir(test_dir))
             for r in tf.data.TFRecordDataset(os.path.join(test_dir, f), compression_type="GZIP")]
    model_dir = os.path.join(runs["Trainer"].outputs["model"][0].uri, "Format-Serving")
    out_ = tf.saved_model.load(model_dir).signatures["serving_default"](examples=tf.constant(batch))
    labels = [x.decode() for x in out_["labels"].numpy()[0]]
    fnames = [tf.train.Example.FromString(x).features.feature["fname"].bytes_list.value[0].decode() for x in batch]
    want = dict(zip(fnames, out_["scores"].numpy()[:, [labels.index(c) for c in header[1:]]]))
    for r in rows:
        np.testing.assert_allclose(np.array(r[1:], float), want[r[0]], rtol=0, atol=1e-5)


def test_first_rerun_meets_its_own_blessing_as_baseline_and_pushes_nothing_new(root, first, again):
    """TFX semantics: after the first blessing, LatestBlessedModelStrategy hands the Evaluator a
    baseline it did not have, so the Evaluator (and Pusher) run again; the Pusher sees that model
    already served and copies nothing."""
    (rc, out, err, _, runs), serving_before = again
    assert rc == 0, err[-3000:]
    for upstream in ("AudioExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer"):
        assert runs[upstream].state == "CACHED", (upstream, runs[upstream].state)
    model = first[4]["Trainer"].outputs["model"][0]
    assert [m.id for m in runs["Evaluator"].inputs["baseline_model"]] == [model.id]
    assert run_report.prop(runs["Evaluator"].outputs["blessing"][0], "blessed") == 1
    pushed = runs["Pusher"].outputs["pushed_model"][0]
    assert run_report.prop(pushed, "pushed") == 1 and run_report.prop(pushed, "reused_version") == 1
    assert run_report.prop(pushed, "pushed_destination") == run_report.prop(
        first[4]["Pusher"].outputs["pushed_model"][0], "pushed_destination")
    assert _tree(root / "serving") == serving_before
    assert "already serving" in out
    # the default baseline is the best blessed model; the model against itself differs by 0 on every resample
    assert f"(best blessed model {model.id}); candidate - baseline +0.0000 [+0.0000, +0.0000] on the same clips" in out


def test_rerun_with_unchanged_inputs_is_served_from_the_cache(root, cached):
    (rc, out, err, _, runs), serving_before = cached
    assert rc == 0, err[-3000:]
    states = {c: r.state for c, r in runs.items() if c != "latest_blessed_model_resolver"}
    assert set(states) == {"AudioExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer",
                           "Evaluator", "Pusher", *TEST_COMPONENTS}
    assert set(states.values()) == {"CACHED"}, states
    assert _tree(root / "serving") == serving_before


def test_a_model_under_the_bar_is_not_blessed_and_not_pushed(root, first, refused):
    (rc, out, err, _, runs), serving_before = refused
    assert rc == 0, err[-3000:]       # the gate working is not a failure of the run
    for upstream in ("AudioExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer"):
        assert runs[upstream].state == "CACHED"
    assert runs["Evaluator"].state == "COMPLETE" and runs["Pusher"].state == "COMPLETE"
    # the baseline is the first run's blessed model (here the same model: the Trainer was cached)
    first_model = first[4]["Trainer"].outputs["model"][0]
    assert [m.id for m in runs["Evaluator"].inputs["baseline_model"]] == [first_model.id]
    blessing = runs["Evaluator"].outputs["blessing"][0]
    assert run_report.prop(blessing, "blessed") == 0
    assert run_report.prop(blessing, "baseline_model_id") == first_model.id
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert run_report.prop(runs["Pusher"].outputs["pushed_model"][0], "pushed") == 0
    assert "NOT BLESSED: lwlrap " in out and " is below min_lwlrap 1.01" in out and "not pushed" in out
    # BulkInferrer predicts nothing with a model that is not blessed, and no submission is written
    submission = runs["SubmissionWriter"].outputs["submission"][0]
    assert run_report.prop(submission, "written") == 0 and not os.path.exists(submission.uri + "/submission.csv")
    assert "no submission (model not blessed" in out
    assert _tree(root / "serving") == serving_before


def _report_of(out: str) -> str:
    """The HTML report's path: the last line a run prints."""
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("report: "), out[-2000:]
    return last[len("report: "):]


def _looked_at(page: str, workdir) -> tuple[str, list[str]]:
    """The page as Chromium renders it: (its DOM, its network requests); the screenshot must not be
    blank (a white page, or one colour)."""
    import matplotlib.image

    from tests import browser

    if browser.binary() is None:
        from tests.conftest import missing_program
        missing_program("no chromium here (Debian's chromium package; `make test` as root installs it)")
    png, dom, _ = browser.render(page, str(workdir))
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3].reshape(-1, 3)
    inked = (pixels.min(axis=1) < 0.85).mean()
    assert inked > 0.03 and len(np.unique((pixels * 255).astype(int), axis=0)) > 50, inked
    shutil.copy(str(workdir / "screenshot.png"), os.path.join(os.path.dirname(page), "screenshot-seen-by-test.png"))
    return dom, browser.page_requests(page, str(workdir))


def test_every_run_writes_an_html_report_a_browser_shows(root, first, tmp_path):
    """Issue 20 §2: the page as a person sees it in Chromium: not blank, the decision, the lwlrap
    MLMD recorded, the data's counts, the training curves and the push in the rendered DOM, and
    not one network request (self-contained: inline SVG and CSS)."""
    from pipeline.metrics import lwlrap_tfma

    rc, out, err, store, runs = first
    page = _report_of(out)
    assert os.path.dirname(page) == str(root / "pipeline" / "reports")
    dom, requests = _looked_at(page, tmp_path)
    assert requests == []
    lwlrap = lwlrap_tfma.evaluation_metrics(runs["Evaluator"].outputs["evaluation"][0].uri)["candidate"]
    assert re.search(r'id="verdict"[^>]*>BLESSED<', dom) and f'id="lwlrap">{lwlrap:.4f}<' in dom
    examples = runs["AudioExampleGen"].outputs["examples"][0]
    assert f'id="rows">{run_report.prop(examples, "input_rows")}<' in dom and 'id="rows">49<' in dom
    assert f'id="dead">{run_report.prop(examples, "dead_letters")}<' in dom and "unknown_label" in dom
    assert "<h2>Training</h2>" in dom and dom.count("<svg") >= 3        # curves, decision, history
    pushed = runs["Pusher"].outputs["pushed_model"][0]
    assert f"version <b>{run_report.prop(pushed, 'pushed_version')}</b>" in dom
    assert "data folder " + str(root / "data") in dom                    # lineage back to the data


def test_a_refused_runs_report_says_why_and_fatp_report_rewrites_any_past_run(root, first, refused, tmp_path):
    from pipeline.orchestration import report_html

    (rc, out, err, store, runs), _ = refused
    page = _report_of(out)          # the newest run's page is latest.html too
    assert open(page).read() == open(root / "pipeline" / "reports" / "latest.html").read()
    text = open(page).read()
    assert "is below min_lwlrap 1.01" in text and "not pushed: the model was not blessed" in text
    first_page = _report_of(first[1])
    os.remove(first_page)                          # a past run's page, written again from MLMD alone
    contexts = run_report.open_store(str(root / "pipeline" / "metadata.sqlite")).get_contexts_by_type("pipeline_run")
    first_run = min(contexts, key=lambda c: (c.create_time_since_epoch, c.id)).name
    with _Capture() as cap:
        assert report_html.main(["--pipeline_root", str(root / "pipeline"), "--pipeline_name", NAME,
                                 "--run", first_run]) == 0
        written = cap.readouterr()[0].strip()
    assert written == first_page and re.search(r'id="verdict"[^>]*>BLESSED<', open(first_page).read())
    # an old run's page leaves latest.html the newest run's
    assert open(root / "pipeline" / "reports" / "latest.html").read() == open(page).read()
    # and as a person sees it (the checks above need no browser)
    dom, requests = _looked_at(page, tmp_path)
    assert requests == [] and re.search(r'id="verdict"[^>]*>NOT BLESSED<', dom)
    from tests import browser                      # the request check can fail: a page that fetches is caught
    canary = tmp_path / "canary.html"
    canary.write_text('<!doctype html><p>canary</p><img src="https://cdn.example.org/x.png">'
                      '<link rel="stylesheet" href="http://fonts.example.net/a.css">')
    (tmp_path / "canary").mkdir()
    caught = browser.page_requests(str(canary), str(tmp_path / "canary"))
    assert "CONNECT cdn.example.org:443" in caught and "GET http://fonts.example.net/a.css" in caught
    assert "is below min_lwlrap 1.01" in dom and "not pushed: the model was not blessed" in dom


def test_the_reports_history_lists_each_evaluation_once_and_only_the_newest(root, first, again, cached, refused,
                                                                             tmp_path, monkeypatch):
    """History: one row per evaluation (the cached run's is its first run's, not a second row), with
    its run, model and decision, oldest first; past HISTORY_SHOWN rows the older ones are counted,
    not listed (a shared store's hundreds of runs were each read back, TFMA included)."""
    from pipeline.orchestration import report_html

    store = run_report.open_store(str(root / "pipeline" / "metadata.sqlite"))
    evaluators = [first[4]["Evaluator"], again[0][4]["Evaluator"], refused[0][4]["Evaluator"]]
    assert cached[0][4]["Evaluator"].state == "CACHED"
    expected = [(run_report.run_of(store, e.execution), e.artifact("model").id, blessed)
                for e, blessed in zip(evaluators, (True, True, False))]
    history = report_html.collect(store, NAME, expected[-1][0])["history"]
    assert [(h["run"], h["model_id"], h["blessed"]) for h in history["shown"]] == expected
    assert history["older"] == 0 and all(0 <= h["lwlrap"] <= 1 for h in history["shown"])
    monkeypatch.setattr(report_html, "HISTORY_SHOWN", 2)
    facts = report_html.collect(store, NAME, expected[-1][0])
    assert [h["run"] for h in facts["history"]["shown"]] == [run for run, _, _ in expected[1:]]
    page = tmp_path / "report.html"
    page.write_text(report_html.render(facts))
    dom, _ = _looked_at(str(page), tmp_path)
    assert "1 earlier evaluation(s) not shown" in dom and dom.count(expected[1][0]) >= 1


def test_pushed_model_traces_back_to_the_data_folder(root, first):
    _, _, _, store, runs = first
    pushed = runs["Pusher"].outputs["pushed_model"][0]
    chain = run_report.lineage(store, pushed.id)
    by_type = {store.get_execution_types_by_id([ex.type_id])[0].name.rsplit(".", 1)[-1]: (ex, ins)
               for ex, ins in chain}
    pusher_inputs = by_type["Pusher"][1]
    assert [a.id for a in pusher_inputs["model"]] == [runs["Trainer"].outputs["model"][0].id]
    assert [a.id for a in pusher_inputs["model_blessing"]] == [runs["Evaluator"].outputs["blessing"][0].id]
    examples = runs["AudioExampleGen"].outputs["examples"][0]
    assert [a.id for a in by_type["Trainer"][1]["examples"]] == [examples.id]
    assert [a.id for a in by_type["Evaluator"][1]["examples"]] == [examples.id]
    example_gen = by_type["AudioExampleGen"][0]
    assert run_report.prop(example_gen, "data_dir") == str(root / "data")
    assert run_report.prop(example_gen, "input_fingerprint").startswith("sha256:")
    assert run_report.prop(examples, "input_fingerprint") == run_report.prop(example_gen, "input_fingerprint")


def test_changed_data_is_a_cache_miss_and_is_judged_against_the_baseline(root, refused):
    data = root / "data"
    extra = data / "train_curated" / "added.wav"
    shutil.copy(data / "train_curated" / "tr00001.wav", extra)
    with open(data / "train_curated.csv", "a") as f:
        f.write("added.wav,Bark\n")
    with _Capture() as cap:
        rc, out, err, _, runs = _pipeline(cap, root, data, min_lwlrap=0, baseline_tolerance=1)
    assert rc == 0, err[-3000:]
    assert runs["AudioExampleGen"].state == "COMPLETE" and runs["Trainer"].state == "COMPLETE"
    examples = runs["AudioExampleGen"].outputs["examples"][0]
    assert run_report.prop(examples, "input_rows") == 40 + 9 + 1
    assert lwlrap_tfma.evaluation_metrics(runs["Evaluator"].outputs["evaluation"][0].uri)["baseline"] is not None
    # blessed (tolerance 1); pushed only if it beat the served model on the same clips (issue 31 §1)
    blessing = runs["Evaluator"].outputs["blessing"][0]
    pushed = runs["Pusher"].outputs["pushed_model"][0]
    assert run_report.prop(blessing, "blessed") == 1
    versions = os.listdir(root / "serving" / "fat_tagger")
    if run_report.prop(blessing, "best_model_id") == runs["Trainer"].outputs["model"][0].id:
        assert len(versions) == 2 and run_report.prop(pushed, "pushed") == 1
    else:                           # the served model scored higher: it stays, and the run says why
        reason = run_report.prop(pushed, "reason")
        assert len(versions) == 1 and run_report.prop(pushed, "pushed") == 0
        assert reason.startswith("blessed, not pushed: the served model (model ") and reason in out
    # the submission is the served model's scores
    import csv

    import tensorflow as tf

    served = tf.saved_model.load(str(root / "serving" / "fat_tagger" / max(versions, key=int)))
    test_dir = os.path.join(runs["TestExampleGen"].outputs["examples"][0].uri, "Split-test")
    batch = [r.numpy() for f in sorted(os.listdir(test_dir))
             for r in tf.data.TFRecordDataset(os.path.join(test_dir, f), compression_type="GZIP")]
    scored = served.signatures["serving_default"](examples=tf.constant(batch))
    labels = [x.decode() for x in scored["labels"].numpy()[0]]
    with open(os.path.join(runs["SubmissionWriter"].outputs["submission"][0].uri, "submission.csv"), newline="") as f:
        header, *rows = list(csv.reader(f))
    fnames = [tf.train.Example.FromString(x).features.feature["fname"].bytes_list.value[0].decode() for x in batch]
    want = dict(zip(fnames, scored["scores"].numpy()[:, [labels.index(c) for c in header[1:]]]))
    for r in rows:
        np.testing.assert_allclose(np.array(r[1:], float), want[r[0]], rtol=0, atol=1e-5)


def test_a_recipe_changed_under_the_same_preset_name_is_a_cache_miss_for_the_trainer(root, refused, monkeypatch):
    """Issue 19 §5: the Trainer's cache key held the preset's name, so a release that changed what
    a preset means (the conv stem becoming the default) reused the old model as today's recipe.
    The key now holds the resolved config: same flags, changed preset -> the Trainer runs again,
    and trains what the key says; the data's components stay cached."""
    from pipeline import config

    changed = config.TRAINER_PRESETS["small"].replace("lstm_units: 8", "lstm_units: 8 conv_channels: 4")
    assert changed != config.TRAINER_PRESETS["small"]
    monkeypatch.setitem(config.TRAINER_PRESETS, "small", changed)
    with _Capture() as cap:
        rc, out, err, _, runs = _pipeline(cap, root, root / "data", min_lwlrap=0, baseline_tolerance=1)
    assert rc == 0, err[-3000:]
    assert runs["AudioExampleGen"].state == "CACHED" and runs["Trainer"].state == "COMPLETE"
    custom = json.loads(run_report.prop(runs["Trainer"].execution, "custom_config"))
    assert "conv_channels: 4" in custom["trainer_config_resolved"] and custom["code_version"].count("code=") == 1
    results = json.load(open(os.path.join(runs["Trainer"].outputs["model_run"][0].uri, "results.json")))
    assert results["trainer_config"]["model"]["conv_channels"] == 4


def test_a_run_killed_during_training_resumes_with_the_finished_components(tmp_path):
    data = tmp_path / "data"
    demo_data.generate(str(data), train=40, test=4, seed=2, broken=False)
    args = [sys.executable, "-m", "pipeline.orchestration.run_local", *_flags(tmp_path, data, epochs=40, min_lwlrap=0)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    backups = tmp_path / "pipeline" / "Trainer" / "backups"
    deadline = time.time() + 600
    try:   # wait until the Trainer has backed up an epoch where a retry looks, then kill the whole run
        while not list(backups.glob("*/LATEST")):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, f"the Trainer wrote no backup under {backups}"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "serving").exists()
    store = run_report.open_store(str(tmp_path / "pipeline" / "metadata.sqlite"))
    killed = {r.component: r.state for r in run_report.component_runs(store, NAME, run_report.latest_run_id(store, NAME))}
    assert killed["AudioExampleGen"] == "COMPLETE" and killed["Trainer"] == "RUNNING", killed
    done_before = {c for c, s in killed.items() if s == "COMPLETE" and c != "latest_blessed_model_resolver"}

    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    # what a person watching the terminal reads (issue 20 §1): each component's start and end with
    # its position, one line per epoch, and none of TensorFlow's start-up notices
    log_text = rerun.stderr
    assert re.search(r"\[1/(\d+)\] AudioExampleGen: cached, [\d.]+ s", log_text), log_text[-3000:]
    assert re.search(r"\[\d+/\d+\] Trainer: executed in \d+ s", log_text)
    assert re.search(r"\[\d+/\d+\] Pusher: executed in \d+ s", log_text)
    assert re.search(r"epoch \d+/40 \(\d+ steps\): loss [\d.]+, .*val_lwlrap [\d.]+ \(best [\d.]+ at epoch \d+\); [\d.]+ s/epoch", log_text)
    assert "oneDNN custom operations" not in log_text and "cuInit" not in log_text
    assert "Reading from pattern" not in log_text and "Resource module" not in log_text   # root-logger chatter
    store = run_report.open_store(str(tmp_path / "pipeline" / "metadata.sqlite"))
    runs = {r.component: r for r in run_report.component_runs(store, NAME, run_report.latest_run_id(store, NAME))}
    resumed = {c: r.state for c, r in runs.items()}
    assert {c: resumed[c] for c in done_before} == {c: "CACHED" for c in done_before}, resumed
    assert resumed["Trainer"] == "COMPLETE" and resumed["Pusher"] == "COMPLETE"
    assert len(os.listdir(tmp_path / "serving" / "fat_tagger")) == 1
    # the retry (a new execution, a new model_run folder) resumed the killed attempt's training
    results = json.load(open(os.path.join(runs["Trainer"].outputs["model_run"][0].uri, "results.json")))
    assert results["resumed"] and results["resumed"]["epoch"] >= 0, results["resumed"]
    assert os.listdir(backups) == []          # deleted once the model was exported


def test_bad_input_above_max_error_ratio_fails_the_example_gen_and_nothing_downstream_runs(root, tmp_path, capsys):
    rc = local_runner.run(_flags(tmp_path, root / "data", max_error_ratio=0.05))
    assert rc == 1
    store = run_report.open_store(str(tmp_path / "pipeline" / "metadata.sqlite"))
    runs = {r.component: r for r in run_report.component_runs(store, NAME, run_report.latest_run_id(store, NAME))}
    assert runs["AudioExampleGen"].state == "FAILED"
    assert not set(runs) & {"StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer", "Evaluator", "Pusher"}
    assert not (tmp_path / "serving").exists()
    # TFX removes a failed execution's outputs; the report of what was wrong is kept beside them
    kept = tmp_path / "pipeline" / "AudioExampleGen" / "failed" / str(runs["AudioExampleGen"].execution.id)
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["counts"]["failed"] == 9
    assert "max_error_ratio 0.05" in manifest["status_reason"]
    assert len((kept / "dead_letters.jsonl").read_text().splitlines()) == 9
    err = capsys.readouterr().err
    assert "FAILED: ExampleGenError" in err and f"report kept in {kept}" in err and "'unsafe_path': 1" in err


def test_the_same_pipeline_compiles_for_kubeflow_v2(tmp_path):
    from pipeline import config
    from pipeline.orchestration import kubeflow
    from pipeline.orchestration import tfx_pipeline

    where = dict(pipeline_name=NAME, pipeline_root="gs://bucket/root", data_dir="gs://bucket/fat2019",
                 serving_root="gs://bucket/serving", example_gen_config=config.AudioExampleGenConfig())
    # the best-blessed-model baseline is the project's Resolver strategy, which Kubeflow V2 cannot compile
    with pytest.raises(ValueError, match=r"build the pipeline with BlessingConfig\(baseline=LATEST\)"):
        kubeflow.compile_pipeline(tfx_pipeline.create_pipeline(**where), str(tmp_path / "best.json"))
    pipeline = tfx_pipeline.create_pipeline(**where, blessing=kubeflow.BLESSING)
    path = kubeflow.compile_pipeline(pipeline, str(tmp_path / "pipeline.json"))
    spec = json.load(open(path))["pipelineSpec"]
    executors = spec["deploymentSpec"]["executors"]
    containers = {k.rsplit("_executor", 1)[0]: v["container"] for k, v in executors.items() if "container" in v}
    assert set(containers) == {"AudioExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer",
                               "Evaluator", "Pusher"}
    assert {c["image"] for c in containers.values()} == {kubeflow.DEFAULT_IMAGE}
    text = json.dumps(spec)
    assert "pipeline.training.train.run_fn" in text and "components.audio_example_gen.executor.Executor" in text
    assert "components.evaluator.executor.Executor" in text
    assert "--runner=FnApiRunner" in " ".join(containers["AudioExampleGen"]["args"])
    assert "gs://bucket/fat2019" in text
    # Kubeflow runs no custom driver (no data fingerprint): the ExampleGen must not be cached there
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["AudioExampleGen"]["cachingOptions"] == {"enableCache": False}
    assert tasks["Trainer"]["cachingOptions"] == {"enableCache": True}
    again = kubeflow.compile_pipeline(pipeline, str(tmp_path / "cached.json"), cache_example_gen=True)
    assert json.load(open(again))["pipelineSpec"]["root"]["dag"]["tasks"]["AudioExampleGen"]["cachingOptions"] == {
        "enableCache": True}


def test_a_serving_config_the_model_would_refuse_stops_the_run_before_it_starts(tmp_path, capsys):
    """--serving_config reaches the pipeline and is checked against the ExampleGen's features
    (small preset: warm-up clips of 1, 3 and 5 s) before any component runs."""
    cfg = tmp_path / "serving.pbtxt"
    cfg.write_text("max_request_seconds: 3")
    rc = local_runner.run(_flags(tmp_path, tmp_path / "data", serving_config=cfg))
    assert rc == 2
    assert "error: invalid ServingConfig for this model: its longest warm-up clip lasts 5 s" in capsys.readouterr().err
    assert not (tmp_path / "pipeline" / "metadata.sqlite").exists()


def test_every_call_of_the_model_stays_within_its_max_batch(tmp_path):
    """A test split and an eval split larger than ServingConfig.max_batch (1 here, 64 by default):
    BulkInferrer's RunInference and TFMA's reads grow their batches past it unless capped, and the
    export refuses every call above it. Without the caps the BulkInferrer failed the run and TFMA
    fell back to one example a call ("Large batch_size ... failed", logged at WARNING)."""
    import csv

    demo_data.generate(str(tmp_path / "data"), train=40, test=12, seed=3, broken=False)
    cfg = tmp_path / "serving.pbtxt"
    cfg.write_text("max_batch: 1 warmup_requests: 1")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)          # TFMA logs its fallback on absl's logger
    try:
        rc = local_runner.run(_flags(tmp_path, tmp_path / "data", serving_config=cfg, min_lwlrap=0,
                                     log_level="WARNING"))
    finally:
        logging.getLogger().removeHandler(handler)
    assert rc == 0
    store = run_report.open_store(str(tmp_path / "pipeline" / "metadata.sqlite"))
    runs = {r.component: r for r in run_report.component_runs(store, NAME, run_report.latest_run_id(store, NAME))}
    evaluated = lwlrap_tfma.evaluation_metrics(runs["Evaluator"].outputs["evaluation"][0].uri)
    assert evaluated["examples"] > 2 and "Large batch_size" not in logs.getvalue()
    submission = runs["SubmissionWriter"].outputs["submission"][0]
    with open(os.path.join(submission.uri, "submission.csv"), newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 12


@pytest.fixture(scope="module")
def team(tmp_path_factory, mariadb):
    """Two machines of a team: pipeline roots alice/ and bob/, the data and the serving root on
    storage both see, ML Metadata in one MariaDB database (created by the first run, as asked).
    Bob runs at --log_level INFO (TFX then logs its deployment config, connection included)."""
    from pipeline.orchestration import metadata_connection

    shared = tmp_path_factory.mktemp("team")
    demo_data.generate(str(shared / "data"), train=40, test=4, seed=3, broken=True)
    uri = mariadb.uri("fatp_team")
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    handler.setLevel(logging.INFO)
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TF_CONFIG", raising=False)
        mp.setenv(metadata_connection.PASSWORD_ENV, mariadb.password)
        store = metadata_connection.from_flags(uri, "")
        common = dict(serving_root=shared / "serving", metadata=uri, min_lwlrap=0, metadata_store=store)
        logging.getLogger().addHandler(handler)
        try:
            with _Capture() as cap:
                results["alice"] = _pipeline(cap, shared / "alice", shared / "data", "--create_metadata_database",
                                             **common)
                results["bob"] = _pipeline(cap, shared / "bob", shared / "data", log_level="INFO", **common)
        finally:
            logging.getLogger().removeHandler(handler)
    return SimpleNamespace(shared=shared, uri=uri, server=mariadb.server, password=mariadb.password,
                           logs=logged.getvalue(), **results)


def test_two_machines_share_one_mysql_store_the_second_caches_and_meets_the_first_blessing(team):
    rc, out, err, _, alice = team.alice
    assert rc == 0, err[-3000:]
    assert {r.state for r in alice.values()} == {"COMPLETE"}, {c: r.state for c, r in alice.items()}
    assert f"ML Metadata {team.uri}" in out and "BLESSED" in out
    rc, out, err, store, bob = team.bob
    assert rc == 0, err[-3000:]
    # bob's unchanged components are alice's executions' results: her artifacts, in her pipeline root
    for upstream, key in (("AudioExampleGen", "examples"), ("StatisticsGen", "statistics"), ("SchemaGen", "schema"),
                          ("ExampleValidator", "anomalies"), ("Trainer", "model")):
        assert bob[upstream].state == "CACHED", (upstream, bob[upstream].state)
        assert [a.id for a in bob[upstream].outputs[key]] == [a.id for a in alice[upstream].outputs[key]]
        assert bob[upstream].outputs[key][0].uri.startswith(str(team.shared / "alice")), upstream
    # the baseline resolver found alice's blessed model in the shared store
    assert [m.id for m in bob["Evaluator"].inputs["baseline_model"]] == [alice["Trainer"].outputs["model"][0].id]
    assert "baseline none" not in out and "BLESSED" in out and "already serving" in out
    pushed = bob["Pusher"].outputs["pushed_model"][0]
    assert run_report.prop(pushed, "reused_version") == 1
    assert len(os.listdir(team.shared / "serving" / "fat_tagger")) == 1
    # the report was read from the store the run used, and no root grew a SQLite store of its own
    assert f"ML Metadata {team.uri}" in out
    assert not list(team.shared.glob("*/pipeline/metadata.sqlite"))


def test_the_password_is_in_no_output_log_file_or_metadata_row(team):
    texts = [t for run in (team.alice, team.bob) for t in run[1:3]] + [team.logs]
    for text in texts:
        assert team.password not in text
    assert "Using deployment config" in team.logs and "********" in team.logs   # TFX's INFO line, blanked
    for path in team.shared.rglob("*"):
        if path.is_file():
            assert team.password.encode() not in path.read_bytes(), path
    dump = team.server.dump("fatp_team")
    assert "MLMDEnv" in dump and team.password not in dump


def test_two_users_running_at_once_on_one_store_each_get_their_own_runs_report(tmp_path, mariadb):
    """Two fatp-pipeline processes on two pipeline roots, one MariaDB store, started together: both
    complete, each summary and report names its own run (before, both named the store's latest
    run), each root's latest.html is its own run's, and MLMD holds two runs."""
    from pipeline.orchestration import metadata_connection

    demo_data.generate(str(tmp_path / "data"), train=40, test=4, seed=5, broken=False)
    uri = mariadb.uri("fatp_concurrent")
    env = {**os.environ, metadata_connection.PASSWORD_ENV: mariadb.password}
    env.pop("TF_CONFIG", None)
    store = metadata_connection.from_flags(uri, "", environ={metadata_connection.PASSWORD_ENV: mariadb.password})
    metadata_connection.check(store, create_database=True)        # an existing store, as a team's is
    procs = {}
    for who in ("alice", "bob"):
        flags = _flags(tmp_path / who, tmp_path / "data", metadata=uri, min_lwlrap=0, epochs=1)
        procs[who] = subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.run_local", *flags], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {who: (p.wait(timeout=1200), *p.communicate()) for who, p in procs.items()}
    run_ids = {}
    for who, (rc, out, err) in results.items():
        assert rc == 0, err[-3000:]
        run_ids[who] = re.search(r"^pipeline \S+, run (\S+) \(", out, re.M).group(1)
        page = _report_of(out)
        assert page.startswith(str(tmp_path / who)) and f"run {run_ids[who]}" in open(page).read()
    assert run_ids["alice"] != run_ids["bob"]
    mlmd = run_report.open_store(store)
    assert {c.name for c in mlmd.get_contexts_by_type("pipeline_run")} == set(run_ids.values())
    for who, run_id in run_ids.items():
        runs = run_report.component_runs(mlmd, NAME, run_id)
        assert {r.component for r in runs} >= {"Trainer", "Evaluator", "Pusher"}
        assert all(r.state in ("COMPLETE", "CACHED") for r in runs), \
            "\n".join(f"{r.component} {r.state} execution {r.execution.id}" for r in runs) + results[who][2][-3000:]
    for who, run_id in run_ids.items():    # each root's latest.html is its own run, whichever the store saw last
        assert f"run {run_id}" in (tmp_path / who / "pipeline" / "reports" / "latest.html").read_text()


def test_the_components_that_group_run_on_one_local_worker_and_nowhere_else():
    """tfx_pipeline.ONE_WORKER (Beam's multi-threaded local runner loses GroupByKey elements): added
    for the local runner (TFX puts a component's flags after the pipeline's, so they win); nothing for
    other runners."""
    from pipeline.orchestration import tfx_pipeline

    assert tfx_pipeline.safe_component_flags([]) == tfx_pipeline.ONE_WORKER
    assert tfx_pipeline.safe_component_flags(["--runner=DirectRunner", "--direct_num_workers=2"]) == \
        ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    assert tfx_pipeline.safe_component_flags(["--runner=DaskRunner"]) == []
    assert tfx_pipeline.safe_component_flags(["--runner=DataflowRunner"]) == []
