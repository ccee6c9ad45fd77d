"""pipeline/serving/batch_predict.py: a folder or a Kaggle test/ scored by a Beam job (the feature
job's transforms, RunInference over the SavedModel), on FnApiRunner and on the project's DaskRunner,
against local fatp-predict's scores of the same clips."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from pipeline.serving import batch_predict
from pipeline.serving import predict
from pipeline.training import dataset

pytestmark = pytest.mark.slow


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def run(model, out, *flags):
    return batch_predict.run(["--model", model, "--output_dir", str(out), "--log_level", "WARNING", *flags])


def scores_shards(out, manifest):
    """{fname: [(label, score), ...]} from the top-k shards the manifest lists (each with its header)."""
    got = {}
    for name in manifest["scores"]:
        header, rows = read_csv(out / name)
        assert header[:3] == ["fname", "label_1", "score_1"]
        for r in rows:
            assert r[0] not in got
            got[r[0]] = [(r[i], float(r[i + 1])) for i in range(1, len(r), 2)]
    return got


@pytest.fixture(scope="module")
def local(trained, test_examples):
    """fatp-predict's local scores of the test clips: {fname: scores}, and the model's labels."""
    _, _, results = trained
    files, _ = dataset.split_files(str(test_examples), "test")
    fnames, scores, labels = predict.score_examples(results["export_path"], files)
    return dict(zip(fnames, scores)), labels


def assert_matches_local(out, local, sample):
    by_fname, labels = local
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"input_rows": 8, "scored": 8, "failed": 0, "failed_by_reason": {}}
    header, rows = read_csv(out / "submission.csv")
    want_header, want_rows = read_csv(sample)
    assert header == want_header and [r[0] for r in rows] == [r[0] for r in want_rows]
    for r in rows:
        want = by_fname[r[0]][[labels.index(c) for c in header[1:]]]
        np.testing.assert_allclose(np.array(r[1:], float), want, rtol=0, atol=1e-5)
    top = scores_shards(out, manifest)
    assert sorted(top) == sorted(by_fname)
    for fname, pairs in top.items():
        best = np.argsort(-by_fname[fname], kind="stable")[:5]
        assert [lab for lab, _ in pairs] == [labels[i] for i in best]
        np.testing.assert_allclose([s for _, s in pairs], by_fname[fname][best], rtol=0, atol=1e-5)
    return rows


def test_direct_and_dask_runners_score_as_local_fatp_predict(trained, train_examples, local, tmp_path):
    """--data_dir (test/ + sample_submission.csv) on FnApiRunner with 2 workers and on DaskRunner
    with a local cluster of 2 processes: submission.csv in the sample's order and columns, top-5
    shards, both equal to fatp-predict's local scores within 1e-5 (and so to each other)."""
    _, _, results = trained
    export_base = os.path.dirname(results["export_path"])
    sample = train_examples.data / "sample_submission.csv"
    assert run(export_base, tmp_path / "direct", "--data_dir", str(train_examples.data), "--runner=DirectRunner",
               "--direct_num_workers=2") == 0
    assert run(export_base, tmp_path / "dask", "--data_dir", str(train_examples.data), "--runner=DaskRunner",
               "--dask_local_workers=2", "--inference_batch_size=3") == 0
    direct = assert_matches_local(tmp_path / "direct", local, sample)
    dask = assert_matches_local(tmp_path / "dask", local, sample)
    np.testing.assert_allclose(np.array([r[1:] for r in direct], float), np.array([r[1:] for r in dask], float),
                               rtol=0, atol=1e-5)
    assert not [f for f in os.listdir(tmp_path / "dask") if "tmp" in f or f.startswith("beam-temp")]


