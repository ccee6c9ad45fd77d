"""A split by group (issue 30 §2): clips cut from one recording, named as kitchen10's takes
(FOLD-RECORDING-TAKE-TARGET), all land in one split with --group_regex; without it the split is
today's file-name hash, the same Examples, and takes of one recording straddle the split."""
import csv
import os

import pytest

from pipeline.beam import transforms as bt
from pipeline.data import demo_data
from pipeline.data import job_output as output
from tests.beam.test_feature_job import by_fname, finished, parse

REGEX = "^[0-9]+-([0-9]+)-"


@pytest.fixture(scope="module")
def takes(tmp_path_factory):
    """The demo's clips renamed as takes: 16 recordings of 3 takes, and 2 names of no recording."""
    root = tmp_path_factory.mktemp("takes")
    demo_data.generate(str(root), train=50, test=2, seed=11, broken=False)
    with open(root / "train_curated.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    renamed = []
    for i, (fname, labels) in enumerate(rows):
        new = f"1-{1000 + i // 3}-{'ABC'[i % 3]}-0.wav" if i < 48 else f"loose{i}.wav"
        os.rename(root / "train_curated" / fname, root / "train_curated" / new)
        renamed.append([new, labels])
    with open(root / "train_curated.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *renamed])
    return type("Data", (), {"root": root, "fnames": [r[0] for r in renamed]})


def _split_of_each(job):
    return {f.decode(): split for split, recs in job.records.items() for f in parse(recs)["fname"].numpy()}


def _recording(fname):
    return fname.split("-")[1] if fname[0].isdigit() else fname


def test_a_group_never_sits_on_both_sides_and_the_manifest_says_how_it_split(takes, tmp_path):
    job = finished(takes, tmp_path / "grouped", "--eval_ratio", "0.3", "--group_regex", REGEX)
    assert job.rc == 0 and job.manifest["status"] == output.STATUS_COMPLETE
    split = _split_of_each(job)
    assert sorted(split) == sorted(takes.fnames)
    by_group = {}
    for fname, s in split.items():
        by_group.setdefault(_recording(fname), set()).add(s)
    assert all(len(s) == 1 for s in by_group.values()) and {"train", "eval"} <= set().union(*by_group.values())
    for fname, s in split.items():                       # the split is the group's hash, not the name's
        key = f"group {_recording(fname)}" if fname[0].isdigit() else f"clip {fname}"
        assert s == bt.split_of(key, 0.3)
    assert job.manifest["split_by"] == {"group_regex": REGEX}
    splits = job.manifest["splits"]
    assert sum(s["groups"] for s in splits.values()) == 16 + 2
    assert all(s["shared_groups"] == 0 for s in splits.values())
    assert sum(s["ungrouped"] for s in splits.values()) == 2


def test_without_a_regex_the_split_is_the_file_name_hash_and_the_examples_are_the_same(takes, tmp_path):
    grouped = finished(takes, tmp_path / "grouped", "--eval_ratio", "0.3", "--group_regex", REGEX)
    plain = finished(takes, tmp_path / "plain", "--eval_ratio", "0.3")
    assert plain.rc == 0 and plain.manifest["split_by"] == "file name"
    assert all("groups" not in s for s in plain.manifest["splits"].values())
    split = _split_of_each(plain)
    assert all(s == bt.split_of(f, 0.3) for f, s in split.items())
    # the file-name hash puts takes of one recording on both sides: what the group split is for
    straddling = {_recording(f) for f in split if {split[g] for g in split if _recording(g) == _recording(f)}
                  == {"train", "eval"}}
    assert straddling
    assert by_fname(plain.records) == by_fname(grouped.records)     # only the split differs, byte for byte


@pytest.mark.parametrize("regex, said", [("^[0-9]+-", "has no group"), ("([", "--group_regex '(['")])
def test_a_regex_without_a_group_or_that_does_not_compile_is_refused(takes, tmp_path, regex, said):
    with pytest.raises(SystemExit, match=said.replace("(", r"\(").replace("[", r"\[")):
        finished(takes, tmp_path / "bad", "--group_regex", regex)


def test_the_examples_artifact_says_how_the_clips_were_split(takes, tmp_path):
    from components.audio_example_gen.executor import split_by

    job = finished(takes, tmp_path / "grouped", "--eval_ratio", "0.3", "--group_regex", REGEX)
    text = split_by(job.manifest)
    assert text.startswith(f"by group (regex {REGEX}): groups ") and " in eval, " in text
    assert text.endswith("; 0 in more than one split; 2 clips matched no group (each its own)")
    assert split_by({"split_by": "file name"}) == "by file name"
