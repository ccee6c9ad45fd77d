"""submission.csv as a Beam transform: every clip's scores joined to sample_submission.csv's rows by
file name, written in the sample's order without one worker holding every clip's scores.

    scores (fname, float32[labels] in the model's label order)
      + the sample's rows (fname, line)       -> CoGroupByKey by fname: one row, its scores or none
      -> (line // SHARD_ROWS, (line, csv line)) -> GroupByKey: a shard of at most SHARD_ROWS lines,
         sorted by line and written to OUT.parts/part-NNNNN
      -> one summary per shard (rows, scored, missing, duplicates)  -> the shards' files concatenated
         in order under a temporary name, renamed to OUT; the parts removed

A worker holds at most one shard's lines at a time; what reaches one place is a summary per shard
(and the first MISSING_NAMED missing names). Beam's local runner keeps a shuffle's data in memory
(about a CSV line a clip here, ~1 KB at 80 labels); a distributed runner spills it.

A row without scores fails the submission naming the clips (no OUT is written) unless
`allow_missing` writes zeros for it; a clip scored twice fails it; scores of clips the sample does
not list are counted and left out. Used by fatp-batch-predict and the pipeline's SubmissionWriter.
"""
from __future__ import annotations

import csv
import io
import logging
import os

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline import fileio
from pipeline.beam import transforms as bt

log = logging.getLogger(__name__)

SHARD_ROWS = 5000        # lines a shard holds: the most any one worker holds at once
MISSING_NAMED = 10       # missing clips named in the failure (all are counted)


def csv_line(fname: str, scores) -> str:
    """One row of submission.csv (scores already in the sample's column order)."""
    buf = io.StringIO()
    csv.writer(buf).writerow([fname, *(f"{v:.6g}" for v in scores)])
    return buf.getvalue()


