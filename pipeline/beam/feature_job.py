"""The feature job: the Kaggle layout in, tf.Example TFRecords + dead letters + manifest out.

`make_spec()` resolves and checks the inputs in the driver, `start()` prepares the output folder,
and `build()` wires the transforms into any Beam pipeline: the command line's
(pipeline/beam/cli.py, beam_runner.py) or a TFX component's executor (components/audio_example_gen).
The manifest, written last, says whether the run is complete.

Sources: train mode reads train_curated.csv, and FAT2019's second source, train_noisy.csv with its
train_noisy/ folder, where the layout has it (`noisy`: None reads it when present, False never, True
requires it). Both go through the same checks and dead letters; a clip both list is kept as curated
and reported as a noisy duplicate_fname; only curated clips are split into eval (noisy labels would
make the eval figure, and so the blessing bar, meaningless), noisy ones all go to train; Examples of
such a two-source run carry `source`, while a run without train_noisy.csv writes exactly the
Examples it wrote before. The manifest counts rows, examples and dead letters per source.
"""
from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field
from importlib import metadata

import apache_beam as beam

from pipeline import config as config_lib
from pipeline import fileio
from pipeline.beam import transforms as bt
from pipeline.data import job_output as output
from pipeline.data import groups, kaggle_layout, tfrecord

# the packages whose versions a manifest records (what made these features)
TRACKED_PACKAGES = ("fat-audio-pipeline", "tensorflow", "apache-beam", "tfx", "soundfile", "soxr", "numpy",
                    "protobuf")


@dataclass
class JobSpec:
    """Everything the pipeline needs, resolved and validated by the driver."""
    csv_path: str
    audio_dir: str
    output_dir: str
    vocabulary: list[str]
    cfg: config_lib.FeatureConfig
    mode: str = "train"                      # "train": labelled, split train/eval; "test": unlabelled
    eval_ratio: float = 0.1
    max_error_ratio: float = 0.05
    batch_size: int = 8
    intra_op_threads: int = 0
    compression: str = "none"                # shards: none, fast or best (tfrecord.DEFLATE)
    split_prefix: str = ""                   # split folders are PREFIX<split>/ ("Split-" for TFX's Examples)
    inputs: dict = field(default_factory=dict)
    expected_rows: int | None = None         # the CSVs' data lines: the total progress lines count towards
    noisy_csv: str | None = None             # train mode: the noisy source's CSV and audio folder (None: not read)
    noisy_audio_dir: str | None = None
    grouping: groups.Grouping = field(default_factory=groups.Grouping)   # train mode: split curated clips by group

    @property
    def sources(self) -> list[tuple[str, str, str]]:
        """(source, CSV, audio folder) of every source read, in order of precedence."""
        first = kaggle_layout.TEST if self.mode == "test" else kaggle_layout.CURATED
        noisy = [(kaggle_layout.NOISY, self.noisy_csv, self.noisy_audio_dir)] if self.noisy_csv else []
        return [(first, self.csv_path, self.audio_dir)] + noisy


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _static_manifest(spec: JobSpec) -> dict:
    """What the manifest says that is known before the pipeline runs (plain data: it is pickled)."""
    return {
        "mode": spec.mode,
        "sources": [name for name, _, _ in spec.sources],
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": spec.inputs,
        "max_error_ratio": spec.max_error_ratio,
        "eval_ratio": spec.eval_ratio if spec.mode == "train" else None,
        # how clips were split: by a hash of the file name, or of the clip's group (pipeline/data/groups.py)
        "split_by": (spec.grouping.describe() if spec.grouping else "file name")
        if spec.mode == "train" else None,
        "labels": {"file": output.LABELS, "count": len(spec.vocabulary)},
        "dead_letters": output.DEAD_LETTERS,
        "feature_config": config_lib.to_dict(spec.cfg),
        "feature_config_text": config_lib.to_text(spec.cfg),
        "example": {"mel_shape": list(config_lib.mel_shape(spec.cfg)),
                    "compression": "GZIP" if tfrecord.DEFLATE[spec.compression] else "NONE",
                    "deflate": spec.compression},
        "versions": _versions(),
    }


