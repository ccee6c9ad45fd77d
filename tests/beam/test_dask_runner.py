"""The feature job on a real distributed engine: Beam's DaskRunner (as fixed in pipeline/beam/dask_runner.py)
on a dask.distributed LocalCluster of two worker processes.

First the runner itself, one small pipeline per fault that Beam 2.77's DaskRunner has (BUILD_NOTES.md
keeps the reproduction); then the job: its outputs on DaskRunner must equal DirectRunner's
(every example byte for byte in the same split, the same dead letters, the same manifest counts).
"""
import json
import os
from types import SimpleNamespace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.beam import dask_runner
from pipeline.beam import cli
from pipeline.beam import runners

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, one thread each (as --dask_local_workers 2 starts it):
    its scheduler address."""
    with dask_runner.start_local_cluster(2) as c:
        yield c.scheduler_address


def run_on_dask(cluster, build, *extra):
    with beam.Pipeline(options=PipelineOptions([f"--runner={dask_runner.RUNNER_PATH}",
                                                f"--dask_client_address={cluster}", *extra])) as p:
        build(p)


def records(folder):
    """Lines that workers appended to files in `folder`, one file per kind: {kind: [json value]}."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            out[name] = [json.loads(line) for line in f]
    return out


class Note:
    """A picklable callable that appends its input (or `value(input)`) to FOLDER/KIND and passes it on."""

    def __init__(self, folder, kind, value=None):
        self.path, self.value = os.path.join(folder, kind), value

    def __call__(self, x, *side):
        with open(self.path, "a") as f:
            f.write(json.dumps(self.value(x, *side) if self.value else x) + "\n")
        return x


def _pid(*_):
    return os.getpid()


class _SplitThirds(beam.DoFn):
    def process(self, x):
        if x % 3 == 0:
            yield beam.pvalue.TaggedOutput("dead", x)
        else:
            yield x


class _CountPerBundle(beam.DoFn):
    def start_bundle(self):
        self.n = 0

    def process(self, x):
        self.n += 1

    def finish_bundle(self):
        yield WindowedValue(self.n, window.MIN_TIMESTAMP, [window.GlobalWindow()])


class _SetupCounter(beam.DoFn):
    def __init__(self, folder):
        self.folder = folder

    def setup(self):
        Note(self.folder, "setup", _pid)(None)

    def process(self, x):
        yield x


class _Fails(beam.DoFn):
    def process(self, x):
        if x == 3:
            raise ValueError("clip 3 is cursed")
        yield x


# ---------------------------------------------------------------------------------------------
# the runner, fault by fault


