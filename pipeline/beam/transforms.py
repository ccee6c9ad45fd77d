"""The Beam job's steps as composite PTransforms: rows -> audio -> features -> tf.Examples -> files.

Nothing here raises on bad input: a row or clip that cannot be used leaves its step on the
DEAD output as a dead letter (fname, line, stage, reason, detail, source) and bumps a Beam counter
named after its reason, so that input rows = written + failed always holds.

Rows come from one or more sources (kaggle_layout: curated, noisy; test), each with its CSV and
audio folder; every row, dead letter and written record keeps its source, so the counts reconcile
per source too. Only the curated source's clips are hashed into the eval split: the other sources'
labels are not trusted to judge a model, so their clips all go to train.
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import stat
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import fileio
from pipeline.features import audio
from pipeline.data import example_schema as examples
from pipeline.data import job_output as output
from pipeline.data import groups, kaggle_layout
from pipeline.data import tfrecord
from pipeline import config as config_lib

DEAD = "dead"
NAMESPACE = "fatp"
log = logging.getLogger(__name__)


def dead_letter(fname: str, line: int, stage: str, reason: str, detail: str,
                source: str = kaggle_layout.CURATED) -> beam.pvalue.TaggedOutput:
    Metrics.counter(NAMESPACE, f"failed_{reason}").inc()
    return beam.pvalue.TaggedOutput(DEAD, {"fname": fname, "line": line, "stage": stage, "reason": reason,
                                           "detail": detail, "source": source})


def _hash01(text: str) -> float:
    """A fixed number in [0, 1) for a text: the same on every run and machine."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_of(fname: str, eval_ratio: float) -> str:
    """'eval' for a fixed eval_ratio share of file names, 'train' for the rest: a hash, not a draw."""
    return "eval" if _hash01(fname) < eval_ratio else "train"


@dataclass(frozen=True)
class Clip:
    row: kaggle_layout.Row
    waveform: object  # np.ndarray, mono float32 at the config's sample rate: the part the features use
    source_seconds: float


class _ParseRows(beam.DoFn):
    """All sources' CSVs in one step, so that a clip two sources list is caught (parse_sources).

    The rows leave in a fixed pseudo-random order (a hash of the file name), not the CSVs': Beam's
    local runner kept the order through the Reshuffle below, so each shard held every curated
    clip first and then every noisy one (FAT2019's size: ~2,100 curated records, then ~10,000
    noisy, in each of two shards; bench/shard_order.py), and the Trainer's 2,048-record shuffle
    buffer then fed epochs of curated clips followed by noisy ones. Labels sorted in the CSV (as
    Kaggle's are by file name) ran in blocks the same way."""

    def __init__(self, vocabulary: list[str] | None):
        self._vocabulary = vocabulary

    def process(self, sources: tuple[tuple[str, str], ...]):
        texts = [(name, posixpath.basename(path), fileio.read_text(path)) for name, path in sources]
        good, bad = kaggle_layout.parse_sources(texts, self._vocabulary)
        for name, path in sources:
            log.info("%s: %d usable rows, %d rejected", path, sum(r.source == name for r in good),
                     sum(b.source == name for b in bad))
        for b in bad:
            yield dead_letter(b.fname, b.line, "csv", b.reason, b.detail, b.source)
        yield from sorted(good, key=lambda r: (_hash01(r.fname), r.fname))


def sources_of(csv: str | list, vocabulary: list[str] | None) -> tuple[tuple[str, str], ...]:
    """((source, csv path), ...): a single path is the curated source (test mode, no vocabulary: test)."""
    if isinstance(csv, str):
        return ((kaggle_layout.CURATED if vocabulary is not None else kaggle_layout.TEST, csv),)
    return tuple((name, path) for name, path in csv)


class ReadRows(beam.PTransform):
    """The CSVs' rows (train mode: with label indices; test mode: vocabulary None, fnames only),
    reshuffled so that the clips spread over workers. `csv`: one CSV's path, or [(source, path)]
    in order of precedence (a file name two sources list is kept in the first)."""

    def __init__(self, csv: str | list, vocabulary: list[str] | None):
        super().__init__()
        self._sources, self._vocabulary = sources_of(csv, vocabulary), vocabulary

    def expand(self, pbegin):
        parsed = (pbegin | "CsvPath" >> beam.Create([self._sources])
                  | "Parse" >> beam.ParDo(_ParseRows(self._vocabulary)).with_outputs(DEAD, main="rows"))
        return {"rows": parsed.rows | "Spread" >> beam.Reshuffle(), DEAD: parsed[DEAD]}


