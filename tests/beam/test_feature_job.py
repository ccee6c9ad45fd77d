"""The Beam feature job end to end (DirectRunner, small preset) on the demo data with broken inputs:
counts that reconcile, dead letters, the examples themselves, reproducibility, output guarding."""
import collections
import csv
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from pipeline.features import audio
from pipeline.data import demo_data
from pipeline.data import example_schema as examples
from pipeline.features import feature_fn as features
from pipeline.beam import cli
from pipeline.beam import runners
from pipeline.data import job_output as output
from pipeline.data import tfrecord
from pipeline.beam import transforms as bt
from pipeline import config

pytestmark = pytest.mark.slow   # Beam pipelines end to end
from tests import REPO
CFG = config.feature_config("small")
SHAPE = config.mel_shape(CFG)
# the demo's 9 broken rows out of 49 are an error ratio of 0.18: above the default 0.05
LENIENT = ["--max_error_ratio", "0.3"]
DEAD_LETTER_KEYS = {"fname", "line", "stage", "reason", "detail", "source"}


def run_job(data, out, *extra):
    return cli.run(["--data_dir", str(data.root), "--output_dir", str(out), "--preset", "small",
                    "--log_level", "WARNING", *extra])


def read_records(out_dir, manifest):
    """{split: [serialized example, ...]} from the shard files the manifest lists."""
    return {split: [r.numpy() for f in info["files"] for r in tf.data.TFRecordDataset(
                os.path.join(out_dir, f["path"]), compression_type=tfrecord.compression_type(f["path"]))]
            for split, info in manifest["splits"].items()}


def parse(records):
    return tf.io.parse_example(tf.constant(records), examples.parse_spec(SHAPE))


def by_fname(records):
    """{fname: serialized example} over all splits."""
    out = {}
    for split_records in records.values():
        fnames = parse(split_records)["fname"].numpy()
        for f, r in zip(fnames, split_records):
            assert f.decode() not in out
            out[f.decode()] = r
    return out


def finished(data, out, *extra):
    rc = run_job(data, out, *extra)
    manifest = output.read_manifest(str(out))
    records = read_records(str(out), manifest) if manifest else {}
    return SimpleNamespace(rc=rc, out=out, manifest=manifest, records=records)


@pytest.fixture(scope="module")
def first(data, tmp_path_factory):
    """A passing train-mode run; --direct_num_workers=1 is a Beam flag the job passes through."""
    return finished(data, tmp_path_factory.mktemp("run") / "out", *LENIENT, "--direct_num_workers=1")


@pytest.fixture(scope="module")
def second(data, tmp_path_factory):
    """The same job into another directory, with another batch size (different batch composition)
    and the other deflate setting, by its earlier name."""
    return finished(data, tmp_path_factory.mktemp("run2") / "out", *LENIENT, "--batch_size", "3",
                    "--compression", "small")