def per_source(shards: dict, dead: dict, rows_by_source: dict, sources: list[str]) -> dict:
    """{source: {input_rows, written, failed, per_split}}: each source's counts, which reconcile like the totals."""
    out = {}
    for name in sources:
        per_split = {split: s.get("by_source", {}).get(name, 0) for split, s in shards.items()}
        out[name] = {"input_rows": rows_by_source.get(name, 0), "written": sum(per_split.values()),
                     "failed": dead.get("by_source", {}).get(name, 0),
                     "per_split": {k: v for k, v in per_split.items() if v}}
    return out


def _write_manifest(_, shards: dict, dead: dict, rows_by_source: dict, labels_written: dict, static: dict,
                    vocabulary: list[str], output_dir: str) -> dict:
    """The last write of a run: counts that reconcile, and the status that readers trust."""
    input_rows = sum(rows_by_source.values())
    written = sum(s["records"] for s in shards.values())
    failed = dead["failed"]
    ratio = failed / input_rows if input_rows else 1.0
    status, reason = output.STATUS_COMPLETE, ""
    if input_rows == 0:
        status, reason = "failed", "the CSV has no data rows"
    elif written == 0:
        status, reason = "failed", "no example was written"
    elif ratio > static["max_error_ratio"]:
        status, reason = "failed", (f"{failed} of {input_rows} rows failed (error ratio {ratio:.3f} > "
                                    f"--max_error_ratio {static['max_error_ratio']}); see {output.DEAD_LETTERS}")
    sources = per_source(shards, dead, rows_by_source, static["sources"])
    if written + failed != input_rows:  # an invariant of the transforms; never expected
        status, reason = "failed", f"counts do not reconcile: {written} written + {failed} failed != {input_rows} rows"
    for name, c in sources.items():
        if c["written"] + c["failed"] != c["input_rows"]:
            status, reason = "failed", (f"counts do not reconcile for the {name} source: {c['written']} written + "
                                        f"{c['failed']} failed != {c['input_rows']} rows")
    if any("groups" in s for s in shards.values()):
        spanning = max(s.get("shared_groups", 0) for s in shards.values())
        if spanning:   # by construction never; a split that broke its promise must not pass as complete
            status, reason = "failed", f"{spanning} groups have clips in more than one split"
    manifest = dict(static)
    manifest.update({
        "status": status,
        "status_reason": reason,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "counts": {
            "input_rows": input_rows,
            "written": written,
            "failed": failed,
            "per_split": {k: v["records"] for k, v in shards.items()},
            "failed_by_reason": dead["by_reason"],
            "failed_by_stage": dead["by_stage"],
            "per_source": sources,
            # clips per label among the written examples (the run report's label counts)
            "per_label": {name: labels_written.get(k, 0) for k, name in enumerate(vocabulary)},
        },
        "error_ratio": ratio,
        "splits": shards,
    })
    fileio.write_json(fileio.join(output_dir, output.MANIFEST), manifest)
    return manifest


def build(p: beam.Pipeline, spec: JobSpec) -> beam.PCollection:
    """Add the job to pipeline `p`; returns the PCollection holding the written manifest."""
    vocabulary = spec.vocabulary if spec.mode == "train" else None
    rows = p | "ReadRows" >> bt.ReadRows([(name, csv) for name, csv, _ in spec.sources], vocabulary)
    audio_dirs = {name: folder for name, _, folder in spec.sources}
    from pipeline.beam import runners

    # progress lines say "of ~N" only where one process does all the work (its counter is the job's)
    total = spec.expected_rows if runners.in_one_process(p.options) else None
    feats = rows["rows"] | "ComputeFeatures" >> bt.ComputeFeatures(
        audio_dirs, spec.cfg, spec.batch_size, spec.intra_op_threads, expected_rows=total)
    shards = feats["mels"] | "WriteExamples" >> bt.WriteExamples(
        spec.output_dir, spec.eval_ratio if spec.mode == "train" else None, spec.compression, spec.split_prefix,
        tag_source=len(spec.sources) > 1, grouping=spec.grouping if spec.mode == "train" else groups.Grouping())
    dead = ((rows[bt.DEAD], feats[bt.DEAD]) | "AllDead" >> beam.Flatten()
            | "WriteDeadLetters" >> bt.WriteDeadLetters(fileio.join(spec.output_dir, output.DEAD_LETTERS)))
    rows_by_source = ((rows["rows"] | "RowSource" >> beam.Map(lambda r: r.source),
                       rows[bt.DEAD] | "DeadRowSource" >> beam.Map(lambda d: d["source"]))
                      | "AllRows" >> beam.Flatten() | "CountRows" >> beam.combiners.Count.PerElement())
    labels_written = (feats["mels"] | "WrittenLabels" >> beam.FlatMap(lambda clip_mel: clip_mel[0].row.labels)
                      | "CountLabels" >> beam.combiners.Count.PerElement())
    return (p | "ManifestTrigger" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(shards),
                                          beam.pvalue.AsSingleton(dead), beam.pvalue.AsDict(rows_by_source),
                                          beam.pvalue.AsDict(labels_written), _static_manifest(spec),
                                          spec.vocabulary if spec.mode == "train" else [], spec.output_dir))