def _local_file_problem(path: str, audio_dir: str) -> str | None:
    """Why a local path must not be read: it resolves outside the audio folder (a symlink), or it is
    not a regular file (a FIFO would block the worker, a device file never ends). None when fine
    or when the path is not local (object stores have neither)."""
    if not fileio.is_local(path):
        return None
    if not fileio.is_within(path, audio_dir):      # resolves both: a symlink cannot hide where it points
        return f"resolves to {os.path.realpath(path)}, outside the audio folder {os.path.realpath(audio_dir)}"
    try:
        mode = os.stat(path).st_mode      # follows links, as realpath did
    except FileNotFoundError:
        return None   # reported as missing_file by the read
    if not stat.S_ISREG(mode):
        return "not a regular file (a directory, FIFO, socket or device)"
    return None


class _DecodeAudio(beam.DoFn):
    """Row -> Clip: checks, reads (with retries), decodes, resamples, and keeps only the samples the
    feature function will use (features.window_keeper), so a clip costs at most one window of
    memory from here on. Any failure of one clip is that clip's dead letter. `audio_dir`: one folder,
    or {source: folder} for rows of several sources."""

    READ_ATTEMPTS = 4
    RETRY_DELAY_S = 0.5        # doubled after each failed attempt: 0.5, 1, 2 s

    def __init__(self, audio_dir: str | dict, config_text: str):
        self._audio_dir, self._config_text = audio_dir, config_text

    def _folder(self, row: kaggle_layout.Row) -> str:
        return self._audio_dir if isinstance(self._audio_dir, str) else self._audio_dir[row.source]

    def setup(self):
        from pipeline.features import feature_fn as features

        self._cfg = config_lib.from_text(self._config_text)
        self._keep = features.window_keeper(self._cfg)

    def _read(self, path: str) -> bytes:
        """The file's bytes; transient errors are retried with back-off before they count."""
        for attempt in range(self.READ_ATTEMPTS):
            try:
                with FileSystems.open(path, compression_type="uncompressed") as f:
                    return f.read()
            except Exception:  # noqa: BLE001 -- FileSystems wraps every error in BeamIOError
                if attempt == self.READ_ATTEMPTS - 1 or not FileSystems.exists(path):
                    raise
                Metrics.counter(NAMESPACE, "read_retries").inc()
                time.sleep(self.RETRY_DELAY_S * 2 ** attempt)
        raise AssertionError("unreachable")

    def process(self, row: kaggle_layout.Row):
        folder = self._folder(row)
        path = FileSystems.join(folder, row.fname)
        problem = _local_file_problem(path, folder)
        if problem:
            yield dead_letter(row.fname, row.line, "read", "unsafe_path", problem, row.source)
            return
        try:
            matches = FileSystems.match([path])[0].metadata_list
            if matches:
                audio.check_file_size(matches[0].size_in_bytes, self._cfg.limits)
            data = self._read(path)
        except audio.AudioError as e:
            yield dead_letter(row.fname, row.line, "read", e.reason, e.detail, row.source)
            return
        except Exception as e:  # noqa: BLE001 -- tell missing from unreadable
            if not FileSystems.exists(path):
                yield dead_letter(row.fname, row.line, "read", "missing_file", f"{path} does not exist", row.source)
            else:
                yield dead_letter(row.fname, row.line, "read", "read_error", f"{type(e).__name__}: {e}",
                                  row.source)
            return
        try:
            waveform, info = audio.decode(data, self._cfg.sample_rate, self._cfg.limits)
            del data
            kept = self._keep(waveform)
        except audio.AudioError as e:
            yield dead_letter(row.fname, row.line, "decode", e.reason, e.detail, row.source)
            return
        except Exception as e:  # noqa: BLE001 -- resampling, trimming: still this clip's problem only
            yield dead_letter(row.fname, row.line, "decode", "decode_error", f"{type(e).__name__}: {e}", row.source)
            return
        Metrics.counter(NAMESPACE, "clips_decoded").inc()
        yield Clip(row, np.ascontiguousarray(kept), info["source_seconds"])


_FEATURE_FNS: dict[str, object] = {}
_FEATURE_FNS_LOCK = threading.Lock()


def _shared_feature_fn(config_text: str):
    """One feature function per config and process: DoFn instances on threads of one worker process
    (--direct_running_mode=multi_threading) share it, so it is traced once per process, not once
    per thread (tf.function serializes its own first trace and is safe to call from threads)."""
    from pipeline.features import feature_fn as features
    with _FEATURE_FNS_LOCK:
        if config_text not in _FEATURE_FNS:
            # clips arrive already trimmed and cut to the window by _DecodeAudio (features.window_keeper)
            _FEATURE_FNS[config_text] = features.feature_fn(features.without_trim(config_lib.from_text(config_text)))
        return _FEATURE_FNS[config_text]