def csv_rows(path):
    """[(line number, row)] of a CSV's data rows."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [(reader.line_num, row) for row in reader]


# ---------------------------------------------------------------------------------------------
# one run: status, counts, files


def test_run_succeeds_with_complete_manifest(first):
    assert first.rc == 0
    assert first.manifest["status"] == output.STATUS_COMPLETE
    assert output.require_complete(str(first.out)) == first.manifest
    assert first.manifest["mode"] == "train"
    assert first.manifest["example"] == {"mel_shape": [101, 40], "compression": "NONE", "deflate": "none"}
    assert first.manifest["feature_config"]["derived"] == {"clip_samples": 32000, "n_frames": 101, "fmax": 8000.0}
    assert config.from_text(first.manifest["feature_config_text"]) == CFG


def test_output_holds_only_the_documented_files(first):
    """Shards per split, labels, dead letters, manifest: no temporary files left behind."""
    files = {os.path.relpath(p, first.out) for p in output.list_files(str(first.out))}
    shards = {f["path"] for s in first.manifest["splits"].values() for f in s["files"]}
    assert files == {"labels.txt", "dead_letters.jsonl", "manifest.json"} | shards
    assert all(p.startswith(("train/data-", "eval/data-")) and p.endswith(".tfrecord") for p in shards)
    for p in shards:
        assert (first.out / p).read_bytes()[:2] != b"\x1f\x8b"        # plain TFRecords by default


def test_counts_reconcile(first, data):
    """input_rows = written + failed = the CSV's data rows; splits sum to written; every count
    equals what the TFRecord files really hold."""
    c = first.manifest["counts"]
    n_rows = len(csv_rows(data.root / "train_curated.csv"))
    assert n_rows == 40 + len(data.expected_dead)
    assert c["input_rows"] == c["written"] + c["failed"] == n_rows
    assert c["written"] == 40 and c["failed"] == len(data.expected_dead)
    assert sum(c["per_split"].values()) == c["written"]
    assert set(c["per_split"]) == {"train", "eval"}
    for split, recs in first.records.items():
        assert len(recs) == c["per_split"][split] == first.manifest["splits"][split]["records"]
        assert sum(f["records"] for f in first.manifest["splits"][split]["files"]) == len(recs)
    assert c["failed_by_reason"] == dict(collections.Counter(data.expected_dead.values()))
    assert sum(c["failed_by_stage"].values()) == c["failed"]
    assert first.manifest["error_ratio"] == pytest.approx(c["failed"] / c["input_rows"])


def test_every_good_clip_is_written_once(first, data):
    written = by_fname(first.records)
    assert sorted(written) == sorted(f for f, _ in data.train)


def test_split_is_the_fname_hash(first):
    """Each clip is in the split split_of(fname) says: a function of the name, not of the run."""
    for split, recs in first.records.items():
        for f in parse(recs)["fname"].numpy():
            assert bt.split_of(f.decode(), 0.1) == split


def test_the_manifest_counts_the_written_clips_of_each_label(first, data):
    """What the run report shows as clips per label: every label of the vocabulary, with the number
    of written examples that carry it."""
    vocabulary = (first.out / "labels.txt").read_text().split()
    want = collections.Counter(vocabulary[int(k)] for split in first.records.values()
                               for k in parse(split)["labels"].values.numpy())
    per_label = first.manifest["counts"]["per_label"]
    assert list(per_label) == vocabulary and per_label == {v: want.get(v, 0) for v in vocabulary}
    assert sum(per_label.values()) > first.manifest["counts"]["written"] > 0     # multi-label clips


def test_dead_letters(first, data):
    """Exactly the broken inputs, each with its reason, stage and the CSV line it came from."""
    path = first.out / "dead_letters.jsonl"
    letters = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(set(d) == DEAD_LETTER_KEYS for d in letters)
    got = {d["fname"] + ("#duplicate" if d["reason"] == "duplicate_fname" else ""): d["reason"] for d in letters}
    assert got == data.expected_dead
    lines = dict(csv_rows(data.root / "train_curated.csv"))
    stages = {"unknown_label": "csv", "unsafe_path": "csv", "duplicate_fname": "csv", "missing_file": "read"}
    for d in letters:
        assert lines[d["line"]][0] == d["fname"]
        assert d["stage"] == stages.get(d["reason"], "decode")
        assert d["detail"]
    assert [d["line"] for d in letters] == sorted(d["line"] for d in letters)


def test_labels_file_is_the_vocabulary(first, data):
    labels = (first.out / "labels.txt").read_text().splitlines()
    with open(data.root / "sample_submission.csv", newline="") as f:
        header = next(csv.reader(f))
    assert labels == demo_data.LABELS == header[1:]


def test_examples_read_back(first, data):
    """Shape (101, 40), finite, per-clip standardized, labels = the CSV's through labels.txt."""
    labels = (first.out / "labels.txt").read_text().splitlines()
    csv_labels = {}
    for _, (fname, names) in csv_rows(data.root / "train_curated.csv"):
        csv_labels.setdefault(fname, names)  # the first row of a duplicated fname wins
    n = 0
    for recs in first.records.values():
        p = parse(recs)
        mel = p["mel"].numpy()
        assert mel.shape == (len(recs), *SHAPE)
        assert np.isfinite(mel).all()
        np.testing.assert_allclose(mel.mean(axis=(1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(mel.std(axis=(1, 2)), 1.0, atol=1e-3)
        np.testing.assert_array_equal(p["mel_shape"].numpy(), [SHAPE] * len(recs))
        dense = tf.sparse.to_dense(p["labels"], default_value=-1).numpy()
        for fname, row in zip(p["fname"].numpy(), dense):
            want = sorted({labels.index(x) for x in csv_labels[fname.decode()].split(",")})
            assert [int(i) for i in row if i >= 0] == want
            n += 1
    assert n == 40


def test_job_mel_equals_the_feature_function(first, data):
    """Parity: a clip decoded with audio.decode and put through the feature function gives the
    job's mel: bit for bit through feature_fn (what the job calls), within 1e-5 eagerly."""
    fnames, mels, seconds = [], [], []
    for recs in first.records.values():
        p = parse(recs)
        fnames += [f.decode() for f in p["fname"].numpy()]
        mels.append(p["mel"].numpy())
        seconds.append(p["source_seconds"].numpy())
    mels, seconds = np.concatenate(mels), np.concatenate(seconds)
    decoded = [audio.decode((data.root / "train_curated" / f).read_bytes(), CFG.sample_rate) for f in fnames]
    waveform, length = features.pad_batch([w for w, _ in decoded])
    np.testing.assert_array_equal(features.feature_fn(CFG)(waveform, length).numpy(), mels)
    np.testing.assert_allclose(features.compute_features(waveform, length, CFG).numpy(), mels, rtol=0, atol=1e-5)
    np.testing.assert_allclose(seconds, [info["source_seconds"] for _, info in decoded], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# reproducibility and output guarding


def test_second_run_gives_identical_examples(first, second):
    """Same fnames per split and byte-identical examples, although the second run batched clips
    differently (--batch_size 3), compressed differently and wrote to another directory."""
    assert second.rc == 0
    assert second.manifest["example"]["deflate"] == "best"      # "small", the earlier name of best
    fnames = {s: sorted(parse(r)["fname"].numpy().tolist()) for s, r in first.records.items()}
    fnames2 = {s: sorted(parse(r)["fname"].numpy().tolist()) for s, r in second.records.items()}
    assert fnames == fnames2
    assert by_fname(first.records) == by_fname(second.records)
    assert first.manifest["counts"] == second.manifest["counts"]
    assert (first.out / "dead_letters.jsonl").read_bytes() == (second.out / "dead_letters.jsonl").read_bytes()


def test_gzip_shards_hold_the_same_examples(first, data, tmp_path):
    """--compression fast: GZIP *.tfrecord.gz shards holding byte-identical examples; the manifest
    says so, the training input reads them as it reads plain ones, and --overwrite recognises both
    kinds as the job's."""
    gz = finished(data, tmp_path / "out", *LENIENT, "--compression", "fast")
    assert gz.rc == 0
    assert gz.manifest["example"] == {"mel_shape": [101, 40], "compression": "GZIP", "deflate": "fast"}
    shards = [f["path"] for s in gz.manifest["splits"].values() for f in s["files"]]
    assert shards and all(p.endswith(".tfrecord.gz") for p in shards)
    for p in shards:
        assert (gz.out / p).read_bytes()[:2] == b"\x1f\x8b"
    assert by_fname(gz.records) == by_fname(first.records)
    from pipeline.training import dataset

    for out, manifest in ((gz.out, gz.manifest), (first.out, first.manifest)):
        files = [str(out / f["path"]) for s in manifest["splits"].values() for f in s["files"]]
        batches = list(dataset.make_dataset(files, SHAPE, len(demo_data.LABELS), 64, training=False))
        assert sum(int(b[0].shape[0]) for b in batches) == manifest["counts"]["written"]
    again = finished(data, gz.out, *LENIENT, "--overwrite")   # plain shards over a GZIP output
    assert again.rc == 0
    assert {os.path.relpath(p, again.out) for p in output.list_files(str(again.out))} == (
        {"labels.txt", "dead_letters.jsonl", "manifest.json"}
        | {f["path"] for s in again.manifest["splits"].values() for f in s["files"]})


def test_rerun_needs_overwrite(first, data, tmp_path):
    """A finished output dir is refused (exit 2, nothing touched); --overwrite replaces it."""
    out = tmp_path / "out"
    shutil.copytree(first.out, out)
    before = {p: open(p, "rb").read() for p in output.list_files(str(out))}
    assert run_job(data, out, *LENIENT) == 2
    assert {p: open(p, "rb").read() for p in output.list_files(str(out))} == before
    again = finished(data, out, *LENIENT, "--overwrite")
    assert again.rc == 0
    assert again.manifest["status"] == output.STATUS_COMPLETE
    assert again.manifest["started"] >= first.manifest["started"]
    assert by_fname(again.records) == by_fname(first.records)


def test_default_local_run_logs_its_choice_not_the_harness(first, data, tmp_path, caplog):
    """Without parallelism flags the job logs the workers it chose, and at INFO the SDK harness
    threads' start/stop lines and Beam's notes on our string annotations stay out; the examples
    are those of the one-worker run."""
    import logging
    caplog.set_level(logging.INFO)
    again = finished(data, tmp_path / "out", *LENIENT, "--log_level", "INFO")
    assert again.rc == 0
    chose = [r.getMessage() for r in caplog.records if r.getMessage().startswith("local runner:")]
    assert chose and f"--direct_num_workers={runners.usable_cores()}" in chose[0]
    chatty = [r for r in caplog.records if r.name.startswith(cli._CHATTY_LOGGERS) and r.levelno < logging.WARNING]
    assert not chatty, chatty[:3]
    assert by_fname(again.records) == by_fname(first.records)


def test_interrupted_output_is_refused(data, tmp_path):
    """Files without a manifest (an interrupted run) are refused too: exit 2, files kept."""
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "partial.tfrecord.gz").write_bytes(b"half")
    assert run_job(data, out, *LENIENT) == 2
    assert (out / "train" / "partial.tfrecord.gz").read_bytes() == b"half"
    assert not (out / "manifest.json").exists()


def test_max_error_ratio_fails_the_job(data, tmp_path):
    """Too many dead letters: exit 1, manifest 'failed' with the ratio, report still written."""
    res = finished(data, tmp_path / "out", "--max_error_ratio", "0.01")
    assert res.rc == 1
    assert res.manifest["status"] == "failed"
    assert "error ratio 0.184 > --max_error_ratio 0.01" in res.manifest["status_reason"]
    with pytest.raises(output.OutputError, match="failed"):
        output.require_complete(str(res.out))
    letters = (res.out / "dead_letters.jsonl").read_text().splitlines()
    assert len(letters) == len(data.expected_dead)
    assert res.manifest["counts"]["written"] == 40


def test_test_mode(data, tmp_path):
    """--mode test: every clip of sample_submission.csv in one 'test' split, with no labels."""
    res = finished(data, tmp_path / "out", "--mode", "test")
    assert res.rc == 0
    m = res.manifest
    assert m["status"] == output.STATUS_COMPLETE and m["mode"] == "test" and m["eval_ratio"] is None
    assert list(res.records) == ["test"]
    assert m["counts"] == {"input_rows": 10, "written": 10, "failed": 0, "per_split": {"test": 10},
                           "failed_by_reason": {}, "failed_by_stage": {},
                           "per_source": {"test": {"input_rows": 10, "written": 10, "failed": 0,
                                                   "per_split": {"test": 10}}},
                           "per_label": {}}                 # unlabelled clips: no label counts
    assert m["sources"] == ["test"]
    p = parse(res.records["test"])
    assert sorted(f.decode() for f in p["fname"].numpy()) == sorted(f for f, _ in data.test)
    assert p["labels"].values.shape == (0,)
    assert p["mel"].shape == (10, *SHAPE)
    assert (res.out / "dead_letters.jsonl").read_text() == ""
    assert (res.out / "labels.txt").read_text().splitlines() == demo_data.LABELS


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_help():
    res = subprocess.run([sys.executable, "beam_runner.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "PipelineOptions" in res.stdout
    assert "--max_error_ratio" in res.stdout and "--overwrite" in res.stdout


def test_local_runner_gets_one_worker_per_core_unless_told():
    """Unset --direct_num_workers: one per core; unset --direct_running_mode: threads up to two
    workers, processes beyond. What the user sets is kept, in either flag spelling; other runners
    get nothing."""
    assert runners.local_parallelism([], cores=2) == ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    assert runners.local_parallelism([], cores=1) == ["--direct_num_workers=1", "--direct_running_mode=multi_threading"]
    assert runners.local_parallelism([], cores=16) == ["--direct_num_workers=16",
                                                   "--direct_running_mode=multi_processing"]
    assert runners.local_parallelism(["--direct_num_workers", "8"], cores=2) == ["--direct_running_mode=multi_processing"]
    assert runners.local_parallelism(["--direct_num_workers=0"], cores=2) == ["--direct_running_mode=multi_threading"]
    assert runners.local_parallelism(["--direct_running_mode=in_memory"], cores=4) == ["--direct_num_workers=4"]
    assert runners.local_parallelism(["--direct_num_workers=1", "--direct_running_mode=in_memory"], cores=4) == []
    cores = runners.usable_cores()
    for flags in ([], ["--runner=DirectRunner"], ["--runner", "FnApiRunner"]):
        out = runners.runner_flags(flags)
        assert f"--direct_num_workers={cores}" in out and sum(a.startswith("--direct_running_mode=") for a in out) == 1
    assert runners.runner_flags(["--runner=DataflowRunner", "--project=p"]) == ["--runner=DataflowRunner", "--project=p"]


def test_direct_runner_runs_fnapi_runner_without_prism(caplog):
    """--runner=DirectRunner, in any spelling, is run on FnApiRunner: Beam's DirectRunner would first
    try to download Prism (and on a machine that reaches GitHub run the job there, ignoring the
    --direct_* flags). The switch is logged; --runner=PrismRunner passes through."""
    import logging
    caplog.set_level(logging.INFO)
    flags = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    for runner in (["--runner=DirectRunner"], ["--runner", "directrunner"],
                   ["--runner=apache_beam.runners.direct.direct_runner.DirectRunner"], []):
        assert runners.runner_flags([*runner, *flags]) == ["--runner=FnApiRunner", *flags]
    assert any("without its attempt to download and start Prism" in r.getMessage() for r in caplog.records)
    assert runners.runner_flags(["--runner=PrismRunner"]) == ["--runner=PrismRunner"]


def test_core_count_follows_cpu_affinity(monkeypatch):
    """In a container or under taskset the usable cores are fewer than the machine's: the job's local
    workers and the TFX pipeline's Beam workers count the usable ones (as dask_runner's local cluster
    does, through the same runners.usable_cores)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert runners.usable_cores() == 1
    assert runners.runner_flags([]) == [
        "--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=multi_threading"]


def test_tfx_beam_components_run_like_the_feature_job(monkeypatch, tmp_path):
    """The TFX pipeline's Beam components get their runner and local parallelism from the same place
    as the feature job's command line (runners.runner_flags): threads up to MAX_THREAD_WORKERS
    workers, processes beyond; what the user gives is kept, DaskRunner is the project's."""
    from pipeline.orchestration import tfx_pipeline

    def beam_args(given):
        return tfx_pipeline.create_pipeline(pipeline_name="p", pipeline_root=str(tmp_path / "root"),
                                            data_dir=str(tmp_path / "data"), serving_root=str(tmp_path / "serving"),
                                            beam_pipeline_args=given).beam_pipeline_args

    for cores, mode in ((2, "multi_threading"), (runners.MAX_THREAD_WORKERS + 1, "multi_processing")):
        monkeypatch.setattr(runners, "usable_cores", lambda: cores)
        assert beam_args(None) == runners.runner_flags([]) == [
            "--runner=FnApiRunner", f"--direct_num_workers={cores}", f"--direct_running_mode={mode}"]
    assert beam_args(["--direct_num_workers=1"]) == [
        "--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=multi_threading"]
    assert beam_args(["--runner=DaskRunner", "--dask_local_workers=2"]) == [
        "--runner=pipeline.beam.dask_runner.DaskRunner", "--dask_local_workers=2"]


def test_cli_runs_the_job_and_exits_with_its_status(data, tmp_path):
    """The command as users run it, in its own process: it ends without Python's interpreter
    teardown (cli.exit_without_teardown), so check that its last log lines still arrive, that the
    exit status is the job's, and that the outputs are complete: 0 and a complete manifest with the
    demo's lenient error ratio, 1 and the reason with the default one (9 of 49 rows are broken)."""
    def cli(out, *extra):
        return subprocess.run([sys.executable, "beam_runner.py", "--runner=DirectRunner", "--data_dir",
                               str(data.root), "--output_dir", str(out), "--preset", "small", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=600)

    ok = cli(tmp_path / "ok", *LENIENT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.rstrip().endswith(f"wrote {tmp_path / 'ok' / output.MANIFEST}")
    assert "49 rows -> 40 examples" in ok.stderr
    manifest = output.read_manifest(str(tmp_path / "ok"))
    assert manifest["status"] == output.STATUS_COMPLETE and manifest["counts"]["written"] == 40
    assert sum(len(r) for r in read_records(str(tmp_path / "ok"), manifest).values()) == 40

    failed = cli(tmp_path / "failed")
    assert failed.returncode == 1
    assert failed.stderr.rstrip().splitlines()[-1].endswith(
        "job failed: 9 of 49 rows failed (error ratio 0.184 > --max_error_ratio 0.05); see dead_letters.jsonl")


def test_cli_without_data_dir_is_an_error(tmp_path):
    res = subprocess.run([sys.executable, "beam_runner.py", "--output_dir", str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "give --data_dir or --csv" in res.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_csv_fails_before_the_pipeline(data, tmp_path):
    """A CSV without the train_curated header (here sample_submission.csv in train mode) stops the
    job up front with the file and the reason; nothing is written."""
    with pytest.raises(SystemExit, match=r"--csv .*sample_submission\.csv: expected the header 'fname,labels'"):
        cli.run(["--data_dir", str(data.root), "--csv", str(data.root / "sample_submission.csv"),
                 "--output_dir", str(tmp_path / "out"), "--preset", "small"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ hostile inputs

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A Kaggle layout whose rows each try to break the job: two spellings of one clip, a symlink out
    of the audio folder, a FIFO (a read would block forever), a 1 Hz file, a clip over the length
    limit, a file over the byte limit, a small Vorbis file of many channels over the sample limit
    (limits lowered in the feature config so no big file is written), a FLAC file whose header
    declares half of what it holds, next to three good clips and a FLAC file of unknown length
    (crafted as in tests/features/test_audio.py)."""
    from tests.features.test_audio import flac_declaring
    import soundfile as sf

    root = tmp_path_factory.mktemp("hostile") / "data"
    audio_dir = root / "train_curated"
    audio_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(audio_dir / name, demo_data.make_clip([1, 5], 16000, rng), 16000, subtype="PCM_16")
    sf.write(root / "outside.wav", demo_data.make_clip([2], 16000, rng), 16000, subtype="PCM_16")
    os.symlink(root / "outside.wav", audio_dir / "link.wav")
    os.mkfifo(audio_dir / "fifo.wav")
    sf.write(audio_dir / "rate1.wav", np.zeros(64, np.float32), 1, subtype="PCM_16")
    sf.write(audio_dir / "long.wav", 0.1 * np.ones(4000 * 5, np.float32), 4000, subtype="PCM_16")    # 5 s, 40 KB
    sf.write(audio_dir / "big.wav", 0.1 * np.ones(16000 * 2, np.float32), 16000, subtype="FLOAT")     # 2 s, 128 KB
    sf.write(audio_dir / "many.ogg", np.zeros((16000, 8), np.float32), 16000, subtype="VORBIS")  # 128000 samples
    unknown = demo_data.make_clip([7], 16000, rng)
    for name, clip, declared in (("unknown.flac", unknown, 0), ("liar.flac", 0.1 * np.ones(2 * 16000), 16000)):
        sf.write(audio_dir / name, clip, 16000)
        (audio_dir / name).write_bytes(flac_declaring((audio_dir / name).read_bytes(), declared))
    rows = [("a.wav", "Bark"), ("./a.wav", "Bark"), ("b.wav", "Bark"), ("c.wav/", "Gong"), ("link.wav", "Bark"),
            ("fifo.wav", "Bark"), ("rate1.wav", "Bark"), ("long.wav", "Bark"), ("big.wav", "Bark"),
            ("many.ogg", "Bark"), ("liar.flac", "Bark"), ("unknown.flac", "Gong")]
    with open(root / "train_curated.csv", "w", newline="") as f:
        csv.writer(f).writerows([("fname", "labels"), *rows])
    with open(root / "sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerow(["fname", *demo_data.LABELS])
    (root / "features.pbtxt").write_text("limits { max_source_seconds: 3 max_file_bytes: 80000 max_source_samples: 64000 }")
    out = root.parent / "out"
    rc = cli.run(["--data_dir", str(root), "--output_dir", str(out), "--preset", "small", "--max_error_ratio", "1",
                  "--feature_config", str(root / "features.pbtxt"), "--log_level", "WARNING"])
    letters = [json.loads(x) for x in (out / "dead_letters.jsonl").read_text().splitlines()]
    return SimpleNamespace(rc=rc, out=out, manifest=output.read_manifest(str(out)),
                           reasons={d["fname"]: d["reason"] for d in letters}, unknown_seconds=len(unknown) / 16000)


def test_hostile_rows_become_dead_letters_and_the_rest_goes_through(hostile):
    assert hostile.rc == 0
    assert hostile.reasons == {"./a.wav": "duplicate_fname", "link.wav": "unsafe_path", "fifo.wav": "unsafe_path",
                               "rate1.wav": "bad_sample_rate", "long.wav": "too_long", "big.wav": "too_large",
                               "many.ogg": "too_many_samples", "liar.flac": "header_mismatch"}
    counts = hostile.manifest["counts"]
    assert counts["input_rows"] == 12 and counts["written"] == 4
    assert counts["failed_by_reason"]["too_many_samples"] == counts["failed_by_reason"]["header_mismatch"] == 1
    parsed = [parse(recs) for recs in read_records(str(hostile.out), hostile.manifest).values()]
    seconds = {f: s for p in parsed for f, s in zip(p["fname"].numpy().astype(str), p["source_seconds"].numpy().ravel())}
    assert sorted(seconds) == ["a.wav", "b.wav", "c.wav", "unknown.flac"]     # "c.wav/" written under its one spelling
    assert seconds["unknown.flac"] == pytest.approx(hostile.unknown_seconds)       # the whole stream


def test_transient_read_errors_are_retried_and_persistent_ones_reported(tmp_path, monkeypatch):
    """FileSystems.open is made to fail (a stand-in for a flaky disk or object store, which cannot be
    produced on demand here) twice, then for good."""
    import soundfile as sf

    sf.write(tmp_path / "a.wav", demo_data.make_clip([3], 16000, np.random.default_rng(0)), 16000)
    fn = bt._DecodeAudio(str(tmp_path), config.to_text(CFG))
    fn.setup()
    fn.RETRY_DELAY_S = 0.0
    real_open, failures = bt.FileSystems.open, []

    def flaky(path, *a, **k):
        if len(failures) < budget[0]:
            failures.append(path)
            raise OSError("connection reset")
        return real_open(path, *a, **k)

    monkeypatch.setattr(bt.FileSystems, "open", flaky)
    budget = [2]
    out = list(fn.process(kaggle_layout_row("a.wav")))
    assert len(failures) == 2 and len(out) == 1 and isinstance(out[0], bt.Clip)
    failures.clear()
    budget[0] = 99
    out = list(fn.process(kaggle_layout_row("a.wav")))
    assert len(failures) == bt._DecodeAudio.READ_ATTEMPTS
    assert out[0].value["reason"] == "read_error" and "connection reset" in out[0].value["detail"]


def kaggle_layout_row(fname):
    from pipeline.data.kaggle_layout import Row

    return Row(fname, 2, (0,))


def _committed_bundle(fn, records):
    fn.start_bundle()
    for r in records:
        fn.process(r)
    return [wv.value for wv in fn.finish_bundle()]


@pytest.mark.parametrize("compression", ["fast", "none"])
def test_a_retried_bundle_leaves_no_trace(tmp_path, compression):
    """A bundle that dies after writing (the runner retries it) leaves files that no committed bundle
    reports: finalize_shards deletes them, and the output holds each record exactly once."""
    tmp = str(tmp_path / "_tmp")
    fn = bt._WriteBundleFiles(tmp, compression, "run1")
    records = [("train", f"r{i}".encode(), "curated", None) for i in range(5)] + [("eval", b"e0", "curated", None)]
    fn.start_bundle()                     # first attempt: writes, then the worker dies
    for r in records:
        fn.process(r)
    for w in fn._writers.values():
        w.close()                         # its files are complete on disk, but never reported
    orphans = sorted(os.listdir(tmp))
    assert len(orphans) == 2
    infos = _committed_bundle(bt._WriteBundleFiles(tmp, compression, "run1"), records)   # the retry
    infos += _committed_bundle(bt._WriteBundleFiles(tmp, compression, "run1"), [("train", b"r5", "curated", None)])
    summary = bt.finalize_shards(None, infos, str(tmp_path), tmp, "run1")
    assert not os.path.exists(tmp)
    assert summary["train"]["records"] == 6 and summary["eval"]["records"] == 1
    got = {split: sorted(r.numpy() for f in info["files"] for r in tf.data.TFRecordDataset(
        str(tmp_path / f["path"]), compression_type=tfrecord.compression_type(f["path"])))
        for split, info in summary.items()}
    assert got == {"train": [f"r{i}".encode() for i in range(6)], "eval": [b"e0"]}
    assert all(f["path"].endswith(tfrecord.suffix(compression)) for s in summary.values() for f in s["files"])


def test_shard_finalization_survives_being_retried(tmp_path):
    tmp = tmp_path / "_tmp"
    tmp.mkdir()
    infos = []
    for i, split in enumerate(["train", "train", "eval"]):
        p = tmp / f"run1-{split}-{i:032x}.tfrecord.gz"
        p.write_bytes(f"shard {i}".encode())
        infos.append({"split": split, "tmp_path": str(p), "records": i + 1, "by_source": {"curated": i + 1}})
    first = bt.finalize_shards(None, infos, str(tmp_path), str(tmp), "run1")
    again = bt.finalize_shards(None, infos, str(tmp_path), str(tmp), "run1")
    assert first == again
    assert (tmp_path / "train" / "data-00001-of-00002.tfrecord.gz").read_bytes() == b"shard 1"
    assert not tmp.exists()


def test_finalization_deletes_only_its_own_runs_temporary_files(tmp_path):
    """Another run's temporary files (a concurrent or crashed run into the same folder) and a
    stranger's file are left alone, and so is the `_tmp` folder that still holds them."""
    tmp = tmp_path / "_tmp"
    tmp.mkdir()
    mine, orphan = tmp / "run1-train-aa.tfrecord", tmp / "run1-train-bb.tfrecord"
    others = [tmp / "run2-train-cc.tfrecord", tmp / "train-dd.tfrecord", tmp / "notes.txt"]
    for p in [mine, orphan, *others]:
        p.write_bytes(p.name.encode())
    bt.finalize_shards(None, [{"split": "train", "tmp_path": str(mine), "records": 1, "by_source": {"curated": 1}}],
                       str(tmp_path), str(tmp), "run1")
    assert (tmp_path / "train" / "data-00000-of-00001.tfrecord").read_bytes() == b"run1-train-aa.tfrecord"
    assert sorted(p.name for p in tmp.iterdir()) == sorted(p.name for p in others)


def test_finalization_refuses_a_split_folder_linked_since_the_start(tmp_path):
    """A link that appears during the run (after prepare) stops the job before a rename could
    replace a same-named file in the link's target."""
    tmp, elsewhere = tmp_path / "_tmp", tmp_path.parent / f"{tmp_path.name}-elsewhere"
    tmp.mkdir()
    elsewhere.mkdir()
    (elsewhere / "data-00000-of-00001.tfrecord").write_bytes(b"precious")
    (tmp_path / "train").symlink_to(elsewhere)
    shard = tmp / "run1-train-aa.tfrecord"
    shard.write_bytes(b"new")
    with pytest.raises(output.OutputError, match="train is a symbolic link"):
        bt.finalize_shards(None, [{"split": "train", "tmp_path": str(shard), "records": 1,
                                   "by_source": {"curated": 1}}], str(tmp_path),
                           str(tmp), "run1")
    assert (elsewhere / "data-00000-of-00001.tfrecord").read_bytes() == b"precious"


def test_a_linked_tmp_folder_fails_the_run_cleanly_and_keeps_the_targets_files(first, data, tmp_path, caplog):
    """The run of issue 19 §1: OUT/_tmp -> SCRATCH, then --overwrite: both SCRATCH files were
    deleted and the job died with a BeamIOError traceback. Now: exit 2, one line naming the link."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    shutil.copytree(first.out, out)
    scratch.mkdir()
    for name in ("a.tfrecord", "b.wav"):
        (scratch / name).write_bytes(b"keep me")
    (out / "_tmp").symlink_to(scratch)
    assert run_job(data, out, *LENIENT, "--overwrite") == 2
    assert sorted(p.name for p in scratch.iterdir()) == ["a.tfrecord", "b.wav"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "_tmp is a symbolic link" in errors[0].getMessage() and not errors[0].exc_info


def test_tf_threads_that_cannot_take_effect_are_said_once(monkeypatch, caplog):
    """Issue 19 §7: --tf_threads was dropped silently in a worker where TensorFlow was already
    running (this test process: TensorFlow has run). Now one warning per process says so."""
    import logging
    monkeypatch.setattr(bt, "_TF_THREADS_WARNED", [])
    caplog.set_level(logging.WARNING)
    tf.constant(1.0) + 1.0                             # TensorFlow initialized in this process
    for _ in range(2):
        bt._ComputeFeatures(config.to_text(CFG), 3).setup()
    warned = [r.getMessage() for r in caplog.records if "--tf_threads" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("--tf_threads 3 is ignored in worker process")


def test_progress_lines_count_towards_the_csv_where_one_process_does_the_work(data, tmp_path, monkeypatch, caplog):
    """Issue 20 §1: on long inputs the job says how far it is. Here every batch is reported
    (EVERY_S 0): the count of clips featurized of the CSV's rows, clips/s and time left, and
    the last line reaches every clip that was featurized."""
    import logging
    monkeypatch.setattr(bt._Progress, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="pipeline.beam.transforms")
    res = finished(data, tmp_path / "out", *LENIENT, "--batch_size", "4", "--log_level", "INFO")
    assert res.rc == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("features: ")]
    total = len(csv_rows(data.root / "train_curated.csv"))
    assert lines and all(f" of ~{total} clips (" in line and " clips/s" in line for line in lines), lines[:3]
    done = [int(line.split()[1]) for line in lines]
    assert done == sorted(done) and done[-1] == res.manifest["counts"]["written"] + res.manifest["counts"][
        "failed_by_stage"].get("features", 0)
    assert "s left" in lines[0]


def test_progress_without_a_total_says_it_counts_one_worker_process(caplog, monkeypatch):
    import logging
    monkeypatch.setattr(bt._Progress, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="pipeline.beam.transforms")
    progress = bt._Progress()
    progress.add(8, None)
    progress.add(8, None)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["features: 16 clips in this worker process"]


def test_output_inside_the_data_folder_is_refused(data, tmp_path):
    assert run_job(data, data.root / "examples", *LENIENT) == 2
    assert not (data.root / "examples").exists()


def test_a_clip_that_breaks_its_batch_takes_no_batch_mate_with_it():
    """A clip whose waveform cannot be batched (2-D: the shape of a decoding bug) fails the batch call;
    the batch is retried clip by clip, so only that clip becomes a dead letter."""
    fn = bt._ComputeFeatures(config.to_text(CFG), 0)
    fn.setup()
    rng = np.random.default_rng(5)
    good = [bt.Clip(kaggle_layout_row(f"g{i}.wav"), rng.normal(0, 0.1, 16000).astype(np.float32), 1.0)
            for i in range(2)]
    bad = bt.Clip(kaggle_layout_row("bad.wav"), np.zeros((100, 2), np.float32), 1.0)
    out = list(fn.process([good[0], bad, good[1]]))
    mels = [o for o in out if isinstance(o, tuple)]
    dead = [o.value for o in out if not isinstance(o, tuple)]
    assert [c.row.fname for c, _ in mels] == ["g0.wav", "g1.wav"]
    assert [(d["fname"], d["reason"]) for d in dead] == [("bad.wav", "feature_error")]
    alone = features.feature_fn(features.without_trim(CFG))(*features.pad_batch([good[0].waveform])).numpy()
    np.testing.assert_array_equal(mels[0][1], alone[0])    # the same traced function, alone


def test_worker_log_lines_are_shown_as_their_message():
    """multi_processing workers' log lines reach the job as the text of Beam's LogEntry proto (as
    local_job_service relays them). The job's own lines come out as their message and where they
    were logged (quotes and non-ASCII intact); other INFO lines are dropped, errors kept."""
    import logging

    from apache_beam.portability.api import beam_fn_api_pb2

    def relayed(level, message, location):
        entry = beam_fn_api_pb2.LogEntry(severity=beam_fn_api_pb2.LogEntry.Severity.INFO, message=message,
                                         log_location=location, instruction_id="bundle_1")
        return logging.LogRecord("apache_beam.runners.portability.local_job_service", level, __file__, 1,
                                 "Worker: %s", (str(entry).replace("\n", " "),), None)

    keep = cli._WorkerLogFilter()
    ours = relayed(logging.INFO, 'rows.csv: 246 usable rows, 3 rejected, "naïve" \\ path',
                   "/work/main/pipeline/beam/transforms.py:58")
    assert keep.filter(ours)
    assert ours.getMessage() == 'worker: rows.csv: 246 usable rows, 3 rejected, "naïve" \\ path (transforms.py:58)'
    assert not keep.filter(relayed(logging.INFO, "Creating insecure channel", "/venv/apache_beam/x.py:9"))
    err = relayed(logging.ERROR, "harness crashed", "/venv/apache_beam/x.py:9")
    assert keep.filter(err) and err.getMessage() == "worker: harness crashed (x.py:9)"


def test_cli_process_runs_tensorflow_without_keras_or_librosa():
    """beam_runner.py hides Keras from its own process (TensorFlow imports it eagerly, ~1.4 s of the
    start, and the job never uses it): TensorFlow imports and computes features without it. Nor
    does the feature path import librosa (a test dependency only; its import costs ~0.8 s)."""
    code = ("import beam_runner, sys\n"
            "from pipeline import config\n"
            "from pipeline.features import feature_fn as features\n"
            "import numpy as np\n"
            "cfg = config.feature_config('small')\n"
            "y = np.sin(np.arange(cfg.sample_rate, dtype=np.float32) / 7)\n"
            "y = features.window_keeper(cfg)(y)[None]\n"
            "out = features.feature_fn(features.without_trim(cfg))(y, np.array([y.shape[1]], np.int32)).numpy()\n"
            "print(sys.modules['keras'], 'librosa' in sys.modules, out.shape, bool(np.isfinite(out).all()))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    frames = config.n_frames(config.feature_config('small'))
    assert res.stdout.split("\n")[-2] == f"None False (1, {frames}, 40) True"