def make_spec(*, output_dir: str, cfg: config_lib.FeatureConfig, data_dir: str | None = None, mode: str = "train",
              csv: str | None = None, audio_dir: str | None = None, labels: str | None = None,
              eval_ratio: float = 0.1, max_error_ratio: float = 0.05, batch_size: int = 8,
              intra_op_threads: int = 0, compression: str = "none", split_prefix: str = "",
              inputs: dict | None = None, noisy: bool | None = None, noisy_csv: str | None = None,
              noisy_audio_dir: str | None = None, group_regex: str = "", group_column: str = "",
              group_csv: str = "") -> JobSpec:
    """A checked JobSpec: paths default to the Kaggle layout under `data_dir`, the label vocabulary
    is read and the CSVs' headers checked here, in the driver, so a wrong file fails before any
    worker starts (bad rows later become dead letters). Raises ValueError saying what is wrong.
    The command line and the TFX component (components/audio_example_gen) both build their spec here.

    The noisy source (train mode only): `noisy_csv`/`noisy_audio_dir` default to DATA/train_noisy.csv
    and DATA/train_noisy; `noisy` None reads them when that CSV exists, True requires them, False
    never reads them.

    Groups (train mode, pipeline/data/groups.py): curated clips are split by their group, so takes of
    one recording never sit on both sides of train/eval: `group_regex` (its first group in the file
    name), or `group_column` of the training CSV, or of `group_csv` (a fname,group CSV; column
    "group" unless `group_column` names another)."""
    def default(value, name, rel):
        if value:
            return value
        if not data_dir:
            raise ValueError(f"give --data_dir or --{name}")
        return fileio.join(data_dir, rel)

    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if not 0.0 <= eval_ratio < 1.0:
        raise ValueError("--eval_ratio must be in [0, 1)")
    if not 0.0 <= max_error_ratio <= 1.0:
        raise ValueError("--max_error_ratio must be in [0, 1]")
    if batch_size < 1:
        raise ValueError("--batch_size must be >= 1")
    if group_regex and (group_column or group_csv):
        raise ValueError("give one way to group clips: --group_regex, or --group_column/--group_csv")
    if group_regex:
        groups.check_regex(group_regex)
    if (group_regex or group_column or group_csv) and mode == "test":
        raise ValueError("groups split train/eval; a test-mode job has one split")
    if compression not in tfrecord.CHOICES:
        raise ValueError(f"compression must be one of {tfrecord.CHOICES}, got {compression!r}")
    compression = tfrecord.canonical(compression)
    test = mode == "test"
    csv_path = default(csv, "csv", "sample_submission.csv" if test else "train_curated.csv")
    audio_path = default(audio_dir, "audio_dir", "test" if test else "train_curated")
    labels_path = default(labels, "labels", "sample_submission.csv")
    try:
        vocabulary = kaggle_layout.load_vocabulary(labels_path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"label vocabulary: {e}") from None
    noisy_paths = _noisy_paths(test, data_dir, noisy, noisy_csv, noisy_audio_dir)
    from apache_beam.io.filesystems import FileSystems
    checked = [("--csv", csv_path, "--audio_dir", audio_path)]
    if noisy_paths:
        checked.append(("--noisy_csv", noisy_paths[0], "--noisy_audio_dir", noisy_paths[1]))
    data_lines, curated_text = 0, ""
    for csv_flag, csv_file, audio_flag, audio_folder in checked:
        for what, path in ((csv_flag, csv_file), (audio_flag, audio_folder)):
            if not FileSystems.exists(path):
                hint = " (the noisy source: --no_noisy leaves it out)" if what.startswith("--noisy") else ""
                raise ValueError(f"{what} {path} does not exist{hint}")
        try:
            text = fileio.read_text(csv_file)
            curated_text = curated_text or text          # the first source's: a group column is read from it
            lines = text.splitlines()
            kaggle_layout.parse_rows("\n".join(lines[:1]), None if test else vocabulary)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"{csv_flag} {csv_file}: {e}") from None
        data_lines += sum(1 for line in lines[1:] if line.strip())
    grouping = _grouping(group_regex, group_column, group_csv, csv_path, curated_text)
    noisy_inputs = {"noisy_csv": noisy_paths[0], "noisy_audio_dir": noisy_paths[1]} if noisy_paths else {}
    return JobSpec(csv_path=csv_path, audio_dir=audio_path, output_dir=output_dir, vocabulary=vocabulary, cfg=cfg,
                   mode=mode, eval_ratio=eval_ratio, max_error_ratio=max_error_ratio, batch_size=batch_size,
                   intra_op_threads=intra_op_threads, compression=compression, split_prefix=split_prefix,
                   expected_rows=data_lines, noisy_csv=noisy_paths and noisy_paths[0],
                   noisy_audio_dir=noisy_paths and noisy_paths[1], grouping=grouping,
                   inputs={"csv": csv_path, "audio_dir": audio_path, "labels": labels_path, **noisy_inputs,
                           **({"data_dir": data_dir} if data_dir else {}), **(inputs or {})})


