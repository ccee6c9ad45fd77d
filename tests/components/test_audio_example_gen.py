"""components/audio_example_gen: the fingerprint that TFX's cache key sees, the driver the launcher
runs before the cache lookup, and the executor's Examples artifact read back with TFX's own
reader (tfx-bsl through tfxio_utils, as StatisticsGen, Trainer and Evaluator read it)."""
import json
import os
import shutil

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from components.audio_example_gen import executor, inputs
from components.audio_example_gen.driver import Driver
from pipeline import config
from pipeline.data import demo_data

BEAM_ARGS = ["--runner=FnApiRunner"]


@pytest.fixture
def data(tmp_path):
    """12 labelled clips and the 9 deliberately bad rows/clips of the demo generator."""
    expected = demo_data.generate(str(tmp_path / "data"), train=12, test=1, seed=4, broken=True)
    return tmp_path / "data", expected


def _paths(data_dir):
    return inputs.resolve(str(data_dir), config.AudioExampleGenConfig())


def test_fingerprint_changes_with_the_data_and_only_then(data):
    data_dir, _ = data
    first = inputs.fingerprint(_paths(data_dir))
    assert first.startswith("sha256:") and inputs.fingerprint(_paths(data_dir)) == first
    n_files = len(os.listdir(data_dir / "train_curated"))
    assert f"files={n_files} " in first
    # a new clip in the audio folder
    shutil.copy(data_dir / "train_curated" / "tr00000.wav", data_dir / "train_curated" / "extra.wav")
    second = inputs.fingerprint(_paths(data_dir))
    assert second != first
    # a relabelled clip in the CSV, no audio touched
    csv = data_dir / "train_curated.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",Bark"
    csv.write_text("\n".join(lines) + "\n")
    assert inputs.fingerprint(_paths(data_dir)) != second


def test_content_fingerprint_sees_what_metadata_misses(data):
    """Issue 19 §5: a clip rewritten with the same size and modification time (rsync -a, cp -p,
    coarse-mtime filesystems) leaves the default (metadata) fingerprint unchanged, which is the
    documented limit of that mode; `fingerprint: CONTENT` sees it and is stable otherwise."""
    data_dir, _ = data
    content = config.AudioExampleGenConfig.CONTENT
    before = inputs.fingerprint(_paths(data_dir)), inputs.fingerprint(_paths(data_dir), content)
    assert before[1].endswith(" content") and before[1] != before[0]
    assert inputs.fingerprint(_paths(data_dir), content) == before[1]
    clip = data_dir / "train_curated" / "tr00003.wav"
    stat = clip.stat()
    raw = bytearray(clip.read_bytes())
    raw[-100:] = bytes(100)                       # other samples, same size
    clip.write_bytes(bytes(raw))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inputs.fingerprint(_paths(data_dir)) == before[0]
    assert inputs.fingerprint(_paths(data_dir), content) != before[1]


def test_the_component_key_holds_the_resolved_config_and_the_codes_version(data):
    """The ExampleGen's parameters (TFX's cache key) hold its config with every default written
    out and the code's version, so a release that changes a default or the feature code is a
    cache miss even though the user's config text is the same."""
    from components.audio_example_gen import AudioExampleGen
    from pipeline import versions

    data_dir, _ = data
    props = AudioExampleGen(data_dir=str(data_dir)).exec_properties
    assert "n_mels: 128" in props[inputs.CONFIG] and "fingerprint: METADATA" in props[inputs.CONFIG]
    assert config.example_gen_config(props[inputs.CONFIG]) == config.with_defaults(config.AudioExampleGenConfig())
    assert props[inputs.CODE_VERSION].startswith(versions.project_version() + " code=")


def test_the_code_digest_changes_with_any_source_file_and_only_then(tmp_path):
    from pipeline import versions

    pkg = tmp_path / "features"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "feature_fn.py").write_text("N_MELS = 128\n")
    first = versions.source_digest([str(pkg)])
    (pkg / "__pycache__" / "feature_fn.cpython-313.pyc").write_bytes(b"compiled")
    (pkg / "notes.txt").write_text("not code")
    assert versions.source_digest([str(pkg)]) == first
    (pkg / "feature_fn.py").write_text("N_MELS = 64\n")
    assert versions.source_digest([str(pkg)]) != first


