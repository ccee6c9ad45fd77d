"""The feature job's sources (issue 22 §2): FAT2019's train_noisy.csv read beside train_curated.csv,
with the same checks and dead letters, a `source` on every Example of such a run, the eval split
kept curated, per-source counts; and without train_noisy.csv (or with --no_noisy) the very same
Examples as a curated-only layout, byte for byte."""
import json
import shutil
from types import SimpleNamespace

import pytest
import tensorflow as tf

from pipeline import config
from pipeline.beam import cli, feature_job
from pipeline.beam import transforms as bt
from pipeline.data import demo_data
from pipeline.data import example_schema as examples
from pipeline.data import job_output as output
from tests.beam.test_feature_job import read_records

CFG = config.feature_config("small")
SEED_KEYS = {"fname", "labels", "mel", "mel_shape", "source_seconds"}


def _layout(root, noisy=0, broken=False):
    return demo_data.generate(str(root), train=24, test=2, seed=3, broken=broken, noisy=noisy)


# ---------------------------------------------------------------------------------------------
# which sources a job reads (the driver's checks: no Beam)


def test_the_noisy_source_is_read_when_the_layout_has_it_and_left_out_on_request(tmp_path):
    with_noisy, without = tmp_path / "with", tmp_path / "without"
    _layout(with_noisy, noisy=3)
    _layout(without)
    spec = lambda data, **kw: feature_job.make_spec(output_dir=str(tmp_path / "o"), cfg=CFG, data_dir=str(data), **kw)  # noqa: E731
    auto = spec(with_noisy)
    assert [s[0] for s in auto.sources] == ["curated", "noisy"]
    assert auto.noisy_csv == str(with_noisy / "train_noisy.csv")
    assert auto.noisy_audio_dir == str(with_noisy / "train_noisy")
    assert auto.expected_rows == 24 + 3 and auto.inputs["noisy_csv"] == auto.noisy_csv
    assert [s[0] for s in spec(with_noisy, noisy=False).sources] == ["curated"]
    plain = spec(without)
    assert [s[0] for s in plain.sources] == ["curated"] and "noisy_csv" not in plain.inputs
    assert [s[0] for s in spec(with_noisy, mode="test").sources] == ["test"]