def _set_tf_threads(tf, threads: int) -> None:
    """TensorFlow's intra/inter-op threads, which it takes only before it is initialized in the
    process: said once per process when a worker thread finds it already running with others."""
    threading_ = tf.config.threading
    try:
        threading_.set_intra_op_parallelism_threads(threads)
        threading_.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialized in this process (e.g. by another DirectRunner thread)
        now = (threading_.get_intra_op_parallelism_threads(), threading_.get_inter_op_parallelism_threads())
        with _FEATURE_FNS_LOCK:
            if now != (threads, threads) and not _TF_THREADS_WARNED:
                _TF_THREADS_WARNED.append(now)
                log.warning("--tf_threads %d is ignored in worker process %d: TensorFlow already runs there with "
                            "intra/inter-op threads %s/%s (0 = its default); worker processes "
                            "(--direct_running_mode=multi_processing) each take it", threads, os.getpid(), *now)


_TF_THREADS_WARNED: list = []


class _Progress:
    """Clips featurized in this process, for one line every few seconds: "features: 120 of ~819
    clips (15%), 14.2 clips/s, ~49 s left" where the process does the whole job (`total` known),
    else "120 clips in this worker process". Threads of a process share it."""

    EVERY_S = 5.0

    def __init__(self):
        self._lock, self._done, self._t0, self._last = threading.Lock(), 0, None, 0.0

    def add(self, n: int, total: int | None) -> None:
        with self._lock:
            now = time.time()
            self._done += n
            if self._t0 is None:         # the first batch: time counts from here, the first line EVERY_S later
                self._t0 = self._last = now
                return
            if now - self._last < self.EVERY_S:
                return
            self._last = now
            done, rate = self._done, self._done / max(now - self._t0, 1e-9)
        if total:
            left = f", ~{max(total - done, 0) / rate:.0f} s left" if done < total else ""
            log.info("features: %d of ~%d clips (%.0f%%), %.1f clips/s%s", done, total, 100 * min(done / total, 1),
                     rate, left)
        else:
            log.info("features: %d clips in this worker process, %.1f clips/s", done, rate)


_PROGRESSES: dict[str, _Progress] = {}       # per job (a process may run several: tests, TFX)


def _progress(job: str) -> _Progress:
    with _FEATURE_FNS_LOCK:
        return _PROGRESSES.setdefault(job, _Progress())


class _ComputeFeatures(beam.DoFn):
    """Batches of clips through the feature function, traced once per worker process."""

    def __init__(self, config_text: str, intra_op_threads: int, expected_rows: int | None = None):
        self._config_text, self._threads, self._total = config_text, intra_op_threads, expected_rows
        self._job = uuid.uuid4().hex          # copies of this DoFn on the job's workers share it

    def setup(self):
        import tensorflow as tf

        from pipeline.features import feature_fn as features
        if self._threads:
            _set_tf_threads(tf, self._threads)
        self._pad_batch = features.pad_batch
        self._fn = _shared_feature_fn(self._config_text)

    def _run(self, clips):
        waveform, length = self._pad_batch([c.waveform for c in clips])
        return self._fn(waveform, length).numpy()

    def process(self, clips: list[Clip]):
        try:
            mels = list(self._run(clips))
        except Exception:  # isolate the clip that breaks the batch; the rest go on
            mels = []
            for c in clips:
                try:
                    mels.append(self._run([c])[0])
                except Exception as e:
                    mels.append(e)
        for clip, mel in zip(clips, mels):
            if isinstance(mel, Exception):
                yield dead_letter(clip.row.fname, clip.row.line, "features", "feature_error",
                                  f"{type(mel).__name__}: {mel}", clip.row.source)
            else:
                yield clip, mel
        Metrics.counter(NAMESPACE, "clips_featurized").inc(len(clips))
        _progress(self._job).add(len(clips), self._total)