def test_fingerprint_names_what_is_missing(tmp_path, data):
    data_dir, _ = data
    with pytest.raises(ValueError, match="the audio folder .*nowhere does not exist"):
        inputs.fingerprint(inputs.resolve(str(data_dir), config.AudioExampleGenConfig(audio_dir="nowhere")))
    with pytest.raises(ValueError, match="the CSV"):
        inputs.fingerprint(_paths(tmp_path / "empty"))


def test_config_paths_are_relative_to_the_data_folder_unless_absolute(tmp_path):
    cfg = config.AudioExampleGenConfig(csv="lists/a.csv", audio_dir="/mnt/clips", labels="gs://b/labels.txt")
    p = inputs.resolve("/data/fat", cfg)
    assert (p.csv, p.audio_dir, p.labels) == ("/data/fat/lists/a.csv", "/mnt/clips", "gs://b/labels.txt")
    with pytest.raises(ValueError, match="invalid FeatureConfig"):
        config.example_gen_config("features { n_mels: 0 }")


def test_driver_adds_the_fingerprint_before_the_cache_lookup(data):
    from tfx.orchestration.portable import data_types
    from tfx.types import standard_artifacts

    data_dir, _ = data
    for text, mode in (("", config.AudioExampleGenConfig.METADATA), ("fingerprint: CONTENT", config.AudioExampleGenConfig.CONTENT)):
        props = {inputs.DATA_DIR: str(data_dir), inputs.CONFIG: text}
        out = Driver(None).run(data_types.ExecutionInfo(exec_properties=props,
                                                        output_dict={"examples": [standard_artifacts.Examples()]}))
        expected = inputs.fingerprint(_paths(data_dir), mode)
        assert out.exec_properties[inputs.FINGERPRINT].string_value == expected
    assert out.exec_properties[inputs.DATA_DIR].string_value == str(data_dir)
    art = out.output_artifacts["examples"].artifacts[0]
    assert art.custom_properties[inputs.FINGERPRINT].string_value == expected


def _run_executor(data_dir, out_dir, **cfg_fields):
    from tfx.types import standard_artifacts

    cfg = config.AudioExampleGenConfig(**cfg_fields)
    cfg.features.CopyFrom(config.feature_config("small"))
    examples = standard_artifacts.Examples()
    examples.uri = str(out_dir)
    os.makedirs(out_dir)       # as TFX's launcher does before the executor runs
    ctx = executor.Executor.Context(beam_pipeline_args=BEAM_ARGS)
    executor.Executor(ctx).Do({}, {"examples": [examples]},
                              {inputs.DATA_DIR: str(data_dir), inputs.CONFIG: config.to_text(cfg),
                               inputs.FINGERPRINT: "sha256:test"})
    return examples


@pytest.mark.slow
def test_executor_writes_an_examples_artifact_that_tfx_readers_accept(data, tmp_path):
    from tfx.components.util import tfxio_utils
    from tfx.types import artifact_utils

    data_dir, expected = data
    examples = _run_executor(data_dir, tmp_path / "examples", eval_ratio=0.3, max_error_ratio=0.5)
    out = tmp_path / "examples"
    assert sorted(os.listdir(out)) == ["Split-eval", "Split-train", "dead_letters.jsonl", "labels.txt",
                                       "manifest.json"]
    for split in ("Split-train", "Split-eval"):
        files = os.listdir(out / split)
        assert files and all(f.endswith(".tfrecord.gz") for f in files), files
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    assert examples.get_string_custom_property("file_format") == "tfrecords_gzip"
    assert examples.get_string_custom_property("input_fingerprint") == "sha256:test"
    assert examples.get_string_custom_property("data_dir") == str(data_dir)
    bad = expected["expected_dead"]
    assert examples.get_int_custom_property("dead_letters") == len(bad)
    assert examples.get_int_custom_property("written") == len(expected["train"])
    assert examples.get_int_custom_property("input_rows") == len(expected["train"]) + len(bad)
    assert json.loads(examples.get_string_custom_property("failed_by_reason")) == {
        r: list(bad.values()).count(r) for r in set(bad.values())}
    manifest = json.loads((out / "manifest.json").read_text())
    # TFX's reader for the artifact (payload and file format from its properties) sees every example
    for split in ("train", "eval"):
        tfxio = tfxio_utils.get_split_tfxio([examples], split, telemetry_descriptors=["test"])
        with beam.Pipeline(runner="FnApiRunner") as p:
            rows = (p | tfxio.BeamSource() | beam.Map(lambda rb: rb.num_rows) | beam.CombineGlobally(sum))
            assert_that(rows, equal_to([manifest["counts"]["per_split"][split]]))


