"""pipeline/serving/submission.py: scores joined to the sample's rows by file name, written in the
sample's order across several shards, on Beam's local runner."""
import csv
import json
import os

import apache_beam as beam
import numpy as np
import pytest

from pipeline import fileio
from pipeline.serving import submission

LABELS = ["a", "b", "c"]


def _sample(path, fnames, columns=("c", "a", "b")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["fname", *columns], *([n, 0, 0, 0] for n in fnames)])
    return str(path), list(columns)


def _run(tmp_path, fnames, scores, allow_missing=False, shard_rows=4):
    sample, columns = _sample(tmp_path / "sample.csv", fnames)
    out = str(tmp_path / "submission.csv")
    summary = str(tmp_path / "summary.json")
    with beam.Pipeline(runner="FnApiRunner") as p:
        _ = (p | beam.Create(scores)
             | submission.WriteSubmission(sample, columns, LABELS, out, allow_missing, "model", "see the log",
                                          shard_rows=shard_rows)
             | beam.Map(lambda s: fileio.write_json(summary, s)))
    with open(summary) as f:
        found = json.load(f)
    os.remove(summary)
    return out, found


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_rows_follow_the_sample_across_shards_with_columns_by_label_name(tmp_path):
    fnames = [f"clip{i:02d}.wav" for i in range(23)][::-1]           # not sorted: the sample's order counts
    rng = np.random.default_rng(0)
    scores = {f: rng.random(3).astype(np.float32) for f in fnames}
    given = [(f, scores[f]) for f in sorted(fnames)] + [("stranger.wav", np.ones(3, np.float32))]
    out, summary = _run(tmp_path, fnames, given)
    header, *rows = _rows(out)
    assert header == ["fname", "c", "a", "b"]
    assert [r[0] for r in rows] == fnames
    for r in rows:
        np.testing.assert_allclose(np.array(r[1:], float), scores[r[0]][[2, 0, 1]], atol=1e-5)
    assert summary == {"model": "model", "rows": 23, "scored": 23, "missing": 0, "missing_named": []}
    assert sorted(os.listdir(tmp_path)) == ["sample.csv", "submission.csv"]      # parts removed


def test_missing_rows_fail_by_name_unless_zeros_are_allowed(tmp_path):
    fnames = [f"clip{i}.wav" for i in range(9)]
    given = [(f, np.full(3, 0.5, np.float32)) for f in fnames if f not in ("clip3.wav", "clip7.wav")]
    (tmp_path / "a").mkdir()
    out, summary = _run(tmp_path / "a", fnames, given)
    assert "2 clips have no scores (see the log): clip3.wav, clip7.wav" in summary["error"]
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path / "a")) == ["sample.csv"]
    (tmp_path / "b").mkdir()
    out, summary = _run(tmp_path / "b", fnames, given, allow_missing=True)
    rows = {r[0]: r[1:] for r in _rows(out)[1:]}
    assert rows["clip3.wav"] == ["0"] * 3 and rows["clip0.wav"] == ["0.5"] * 3
    assert summary["missing"] == 2 and summary["scored"] == 7


def test_a_clip_scored_twice_fails(tmp_path):
    given = [("x.wav", np.zeros(3, np.float32)), ("x.wav", np.ones(3, np.float32)), ("y.wav", np.ones(3, np.float32))]
    out, summary = _run(tmp_path, ["x.wav", "y.wav"], given)
    assert summary["error"] == "1 clips were scored more than once: x.wav" and not os.path.exists(out)


def test_other_labels_than_the_models_are_refused_before_the_job(tmp_path):
    sample, _ = _sample(tmp_path / "s.csv", ["x.wav"], columns=("a", "b", "z"))
    with pytest.raises(ValueError, match="label columns differ"):
        submission.WriteSubmission(sample, ["a", "b", "z"], LABELS, str(tmp_path / "o.csv"), False, "m", "")