def _grouping(regex: str, column: str, group_csv: str, csv_path: str, csv_text: str) -> groups.Grouping:
    """The job's Grouping; a group table is read here, in the driver, from `group_csv` or from the
    training CSV's `csv_text` already read (ValueError saying what is wrong)."""
    if regex:
        return groups.Grouping(regex=regex)
    if not (column or group_csv):
        return groups.Grouping()
    column = column or groups.DEFAULT_COLUMN
    if not group_csv:
        return groups.Grouping(column=column, table=groups.read_table(csv_text, column, f"--csv {csv_path}", strict=False))
    try:
        text = fileio.read_text(group_csv)
    except FileNotFoundError as e:
        raise ValueError(f"--group_csv: {e}") from None
    table = groups.read_table(text, column, f"--group_csv {group_csv}", strict=True)
    return groups.Grouping(column=column, csv=group_csv, table=table)


def _noisy_paths(test: bool, data_dir: str | None, noisy: bool | None, csv: str | None,
                 audio_dir: str | None) -> tuple[str, str] | None:
    """(CSV, audio folder) of the noisy source to read, or None; ValueError when asked for and absent."""
    if noisy is False:
        if csv or audio_dir:
            raise ValueError("--no_noisy leaves the noisy source out: drop --noisy_csv and --noisy_audio_dir")
        return None
    if test:
        if noisy or csv or audio_dir:
            raise ValueError("the noisy source is training data: test mode reads sample_submission.csv's clips only")
        return None
    if not (csv and audio_dir) and not data_dir:
        if noisy or csv or audio_dir:
            raise ValueError("the noisy source needs --data_dir, or both --noisy_csv and --noisy_audio_dir")
        return None
    explicit = noisy or csv or audio_dir
    csv = csv or fileio.join(data_dir, kaggle_layout.NOISY_CSV)
    audio_dir = audio_dir or fileio.join(data_dir, kaggle_layout.NOISY_AUDIO)
    from apache_beam.io.filesystems import FileSystems
    if not explicit and not FileSystems.exists(csv):
        return None                      # auto: a layout without train_noisy.csv has the curated source only
    return csv, audio_dir


def start(spec: JobSpec, overwrite: bool) -> None:
    """Prepare the output directory (output.prepare: refuses a used one unless `overwrite`) and
    write the label vocabulary, before the pipeline runs."""
    inputs = [spec.csv_path, spec.audio_dir, spec.noisy_csv, spec.noisy_audio_dir, spec.inputs.get("labels"),
              spec.inputs.get("data_dir")]
    output.prepare(spec.output_dir, overwrite, inputs=[p for p in inputs if p])
    fileio.write_text(fileio.join(spec.output_dir, output.LABELS), "\n".join(spec.vocabulary) + "\n")