def header(columns: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(["fname", *columns])
    return buf.getvalue()


def column_order(columns: list[str], model_labels: list[str]) -> list[int]:
    """For each of the sample's columns, the index of its label among the model's outputs."""
    if sorted(columns) != sorted(model_labels):
        raise ValueError(f"the submission's label columns differ from the model's labels "
                         f"({len(set(columns) ^ set(model_labels))} labels differ)")
    return [model_labels.index(c) for c in columns]


class _Join(beam.DoFn):
    """(fname, {"row": [line...], "scores": [array...]}) -> (shard, (line, csv text, state, fname))
    for a row of the sample; state: "scored", "missing" (zeros written) or "duplicate" (scored more
    than once); scores without a row are counted (Beam counter submission_extra) and left out."""

    def __init__(self, reorder: list[int], shard_rows: int):
        self._reorder, self._shard_rows = reorder, shard_rows

    def process(self, keyed):
        fname, grouped = keyed
        lines, scores = list(grouped["row"]), list(grouped["scores"])
        if not lines:
            beam.metrics.Metrics.counter(bt.NAMESPACE, "submission_extra").inc()
            return
        line = lines[0]
        if len(scores) > 1:
            state, values = "duplicate", np.zeros(len(self._reorder))
        elif scores:
            state, values = "scored", np.asarray(scores[0])[self._reorder]
        else:
            state, values = "missing", np.zeros(len(self._reorder))
        yield line // self._shard_rows, (line, csv_line(fname, values), state, fname)


class _WriteShard(beam.DoFn):
    def __init__(self, parts_dir: str):
        self._parts_dir = parts_dir

    def process(self, shard_lines):
        shard, lines = shard_lines
        lines = sorted(lines)
        path = fileio.join(self._parts_dir, f"part-{shard:05d}")
        fileio.write_text(path, "".join(text for _, text, _, _ in lines))
        missing = [fname for _, _, state, fname in lines if state == "missing"]
        twice = [fname for _, _, state, fname in lines if state == "duplicate"]
        yield {"shard": shard, "path": path, "rows": len(lines), "scored": sum(s == "scored" for _, _, s, _ in lines),
               "missing": len(missing), "missing_named": missing[:MISSING_NAMED], "duplicates": twice[:MISSING_NAMED],
               "duplicate_count": len(twice)}


def _finish(_, shards: list[dict], bad_rows: int, columns: list[str], out_path: str, parts_dir: str, allow_missing: bool,
            source: str, why_missing: str) -> dict:
    """Concatenate the shards in order into out_path (or refuse): the summary, or {"error": ...}."""
    shards = sorted(shards, key=lambda s: s["shard"])
    summary = {"model": source, "rows": sum(s["rows"] for s in shards), "scored": sum(s["scored"] for s in shards),
               "missing": sum(s["missing"] for s in shards),
               "missing_named": [f for s in shards for f in s["missing_named"]][:MISSING_NAMED]}
    duplicates = sum(s["duplicate_count"] for s in shards)
    error = None
    if bad_rows:
        error = f"{bad_rows} rows of the sample cannot be used (empty or repeated file names), so the submission would miss them"
    elif duplicates:
        named = [f for s in shards for f in s["duplicates"]][:MISSING_NAMED]
        error = f"{duplicates} clips were scored more than once: {', '.join(named)}"
    elif summary["missing"] and not allow_missing:
        more = " ..." if summary["missing"] > len(summary["missing_named"]) else ""
        error = (f"{summary['missing']} clips have no scores ({why_missing}): "
                 f"{', '.join(summary['missing_named'])}{more}; pass --allow_missing to write zeros for them")
    if error is None:
        tmp = out_path + ".tmp"
        with FileSystems.create(tmp) as out:
            out.write(header(columns).encode("utf-8"))
            for s in shards:
                with FileSystems.open(s["path"], compression_type="uncompressed") as f:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
        if FileSystems.exists(out_path):
            FileSystems.delete([out_path])
        FileSystems.rename([tmp], [out_path])
        log.info("wrote %s: %d rows, %d scored by %s, %d missing (zeros)", out_path, summary["rows"],
                 summary["scored"], source, summary["missing"])
    parts = [m.path for m in FileSystems.match([fileio.join(parts_dir, "*")])[0].metadata_list]
    if parts:
        FileSystems.delete(parts)
    if fileio.is_local(parts_dir) and os.path.isdir(parts_dir) and not os.listdir(parts_dir):
        os.rmdir(parts_dir)
    return {"error": error, **summary} if error else summary


class WriteSubmission(beam.PTransform):
    """PCollection[(fname, scores in model_labels' order)] -> OUT_PATH (sample_submission.csv's rows
    and columns), and a one-element PCollection: the summary {model, rows, scored, missing,
    missing_named}, or with "error" when no file was written (see the module's doc)."""

    def __init__(self, sample_submission: str, columns: list[str], model_labels: list[str], out_path: str,
                 allow_missing: bool, source: str, why_missing: str, shard_rows: int = SHARD_ROWS):
        super().__init__()
        self._sample, self._columns, self._out = sample_submission, list(columns), out_path
        self._reorder = column_order(columns, model_labels)
        self._allow, self._source, self._why, self._shard_rows = allow_missing, source, why_missing, shard_rows

    def expand(self, scores):
        p = scores.pipeline
        parts = self._out + ".parts"
        sample = p | "SampleRows" >> bt.ReadRows(self._sample, None)
        keyed_rows = sample["rows"] | "ByFname" >> beam.Map(lambda r: (r.fname, r.line))
        bad_rows = sample[bt.DEAD] | "CountBad" >> beam.combiners.Count.Globally()
        shards = ({"row": keyed_rows, "scores": scores} | "Join" >> beam.CoGroupByKey()
                  | "Rows" >> beam.ParDo(_Join(self._reorder, self._shard_rows))
                  | "ByShard" >> beam.GroupByKey()
                  | "WriteShards" >> beam.ParDo(_WriteShard(parts)))
        return (p | "Once" >> beam.Create([None])
                | "Concatenate" >> beam.Map(_finish, beam.pvalue.AsList(shards), beam.pvalue.AsSingleton(bad_rows), self._columns, self._out, parts,
                                            self._allow, self._source, self._why))