@pytest.mark.slow
def test_executor_splits_by_the_group_csv_its_config_names(data, tmp_path):
    """group_csv relative to the data folder, with its own column name: the job reads it (every
    listed clip's group in one split) and the artifact's manifest says so."""
    data_dir, expected = data
    fnames = sorted(row[0] for row in expected["train"])
    (data_dir / "groups.csv").write_text("fname,take\n" + "".join(f"{f},g{i % 3}\n" for i, f in enumerate(fnames)))
    _run_executor(data_dir, tmp_path / "examples", eval_ratio=0.3, max_error_ratio=0.5, group_csv="groups.csv",
                  group_column="take")
    manifest = json.loads((tmp_path / "examples" / "manifest.json").read_text())
    assert manifest["split_by"] == {"group_column": "take", "group_csv": str(data_dir / "groups.csv")}
    assert sum(s["groups"] for s in manifest["splits"].values()) == 3
    assert all(s["shared_groups"] == 0 and s["ungrouped"] == 0 for s in manifest["splits"].values())


@pytest.mark.slow
def test_executor_fails_above_max_error_ratio_and_keeps_the_report(data, tmp_path):
    data_dir, expected = data
    with pytest.raises(executor.ExampleGenError, match=r"rows failed \(error ratio 0\.429 > --max_error_ratio 0\.05\)"):
        _run_executor(data_dir, tmp_path / "AudioExampleGen" / "examples" / "7", max_error_ratio=0.05)
    kept = tmp_path / "AudioExampleGen" / "failed" / "7"    # TFX removes the failed execution's output
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    letters = (kept / "dead_letters.jsonl").read_text().splitlines()
    assert len(letters) == len(expected["expected_dead"])


# ---------------------------------------------------------------------------------------------
# the noisy source (issue 22 §2)


@pytest.fixture
def noisy_data(tmp_path):
    """12 curated and 6 noisy clips, the demo's bad rows in both sources."""
    expected = demo_data.generate(str(tmp_path / "noisy_data"), train=12, test=1, seed=4, broken=True, noisy=6)
    return tmp_path / "noisy_data", expected


def test_the_fingerprint_covers_the_noisy_source_where_it_is_read(noisy_data, data):
    """AUTO reads train_noisy where it is (a changed noisy clip or row is a cache miss); OFF, TEST
    mode and a layout without it fingerprint the curated inputs only, exactly as before."""
    data_dir, _ = noisy_data
    off = config.AudioExampleGenConfig(noisy=config.AudioExampleGenConfig.OFF)
    auto = inputs.fingerprint(_paths(data_dir))
    without = inputs.fingerprint(inputs.resolve(str(data_dir), off))
    assert _paths(data_dir).noisy_csv == str(data_dir / "train_noisy.csv")
    assert inputs.resolve(str(data_dir), off).noisy_csv is None
    assert inputs.resolve(str(data_dir), config.AudioExampleGenConfig(mode=config.AudioExampleGenConfig.TEST)).noisy_csv is None
    n_curated, n_noisy = len(os.listdir(data_dir / "train_curated")), len(os.listdir(data_dir / "train_noisy"))
    assert f"files={n_curated + n_noisy} " in auto and f"files={n_curated} " in without
    shutil.copy(data_dir / "train_noisy" / "no00000.wav", data_dir / "train_noisy" / "extra.wav")
    changed = inputs.fingerprint(_paths(data_dir))
    assert changed != auto and inputs.fingerprint(inputs.resolve(str(data_dir), off)) == without
    csv = data_dir / "train_noisy.csv"
    csv.write_text(csv.read_text().replace("no00001.wav,", "no00001.wav,Bark,"))
    assert inputs.fingerprint(_paths(data_dir)) != changed
    # a layout without the noisy source: the curated inputs' digest, whatever the config says
    curated_dir, _ = data
    assert inputs.fingerprint(_paths(curated_dir)) == inputs.fingerprint(inputs.resolve(str(curated_dir), off))