def test_runner_flag_short_names():
    """--runner=DaskRunner (either spelling, any case, or Beam's own class path) selects the fixed
    runner; other runners pass through; the local runner (FnApiRunner) is the default."""
    for flags in (["--runner=DaskRunner"], ["--runner", "DaskRunner"], ["--runner=dask"],
                  ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"]):
        assert runners.runner_flags([*flags, "--dask_local_workers=2"]) == [
            f"--runner={dask_runner.RUNNER_PATH}", "--dask_local_workers=2"]
    assert runners.runner_flags(["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=in_memory"]) == [
        "--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=in_memory"]
    assert runners.runner_flags(["--direct_num_workers=3", "--direct_running_mode=multi_processing"]) == [
        "--runner=FnApiRunner", "--direct_num_workers=3", "--direct_running_mode=multi_processing"]
    opts = PipelineOptions(runners.runner_flags(["--runner=DaskRunner", "--dask_local_workers=3"]))
    assert opts.view_as(dask_runner.DaskClusterOptions).dask_local_workers == 3


@slow
def test_tagged_outputs_reach_only_their_own_pcollection(cluster, tmp_path):
    def build(p):
        out = p | beam.Create(range(10)) | beam.ParDo(_SplitThirds()).with_outputs("dead", main="main")
        out.main | "m" >> beam.combiners.ToList() | "nm" >> beam.Map(Note(tmp_path, "main", sorted))
        out.dead | "d" >> beam.combiners.ToList() | "nd" >> beam.Map(Note(tmp_path, "dead", sorted))

    run_on_dask(cluster, build)
    assert records(tmp_path) == {"main": [[1, 2, 4, 5, 7, 8]], "dead": [[0, 3, 6, 9]]}


@slow
def test_finish_bundle_outputs_are_kept(cluster, tmp_path):
    """What finish_bundle emits arrives (Beam's DaskRunner drops it), so BatchElements keeps its
    last, partial batch."""
    def build(p):
        xs = p | beam.Create(range(10))
        (xs | "per_bundle" >> beam.ParDo(_CountPerBundle()) | "sum" >> beam.CombineGlobally(sum)
         | "n1" >> beam.Map(Note(tmp_path, "counted")))
        (xs | beam.BatchElements(min_batch_size=4, max_batch_size=4) | "flat" >> beam.FlatMap(lambda b: b)
         | "l" >> beam.combiners.ToList() | "n2" >> beam.Map(Note(tmp_path, "batched", sorted)))

    run_on_dask(cluster, build)
    assert records(tmp_path) == {"counted": [10], "batched": [list(range(10))]}


@slow
def test_every_branch_runs_and_side_inputs_are_computed_once(cluster, tmp_path):
    """A branch that feeds nothing still runs (Beam's DaskRunner computes only the last transform),
    and a PCollection read as two side inputs and by a combine is computed once, not once per reader."""
    def build(p):
        xs = p | "xs" >> beam.Create(range(4)) | "upstream" >> beam.Map(Note(tmp_path, "upstream"))
        xs | "branch" >> beam.Map(Note(tmp_path, "branch"))
        (p | "trigger" >> beam.Create([None])
         | "use" >> beam.Map(Note(tmp_path, "side", lambda _, a, b, n: [sorted(a), sorted(b), n]),
                             beam.pvalue.AsList(xs), beam.pvalue.AsIter(xs),
                             beam.pvalue.AsSingleton(xs | beam.combiners.Count.Globally())))

    run_on_dask(cluster, build)
    got = records(tmp_path)
    assert sorted(got["upstream"]) == sorted(got["branch"]) == [0, 1, 2, 3]
    assert got["side"] == [[[0, 1, 2, 3], [0, 1, 2, 3], 4]]


@slow
def test_group_by_key_across_partitions_and_workers(cluster, tmp_path):
    """String keys spread over 30 partitions on two processes (whose str hashes differ) still meet."""
    def build(p):
        (p | beam.Create([(f"k{i % 7}", i) for i in range(60)]) | beam.GroupByKey()
         | beam.MapTuple(lambda k, vs: (k, sorted(vs))) | "l" >> beam.combiners.ToList()
         | "n" >> beam.Map(Note(tmp_path, "groups", sorted)))

    run_on_dask(cluster, build, "--dask_partition_size=2")
    assert records(tmp_path) == {"groups": [[[f"k{k}", list(range(k, 60, 7))] for k in range(7)]]}


@slow
def test_reshuffle_spreads_work_over_both_workers(cluster, tmp_path):
    """A job that fans out from one element (as this job does from its CSV path) runs on both worker
    processes after a Reshuffle, every element exactly once."""
    def build(p):
        (p | beam.Create(["csv"]) | "rows" >> beam.FlatMap(lambda _: range(40)) | beam.Reshuffle()
         | "where" >> beam.Map(Note(tmp_path, "where", lambda x: [x, os.getpid()])))

    run_on_dask(cluster, build)
    where = records(tmp_path)["where"]
    assert sorted(x for x, _ in where) == list(range(40))
    assert len({pid for _, pid in where}) == 2


@slow
def test_dofn_setup_once_per_worker_process(cluster, tmp_path):
    """DoFns are set up once per worker process and reused bundle after bundle (the feature DoFn
    traces TensorFlow in setup), not once per partition."""
    def build(p):
        (p | beam.Create(range(200)) | beam.Reshuffle() | beam.ParDo(_SetupCounter(str(tmp_path)))
         | "where" >> beam.Map(Note(tmp_path, "where", _pid)))

    run_on_dask(cluster, build, "--dask_partition_size=5")   # 40 partitions
    got = records(tmp_path)
    assert len(got["where"]) == 200
    assert len(got["setup"]) == len(set(got["setup"])) <= 2


@slow
def test_errors_reach_the_driver_and_other_windows_are_refused(cluster, tmp_path):
    with pytest.raises(Exception, match="clip 3 is cursed"):
        run_on_dask(cluster, lambda p: p | beam.Create(range(5)) | beam.ParDo(_Fails()))
    with pytest.raises(NotImplementedError, match="global window"):
        run_on_dask(cluster, lambda p: (p | beam.Create([(1, 1), (2, 2)]) | beam.WindowInto(window.FixedWindows(10))
                                        | beam.GroupByKey()))


@slow
def test_beam_sources_are_read_split_into_bundles(cluster, tmp_path):
    """`beam.io.Read` of a bounded source (ReadFromTFRecord over 3 shards, ReadFromText over one
    3 MiB file that splits into several byte ranges) reads every record exactly once, and Impulse
    starts a pipeline; Beam's DaskRunner had no translation for Read ('PBegin' object has no
    attribute 'windowing'), so no standard source ran on it."""
    import tensorflow as tf

    src = tmp_path / "src"
    src.mkdir()
    for shard in range(3):
        with tf.io.TFRecordWriter(str(src / f"x-{shard}.tfrecord")) as w:
            for i in range(shard, 60, 3):
                w.write(b"r%d" % i)
    lines = [f"line {i:07d} " + "x" * 20 for i in range(100_000)]      # ~3.3 MB: several bundles
    (src / "big.txt").write_text("\n".join(lines) + "\n")
    notes = tmp_path / "notes"
    notes.mkdir()

    def build(p):
        (p | beam.io.ReadFromTFRecord(str(src / "x-*.tfrecord")) | "t" >> beam.combiners.ToList()
         | "nt" >> beam.Map(Note(notes, "tfrecord", lambda xs: sorted(x.decode() for x in xs))))
        (p | beam.io.ReadFromText(str(src / "big.txt")) | "l" >> beam.combiners.ToList()
         | "nl" >> beam.Map(Note(notes, "text", lambda xs: [len(xs), len(set(xs)), min(xs), max(xs)])))
        p | beam.Impulse() | "ni" >> beam.Map(Note(notes, "impulse", lambda x: x.decode()))

    run_on_dask(cluster, build)
    got = records(notes)
    assert got["tfrecord"] == [sorted(f"r{i}" for i in range(60))]
    assert got["text"] == [[100_000, 100_000, lines[0], lines[-1]]]
    assert got["impulse"] == [""]
    from apache_beam.io.textio import _TextSource
    from apache_beam import coders
    source = _TextSource(str(src / "big.txt"), 0, "auto", True, coders.StrUtf8Coder())
    assert len(list(source.split(dask_runner.MIN_BUNDLE_BYTES))) > 1      # the text really was read in pieces


# ---------------------------------------------------------------------------------------------
# the job: DaskRunner's outputs equal DirectRunner's


def job_outputs(data, out, *runner_flags):
    """Run the job (small preset, lenient: the demo's 9 broken rows are 18%) and read back
    {fname: (split, serialized example)}, the dead letters' bytes and the manifest."""
    import tensorflow as tf

    from pipeline.data import job_output as output
    from pipeline.data import tfrecord

    rc = cli.run(["--data_dir", str(data.root), "--output_dir", str(out), "--preset", "small",
                  "--max_error_ratio", "0.3", "--log_level", "WARNING", *runner_flags])
    manifest = output.read_manifest(str(out))
    examples = {}
    for split, info in manifest["splits"].items():
        for f in info["files"]:
            for rec in tf.data.TFRecordDataset(os.path.join(out, f["path"]),
                                              compression_type=tfrecord.compression_type(f["path"])):
                raw = rec.numpy()
                fname = tf.train.Example.FromString(raw).features.feature["fname"].bytes_list.value[0].decode()
                assert fname not in examples
                examples[fname] = (split, raw)
    files = {os.path.relpath(p, out) for p in output.list_files(str(out))}
    return SimpleNamespace(rc=rc, manifest=manifest, examples=examples, files=files,
                           dead=(out / "dead_letters.jsonl").read_bytes())


@pytest.fixture(scope="module")
def direct(data, tmp_path_factory):
    return job_outputs(data, tmp_path_factory.mktemp("direct") / "out", "--runner=DirectRunner")


def assert_same_outputs(got, want, data):
    assert want.rc == got.rc == 0
    assert got.manifest["status"] == want.manifest["status"] == "complete"
    assert got.manifest["counts"] == want.manifest["counts"]
    assert got.manifest["counts"]["written"] == 40 and got.manifest["counts"]["failed"] == len(data.expected_dead)
    assert {s: i["records"] for s, i in got.manifest["splits"].items()} == \
        {s: i["records"] for s, i in want.manifest["splits"].items()}
    assert sorted(got.examples) == sorted(f for f, _ in data.train)
    assert got.examples == want.examples             # same split, same bytes, for every fname
    assert got.dead == want.dead
    shards = {f["path"] for s in got.manifest["splits"].values() for f in s["files"]}
    assert got.files == {"labels.txt", "dead_letters.jsonl", "manifest.json"} | shards   # no _tmp left


@slow
def test_job_on_a_dask_cluster_equals_direct_runner(data, direct, cluster, tmp_path):
    """`--runner=DaskRunner --dask_client_address=<scheduler>`: the way a user points the job at a
    running cluster (here a LocalCluster of 2 worker processes)."""
    got = job_outputs(data, tmp_path / "out", "--runner=DaskRunner", f"--dask_client_address={cluster}")
    assert_same_outputs(got, direct, data)


@slow
def test_job_on_its_own_local_cluster_equals_direct_runner(data, direct, tmp_path):
    """`--runner DaskRunner --dask_local_workers 2`: the job starts (and stops) a LocalCluster itself."""
    got = job_outputs(data, tmp_path / "out", "--runner", "DaskRunner", "--dask_local_workers=2")
    assert_same_outputs(got, direct, data)


def test_the_read_override_is_found_in_beams_overrides_or_the_runner_refuses_loudly(monkeypatch):
    """_ReadOverride replaces Beam's ReadOverride found by class name; if a Beam release renames or
    drops it, keeping Beam's would silently bring back the fault it fixes, so the runner refuses."""
    names = [type(o).__name__ for o in dask_runner.overrides()]
    assert names.count(dask_runner.BEAM_READ_OVERRIDE) == 0 and "_ReadOverride" in names
    renamed = [o for o in dask_runner.beam_overrides.dask_overrides()
               if type(o).__name__ != dask_runner.BEAM_READ_OVERRIDE]
    monkeypatch.setattr(dask_runner.beam_overrides, "dask_overrides", lambda: renamed)
    with pytest.raises(RuntimeError, match="not one 'ReadOverride' to replace"):
        dask_runner.overrides()
