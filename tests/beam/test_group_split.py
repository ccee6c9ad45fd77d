"""A split by group (issue 30 §2): clips cut from one recording, named as kitchen10's takes
(FOLD-RECORDING-TAKE-TARGET), all land in one split with --group_regex, or with the group given by a
column of the training CSV (--group_column) or by a CSV of its own (--group_csv); without any the
split is today's file-name hash, the same Examples, and takes of one recording straddle the split."""
import csv
import os
import shutil
from types import SimpleNamespace

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
    splits = {"eval": {"groups": 2, "shared_groups": 0}, "train": {"groups": 5, "shared_groups": 0}}
    assert split_by({"split_by": {"group_column": "group"}, "splits": splits}) == \
        "by group (column group of the training CSV): groups 2 in eval, 5 in train; 0 in more than one split"
    assert split_by({"split_by": {"group_column": "rec", "group_csv": "/d/g.csv"}, "splits": splits}).startswith(
        "by group (column rec of /d/g.csv): groups 2 in eval")


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _labels_of(takes):
    with open(takes.root / "train_curated.csv", newline="") as f:
        return [row[1] for row in list(csv.reader(f))[1:]]


def test_a_group_column_of_the_training_csv_splits_as_the_regex_does(takes, tmp_path):
    """The recording written as a `group` column (the two loose clips left empty: groups of their
    own): every clip in the split the regex puts it in, the Examples byte for byte the same."""
    data = tmp_path / "data"
    shutil.copytree(takes.root, data)
    rows = [[f, labels, _recording(f) if f[0].isdigit() else ""] for f, labels in zip(takes.fnames, _labels_of(takes))]
    _write_csv(data / "train_curated.csv", [["fname", "labels", "group"], *rows])
    by_column = finished(SimpleNamespace(root=data), tmp_path / "column", "--eval_ratio", "0.3", "--group_column", "group")
    by_regex = finished(takes, tmp_path / "regex", "--eval_ratio", "0.3", "--group_regex", REGEX)
    assert by_column.rc == 0 and by_column.manifest["status"] == output.STATUS_COMPLETE
    assert by_column.manifest["split_by"] == {"group_column": "group"}
    assert _split_of_each(by_column) == _split_of_each(by_regex)
    assert by_fname(by_column.records) == by_fname(by_regex.records)
    splits = by_column.manifest["splits"]
    assert sum(s["groups"] for s in splits.values()) == 18 and sum(s["ungrouped"] for s in splits.values()) == 2
    assert all(s["shared_groups"] == 0 for s in splits.values())


def test_a_group_csv_of_its_own_groups_the_clips_it_lists(takes, tmp_path):
    """A fname,recording CSV (column named by --group_column) listing the first 45 takes: the three
    takes it leaves out, and the loose clips, are groups of their own; the fingerprint-relevant path
    is in the manifest."""
    table = tmp_path / "groups.csv"
    listed = [f for f in takes.fnames if f[0].isdigit()][:45]
    _write_csv(table, [["fname", "recording"], *[["./" + f, _recording(f)] for f in listed]])
    job = finished(takes, tmp_path / "out", "--eval_ratio", "0.3", "--group_csv", str(table),
                   "--group_column", "recording")
    assert job.rc == 0 and job.manifest["split_by"] == {"group_column": "recording", "group_csv": str(table)}
    split = _split_of_each(job)
    for fname, s in split.items():
        key = f"group {_recording(fname)}" if fname in listed else f"clip {fname}"
        assert s == bt.split_of(key, 0.3)
    splits = job.manifest["splits"]
    assert sum(s["ungrouped"] for s in splits.values()) == 5 and sum(s["groups"] for s in splits.values()) == 15 + 5


@pytest.mark.parametrize("table, flags, said", [
    ("fname,group\na.wav,1\n", ["--group_column", "take"], r"no column 'take' in its header \['fname', 'group'\]"),
    ("name,group\na.wav,1\n", [], r"no column 'fname' in its header"),
    ("fname,group\n1-1000-A-0.wav,1\nx.wav,2\n./1-1000-A-0.wav,3\n", [],
     r"line 4: 1-1000-A-0.wav is given group '3', but line 2 gave it '1'"),
    ("fname,group\na.wav,1,extra\n", [], r"line 2: expected 2 columns \(fname,group\), got 3"),
    ("fname,group\n", ["--group_regex", REGEX], "give one way to group clips"),
    ("fname,group\n", ["--group_column", "labels"], "names the labels column itself"),
])
def test_a_group_csv_that_cannot_be_used_is_refused_in_words(takes, tmp_path, table, flags, said):
    path = tmp_path / "groups.csv"
    path.write_text(table)
    with pytest.raises(SystemExit, match=said):
        finished(takes, tmp_path / "bad", "--group_csv", str(path), *flags)


def test_a_group_column_the_training_csv_lacks_is_refused(takes, tmp_path):
    with pytest.raises(SystemExit, match=r"--csv .*train_curated.csv: no column 'group' in its header "
                                         r"\['fname', 'labels'\] \(--group_column names another\)"):
        finished(takes, tmp_path / "bad", "--group_column", "group")