def test_the_fingerprint_covers_a_group_csv_where_one_is_named(data):
    """A changed group table changes the split, so it is a cache miss; without one the digest is as before."""
    data_dir, _ = data
    plain = inputs.fingerprint(_paths(data_dir))
    grouped = config.AudioExampleGenConfig(group_csv="groups.csv")
    with pytest.raises(ValueError, match="the group CSV .*groups.csv does not exist"):
        inputs.fingerprint(inputs.resolve(str(data_dir), grouped))
    (data_dir / "groups.csv").write_text("fname,group\ntr00000.wav,a\n")
    first = inputs.fingerprint(inputs.resolve(str(data_dir), grouped))
    assert first != plain and inputs.resolve(str(data_dir), grouped).group_csv == str(data_dir / "groups.csv")
    (data_dir / "groups.csv").write_text("fname,group\ntr00000.wav,b\n")
    assert inputs.fingerprint(inputs.resolve(str(data_dir), grouped)) not in (first, plain)
    assert inputs.fingerprint(_paths(data_dir)) == plain


def test_a_required_noisy_source_that_is_missing_stops_the_driver(data):
    data_dir, _ = data
    on = config.AudioExampleGenConfig(noisy=config.AudioExampleGenConfig.ON)
    with pytest.raises(ValueError, match="the noisy CSV .*train_noisy.csv does not exist"):
        inputs.fingerprint(inputs.resolve(str(data_dir), on))


@pytest.mark.slow
def test_executor_carries_the_per_source_counts_and_statistics_describe_both_sources(noisy_data, tmp_path):
    """The artifact's per_source property (MLMD) holds each source's counts; eval holds curated
    clips only; TFDV, as StatisticsGen runs it (STATS_FEATURES), counts both `source` values."""
    import tensorflow_data_validation as tfdv

    from pipeline.orchestration import tfx_pipeline

    data_dir, expected = noisy_data
    examples = _run_executor(data_dir, tmp_path / "examples", eval_ratio=0.3, max_error_ratio=0.6)
    assert examples.get_string_custom_property("sources") == "curated,noisy"
    per = json.loads(examples.get_string_custom_property("per_source"))
    assert per["noisy"] == {"input_rows": 6 + len(expected["noisy_dead"]), "written": 6,
                            "failed": len(expected["noisy_dead"]), "per_split": {"train": 6}}
    assert per["curated"]["written"] == 12 and per["curated"]["failed"] == len(expected["expected_dead"])
    assert examples.get_int_custom_property("written") == 18
    options = tfdv.StatsOptions(feature_allowlist=list(tfx_pipeline.STATS_FEATURES))
    values = {}
    for split in ("train", "eval"):
        stats = tfdv.generate_statistics_from_tfrecord(str(tmp_path / "examples" / f"Split-{split}" / "*"),
                                                       stats_options=options)
        feature = next(f for f in stats.datasets[0].features if f.path.step == ["source"])
        values[split] = {b.label: b.sample_count for b in feature.string_stats.rank_histogram.buckets}
    assert values["train"] == {"curated": per["curated"]["per_split"]["train"], "noisy": 6}
    assert values["eval"] == {"curated": per["curated"]["per_split"]["eval"]}