class ComputeFeatures(beam.PTransform):
    """Rows -> decoded audio, trimmed and cut to the window -> batched feature function ->
    (Clip, mel [frames, n_mels]). `audio_dir`: one folder, or {source: folder}."""

    def __init__(self, audio_dir: str | dict, cfg: config_lib.FeatureConfig, batch_size: int, intra_op_threads: int = 0,
                 expected_rows: int | None = None):
        super().__init__()
        self._audio_dir, self._cfg = audio_dir, cfg
        self._batch_size, self._threads, self._total = batch_size, intra_op_threads, expected_rows

    def expand(self, rows):
        decoded = rows | "Decode" >> beam.ParDo(_DecodeAudio(self._audio_dir, config_lib.to_text(self._cfg))).with_outputs(
            DEAD, main="clips")
        featurized = (decoded.clips
                      | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
                      | "Features" >> beam.ParDo(_ComputeFeatures(config_lib.to_text(self._cfg), self._threads, self._total))
                      .with_outputs(DEAD, main="mels"))
        return {"mels": featurized.mels, DEAD: (decoded[DEAD], featurized[DEAD]) | "FlattenDead" >> beam.Flatten()}


class _WriteBundleFiles(beam.DoFn):
    """Streams each bundle's examples into one temporary TFRecord file per split.

    Memory stays flat whatever the dataset size (no GroupByKey over examples); the files are
    renamed into place by `finalize_shards` once all bundles are done. A bundle that fails and is
    retried writes new files (fresh names); the failed attempt's files are never reported, so
    finalize_shards deletes them as orphans. Every name starts with the run's id: a run deletes only
    its own temporary files, never another run's or a stranger's.

    Why not Beam's WriteToTFRecord, which does the same temp-file/finalize dance: its GZIP is zlib
    level 6 (7.5 ms an example, measured in bench/README.md) with no Huffman-only setting (2.7 ms),
    it needs one sink per split, and it reports file names but not the records in each file,
    which the manifest lists.
    """

    def __init__(self, tmp_dir: str, compression: str, run_id: str):
        self._tmp_dir, self._compression, self._run_id = tmp_dir, compression, run_id

    def start_bundle(self):
        self._writers, self._by_source, self._groups = {}, {}, {}

    def process(self, split_and_record):
        split, record, source, group = split_and_record
        if group is not None:                  # a split by group: which groups each split holds
            self._groups.setdefault(split, set()).add(group)
        writer = self._writers.get(split)
        if writer is None:
            name = f"{self._run_id}-{split}-{uuid.uuid4().hex}{tfrecord.suffix(self._compression)}"
            path = FileSystems.join(self._tmp_dir, name)
            writer = self._writers[split] = tfrecord.TFRecordWriter(path, self._compression)
            self._by_source[split] = Counter()
        writer.write(record)
        self._by_source[split][source] += 1
        Metrics.counter(NAMESPACE, f"written_{split}").inc()

    def finish_bundle(self):
        for split, writer in self._writers.items():
            writer.close()
            yield WindowedValue({"split": split, "tmp_path": writer.path, "records": writer.records,
                                 "by_source": dict(self._by_source[split]),
                                 "groups": sorted(self._groups.get(split, ()))},
                                window.MIN_TIMESTAMP, [window.GlobalWindow()])
        self._writers, self._by_source, self._groups = {}, {}, {}


def finalize_shards(_, infos: list[dict], out_dir: str, tmp_dir: str, run_id: str, split_prefix: str = "") -> dict:
    """Rename the bundles' files to OUT/<prefix><split>/data-NNNNN-of-MMMMM.tfrecord[.gz]; drop orphans.

    Orphans are files of bundles that a runner retried: only the files reported by committed
    bundles (`infos`) are kept, and only this run's (`run_id`-) files are ever deleted. A symbolic
    link that appeared in the output tree since the job checked it stops the job before any rename.
    Safe to run again after a partial or complete run (a retried step): a shard already renamed is
    left in place.
    """
    output.refuse_links(out_dir)
    summary = {}
    groups = {split: {g for i in infos if i["split"] == split for g in i.get("groups", ())}
              for split in {i["split"] for i in infos}}
    for split in sorted({i["split"] for i in infos}):
        mine = sorted((i for i in infos if i["split"] == split), key=lambda i: i["tmp_path"])
        files = []
        split_dir = FileSystems.join(out_dir, split_prefix + split)
        if not FileSystems.exists(split_dir):  # local filesystems need it; object stores ignore it
            FileSystems.mkdirs(split_dir)
        for n, info in enumerate(mine):
            ext = ".tfrecord.gz" if info["tmp_path"].endswith(".gz") else ".tfrecord"
            rel = f"{split_prefix}{split}/data-{n:05d}-of-{len(mine):05d}{ext}"
            final = FileSystems.join(out_dir, rel)
            # idempotent: a runner may retry this step after some renames were done
            if FileSystems.exists(info["tmp_path"]) or not FileSystems.exists(final):
                FileSystems.rename([info["tmp_path"]], [final])
            files.append({"path": rel, "records": info["records"]})
        by_source = sum((Counter(info["by_source"]) for info in mine), Counter())
        summary[split] = {"records": sum(f["records"] for f in files), "files": files,
                          "by_source": dict(sorted(by_source.items()))}
        if any(groups.values()):       # a split by group: groups held, and those another split holds too
            others = set().union(*(g for s, g in groups.items() if s != split))
            summary[split].update(groups=len(groups[split]), shared_groups=len(groups[split] & others),
                                  ungrouped=sum(g.startswith("clip ") for g in groups[split]))
    leftovers = [m.path for m in FileSystems.match([FileSystems.join(tmp_dir, f"{run_id}-*")])[0].metadata_list]
    if leftovers:
        log.info("removing %d temporary files of retried bundles", len(leftovers))
        FileSystems.delete(leftovers)
    if fileio.is_local(tmp_dir) and os.path.isdir(tmp_dir) and not os.listdir(tmp_dir):
        os.rmdir(tmp_dir)   # object stores have no folders to remove
    return summary