@pytest.mark.parametrize("kwargs,message", [
    ({"noisy": True}, r"--noisy_csv .*train_noisy.csv does not exist \(the noisy source: --no_noisy leaves it out\)"),
    ({"noisy_csv": "elsewhere.csv"}, r"--noisy_csv elsewhere.csv does not exist"),
    ({"noisy": False, "noisy_csv": "x.csv"}, "--no_noisy leaves the noisy source out"),
    ({"noisy": True, "mode": "test"}, "test mode reads sample_submission.csv's clips only"),
])
def test_a_noisy_source_asked_for_and_not_there_is_refused_with_the_reason(tmp_path, kwargs, message):
    _layout(tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        feature_job.make_spec(output_dir=str(tmp_path / "o"), cfg=CFG, data_dir=str(tmp_path / "data"), **kwargs)


def test_a_noisy_csv_without_its_audio_folder_is_refused(tmp_path):
    _layout(tmp_path / "data", noisy=2)
    shutil.rmtree(tmp_path / "data" / "train_noisy")
    with pytest.raises(ValueError, match=r"--noisy_audio_dir .*train_noisy does not exist \(the noisy source"):
        feature_job.make_spec(output_dir=str(tmp_path / "o"), cfg=CFG, data_dir=str(tmp_path / "data"))


def test_the_command_line_flags(tmp_path):
    ap = cli.arg_parser()
    assert ap.parse_args(["--output_dir", "o"]).noisy is None
    assert ap.parse_args(["--output_dir", "o", "--noisy"]).noisy is True
    assert ap.parse_args(["--output_dir", "o", "--no_noisy"]).noisy is False
    with pytest.raises(SystemExit):
        ap.parse_args(["--output_dir", "o", "--noisy", "--no_noisy"])


def test_noisy_clips_go_to_train_and_curated_ones_by_the_fname_hash():
    """Only curated clips are hashed into eval: a noisy clip is train whatever its name's hash."""
    from pipeline.data.kaggle_layout import Row

    write = bt.WriteExamples("/nowhere", eval_ratio=0.99, tag_source=True)
    clip = lambda source: bt.Clip(Row("a.wav", 2, (1,), source), None, 1.0)  # noqa: E731
    mel = tf.zeros([3, 2]).numpy()
    assert bt.split_of("a.wav", 0.99) == "eval"
    assert write._keyed_example((clip("curated"), mel))[0] == "eval"
    split, record, source, group = write._keyed_example((clip("noisy"), mel))
    assert (split, source, group) == ("train", "noisy", None)
    assert tf.train.Example.FromString(record).features.feature["source"].bytes_list.value == [b"noisy"]


# ---------------------------------------------------------------------------------------------
# the job end to end


def _run(data, out, *extra):
    rc = cli.run(["--data_dir", str(data), "--output_dir", str(out), "--preset", "small", "--log_level", "WARNING",
                  "--eval_ratio", "0.3", "--max_error_ratio", "0.5", "--direct_num_workers=1", *extra])
    manifest = output.read_manifest(str(out))
    by_split = read_records(str(out), manifest)
    records = {}
    for split, recs in by_split.items():
        for r in recs:
            feat = tf.train.Example.FromString(r).features.feature
            records[feat["fname"].bytes_list.value[0].decode()] = SimpleNamespace(split=split, raw=r, feat=feat)
    return SimpleNamespace(rc=rc, manifest=manifest, manifest_dir=out, records=records,
                           letters=[json.loads(x) for x in (out / output.DEAD_LETTERS).read_text().splitlines()])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One layout with 24 curated and 12 noisy clips and the demo's bad rows in both sources, run three
    ways: `noisy` (as it is: both sources), `no_noisy` (--no_noisy), and `curated` (the same layout
    with train_noisy.csv and train_noisy/ removed: what a layout without the noisy source gives)."""
    root = tmp_path_factory.mktemp("sources")
    layout = _layout(root / "data", noisy=12, broken=True)
    shutil.copytree(root / "data", root / "curated_only")
    (root / "curated_only" / "train_noisy.csv").unlink()
    shutil.rmtree(root / "curated_only" / "train_noisy")
    return SimpleNamespace(layout=layout, noisy=_run(root / "data", root / "o1"),
                           no_noisy=_run(root / "data", root / "o2", "--no_noisy"),
                           curated=_run(root / "curated_only", root / "o3"))


@pytest.mark.slow
def test_without_the_noisy_source_the_examples_are_the_seeds_byte_for_byte(runs):
    """--no_noisy and a layout without train_noisy.csv write the same Examples, in the same splits,
    each exactly the five-feature serialization the job wrote before sources existed (no `source`)."""
    assert runs.curated.rc == runs.no_noisy.rc == 0
    a, b = runs.curated.records, runs.no_noisy.records
    assert sorted(a) == sorted(f for f, _ in runs.layout["train"])
    assert {f: (r.split, r.raw) for f, r in a.items()} == {f: (r.split, r.raw) for f, r in b.items()}
    for fname, r in a.items():
        assert set(r.feat) == SEED_KEYS
        assert r.split == bt.split_of(fname, 0.3)
        seed_bytes = examples.serialize(fname, list(r.feat["labels"].int64_list.value),
                                        tf.constant(list(r.feat["mel"].float_list.value)).numpy().reshape(
                                            list(r.feat["mel_shape"].int64_list.value)),
                                        r.feat["source_seconds"].float_list.value[0])
        assert r.raw == seed_bytes
    assert runs.curated.manifest["sources"] == ["curated"]
    assert all("source" not in letter or letter["source"] == "curated" for letter in runs.curated.letters)


@pytest.mark.slow
def test_with_the_noisy_source_every_example_says_its_source_and_eval_stays_curated(runs):
    """Curated clips keep their split and their features (their Example is the curated-only one
    plus source=curated); noisy clips are all in train with source=noisy."""
    got, curated_only = runs.noisy.records, runs.curated.records
    assert runs.noisy.rc == 0
    noisy_names = {f for f, _ in runs.layout["noisy"]}
    assert set(got) == set(curated_only) | noisy_names
    for fname, r in got.items():
        source = r.feat["source"].bytes_list.value[0].decode()
        assert source == ("noisy" if fname in noisy_names else "curated")
        if source == "noisy":
            assert r.split == "train"
            continue
        assert r.split == curated_only[fname].split
        stripped = tf.train.Example.FromString(r.raw)
        del stripped.features.feature["source"]
        assert stripped == tf.train.Example.FromString(curated_only[fname].raw)
    assert {r.feat["source"].bytes_list.value[0] for r in got.values() if r.split == "eval"} == {b"curated"}


@pytest.mark.slow
def test_counts_and_dead_letters_per_source_reconcile(runs):
    """The same checks in both sources; dead letters name theirs; the clip both CSVs list is kept
    once, as curated, and reported as the noisy row's duplicate_fname; per-source counts add up."""
    m, layout = runs.noisy.manifest, runs.layout
    c = m["counts"]
    assert m["sources"] == ["curated", "noisy"]
    want_failed = {"curated": len(layout["expected_dead"]), "noisy": len(layout["noisy_dead"])}
    per = c["per_source"]
    assert {k: v["failed"] for k, v in per.items()} == want_failed
    assert per["curated"]["input_rows"] == 24 + want_failed["curated"]
    assert per["noisy"]["input_rows"] == 12 + want_failed["noisy"]
    assert per["noisy"]["written"] == 12 and per["noisy"]["per_split"] == {"train": 12}
    assert per["curated"]["written"] == 24 == sum(per["curated"]["per_split"].values())
    assert sum(v["input_rows"] for v in per.values()) == c["input_rows"] == c["written"] + c["failed"]
    assert {s: info["by_source"] for s, info in m["splits"].items()} == {
        s: {k: v["per_split"][s] for k, v in per.items() if s in v["per_split"]} for s in m["splits"]}
    noisy_letters = {(d["fname"], d["reason"]) for d in runs.noisy.letters if d["source"] == "noisy"}
    dup = layout["train"][0][0]
    assert noisy_letters == {("noisy_missing.wav", "missing_file"), ("noisy_unknown.wav", "unknown_label"),
                             (dup, "duplicate_fname")}
    assert runs.noisy.records[dup].feat["source"].bytes_list.value == [b"curated"]
    letter = next(d for d in runs.noisy.letters if d["source"] == "noisy" and d["fname"] == dup)
    assert "also listed by the curated source (train_curated.csv line 2)" in letter["detail"]
    assert [d["source"] for d in runs.noisy.letters] == sorted(d["source"] for d in runs.noisy.letters)


@pytest.mark.slow
def test_the_training_input_reads_two_source_examples_and_its_eval_batches_are_unchanged(runs, tmp_path):
    """pipeline/training/dataset.py ignores `source`: the eval split of the two-source run gives the
    model the very (mel, labels) pairs of the curated-only run, and its train split parses whole."""
    from pipeline.training import dataset

    def pairs(run_manifest_dir, split):
        files, n = dataset.split_files(run_manifest_dir, split)
        ds = dataset.make_dataset(files, (101, 40), 80, 4, training=False, num_examples=n)
        got = [(tuple(label.nonzero()[0]), mel.tobytes()) for mels, labels in ds.as_numpy_iterator()
               for mel, label in zip(mels, labels)]
        assert len(got) == n
        return sorted(got)

    out = {name: str(getattr(runs, name).manifest_dir) for name in ("noisy", "curated")}
    assert pairs(out["noisy"], "eval") == pairs(out["curated"], "eval")
    assert len(pairs(out["noisy"], "train")) == runs.noisy.manifest["counts"]["per_split"]["train"]


@pytest.mark.slow
def test_the_shards_mix_the_sources_rather_than_following_the_csvs(runs):
    """Records are written in a fixed hash order of their file names, not the CSVs' order: with the
    CSVs' order each shard held every curated clip and then every noisy one, and the Trainer's
    shuffle buffer (2,048 records) fed whole stretches of one source at FAT2019's size."""
    train = [r.feat["source"].bytes_list.value[0].decode() for r in runs.noisy.records.values() if r.split == "train"]
    assert {"curated", "noisy"} == set(train)
    changes = sum(a != b for a, b in zip(train, train[1:]))
    assert changes >= 4, train                    # the CSVs' order: one change (curated, then noisy)
    fnames = [f for f, r in runs.noisy.records.items() if r.split == "train"]
    assert fnames == sorted(fnames, key=lambda f: (bt._hash01(f), f))