@pytest.fixture
def data(train_examples, tmp_path):
    """A copy of the fixture's test/ with a file that is not audio, listed in sample_submission.csv."""
    data = tmp_path / "data"
    shutil.copytree(train_examples.data / "test", data / "test")
    (data / "test" / "broken.wav").write_bytes(b"<html>not a wav</html>\n" * 20)
    header, rows = read_csv(train_examples.data / "sample_submission.csv")
    with open(data / "sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows[:3], ["broken.wav", *rows[0][1:]], *rows[3:]])
    return data


def test_a_clip_without_scores_fails_the_run_by_name_unless_allowed(trained, data, tmp_path):
    _, _, results = trained
    out = tmp_path / "out"
    assert run(results["export_path"], out, "--data_dir", str(data), "--direct_num_workers=1") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "broken.wav" in manifest["status_reason"]
    assert "--allow_missing" in manifest["status_reason"] and manifest["submission"] is None
    assert not (out / "submission.csv").exists()
    dead = [json.loads(x) for x in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert [(d["fname"], d["line"], d["reason"]) for d in dead] == [("broken.wav", 5, "not_audio")]
    assert manifest["counts"]["scored"] == 8 and manifest["counts"]["failed_by_reason"] == {"not_audio": 1}

    assert run(results["export_path"], out, "--data_dir", str(data), "--direct_num_workers=1") == 2   # used folder
    assert run(results["export_path"], out, "--data_dir", str(data), "--direct_num_workers=1", "--allow_missing",
               "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["submission"]["missing"] == 1
    assert manifest["submission"]["missing_named"] == ["broken.wav"]
    _, rows = read_csv(out / "submission.csv")
    assert rows[3][0] == "broken.wav" and set(rows[3][1:]) == {"0"} and len(rows) == 9


def test_a_folder_without_sample_submission_scores_every_file_under_it(trained, data, tmp_path):
    """An archive: every file under the folder, sub-folders too, is a clip; what cannot be decoded is a
    dead letter; there is no submission, only the top-k shards."""
    _, _, results = trained
    nested = data / "test" / "more" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(data / "test" / "te00000.wav", nested / "copy.wav")
    out = tmp_path / "out"
    assert run(results["export_path"], out, "--audio_dir", str(data / "test"), "--top_k", "3",
               "--direct_num_workers=1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["submission"] is None
    assert manifest["counts"]["scored"] == 9 and manifest["counts"]["failed_by_reason"] == {"not_audio": 1}
    top = scores_shards(out, manifest)
    assert "more/deeper/copy.wav" in top and "broken.wav" not in top and len(top) == 9
    assert all(len(pairs) == 3 for pairs in top.values())
    assert top["more/deeper/copy.wav"] == top["te00000.wav"]
    assert not (out / "submission.csv").exists()


def test_features_other_than_the_models_are_refused(trained, data, tmp_path):
    """--feature_config may change the decode limits only (it is merged over the model's own config)."""
    _, _, results = trained
    other = tmp_path / "other.pbtxt"
    other.write_text("n_mels: 64")
    assert run(results["export_path"], tmp_path / "o1", "--data_dir", str(data), "--feature_config", str(other)) == 2
    assert not (tmp_path / "o1").exists()
    limits = tmp_path / "limits.pbtxt"
    limits.write_text("limits { max_file_bytes: 600 }")      # every clip but the 460-byte broken.wav is too large
    assert run(results["export_path"], tmp_path / "o2", "--data_dir", str(data), "--feature_config", str(limits),
               "--direct_num_workers=1") == 1
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["counts"]["failed_by_reason"] == {"too_large": 8, "not_audio": 1}


def test_a_request_beyond_the_model_is_refused_before_the_job(trained, data, tmp_path, caplog):
    """--top_k above the model's label count (it wrote a header wider than its rows) and an inference
    batch above the model's max_batch (every call would be refused) stop the command at once."""
    _, _, results = trained
    for flags, said in ((["--top_k", "81"], "--top_k 81: the model has 80 labels"),
                        (["--inference_batch_size", "65"], "the model takes 1 to 64 examples a call")):
        out = tmp_path / flags[0].strip("-")
        assert run(results["export_path"], out, "--data_dir", str(data), *flags) == 2
        assert said in caplog.text and (not out.exists() or not any(out.iterdir()))