class WriteExamples(beam.PTransform):
    """(Clip, mel) -> tf.Examples in TFRecord shards per split (GZIP unless compression is "none");
    outputs the shard summary (records per split, and per source within each split).

    Split folders are named `split_prefix + split`: plain for the command line, "Split-" for a
    TFX Examples artifact, whose readers look for Split-<name>/. `eval_ratio` None: one "test"
    split; else curated clips go to eval by split_of(fname) and clips of other sources to train.
    `grouping` (pipeline/data/groups.py): curated clips go by split_of(their group key), so every
    clip of a group (takes cut from one recording) lands in one split; a clip without a group is
    its own.
    `tag_source`: write each Example's source (a job of more than one source; a one-source job's
    Examples stay exactly the seed's)."""

    def __init__(self, out_dir: str, eval_ratio: float | None, compression: str = "none", split_prefix: str = "",
                 tag_source: bool = False, grouping: groups.Grouping | None = None):
        super().__init__()
        self._out_dir, self._eval_ratio, self._compression = out_dir, eval_ratio, compression
        self._grouping = grouping or groups.Grouping()
        self._split_prefix, self._tag_source = split_prefix, tag_source
        self._tmp_dir = FileSystems.join(out_dir, "_tmp")
        self._run_id = uuid.uuid4().hex[:12]

    def _keyed_example(self, clip_mel):
        clip, mel = clip_mel
        row = clip.row
        group = None
        if self._eval_ratio is None:
            split = "test"
        elif row.source != kaggle_layout.CURATED:
            split = "train"
        elif self._grouping:
            group = self._grouping.key(row.fname)
            split = split_of(group, self._eval_ratio)
        else:
            split = split_of(row.fname, self._eval_ratio)
        record = examples.serialize(row.fname, row.labels, mel, clip.source_seconds,
                                    row.source if self._tag_source else None)
        return split, record, row.source, group

    def expand(self, mels):
        infos = (mels | "Serialize" >> beam.Map(self._keyed_example)
                 | "WriteBundles" >> beam.ParDo(_WriteBundleFiles(self._tmp_dir, self._compression, self._run_id)))
        return (mels.pipeline | "FinalizeTrigger" >> beam.Create([None])
                | "Finalize" >> beam.Map(finalize_shards, beam.pvalue.AsList(infos), self._out_dir, self._tmp_dir,
                                         self._run_id, self._split_prefix))


def _write_dead_letters(letters: list[dict], path: str) -> dict:
    import json

    order = {kaggle_layout.CURATED: 0, kaggle_layout.NOISY: 1}
    letters = sorted(letters, key=lambda d: (order.get(d["source"], 2), d["source"], d["line"], d["fname"],
                                             d["stage"]))
    with FileSystems.create(path) as f:
        for d in letters:
            f.write((json.dumps(d, sort_keys=True) + "\n").encode("utf-8"))
    count = lambda key: dict(Counter(d[key] for d in letters))  # noqa: E731
    return {"failed": len(letters), "by_reason": count("reason"), "by_stage": count("stage"),
            "by_source": count("source")}


class WriteDeadLetters(beam.PTransform):
    """All dead letters, by source (curated first) and input line, into one JSONL file; outputs their counts."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, letters):
        return (letters | "Collect" >> beam.combiners.ToList()
                | "Write" >> beam.Map(_write_dead_letters, self._path))
