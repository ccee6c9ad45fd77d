"""The Kaggle FAT2019 layout: train_curated.csv (and train_noisy.csv) rows, the label vocabulary, safe file names.

    DATA/train_curated.csv       fname,labels        ("0006ae4e.wav","Bark" or "Walk_and_footsteps,Slam")
                                 (more named columns may follow, e.g. a clip's group: pipeline/data/groups.py)
    DATA/train_curated/*.wav
    DATA/train_noisy.csv         the same columns: FAT2019's second, larger source, with unreliable labels
    DATA/train_noisy/*.wav       (optional: a layout without it has the curated source only)
    DATA/sample_submission.csv   fname,<80 label columns in the competition's order>
    DATA/test/*.wav

The label order is the order of sample_submission.csv's columns (or of a labels.txt file, one
label per line), so model outputs line up with the submission format. Row problems are returned as
(reason, detail) rather than raised: the Beam job reports them as dead letters.

Every row and bad row names its source (CURATED, NOISY, or TEST for sample_submission.csv's clips).
One file name is one clip: `parse_sources` keeps a name listed in two sources in the first only and
reports the other listing as a duplicate_fname bad row (Examples, splits and joins are keyed by
the name, so two clips of one name could not be told apart downstream).
"""
from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass, field

from pipeline.fileio import read_text


CURATED, NOISY, TEST = "curated", "noisy", "test"      # the sources' names, as Examples and reports say them
NOISY_CSV, NOISY_AUDIO = "train_noisy.csv", "train_noisy"


@dataclass(frozen=True)
class Row:
    """One input row: a clip to read, with label indices (empty in test mode), and its source."""
    fname: str
    line: int
    labels: tuple[int, ...] = field(default=())
    source: str = CURATED


@dataclass(frozen=True)
class BadRow:
    fname: str
    line: int
    reason: str
    detail: str
    source: str = CURATED


def load_vocabulary(path: str) -> list[str]:
    """Labels in model-output order from sample_submission.csv (its header) or a labels.txt."""
    text = read_text(path)
    if path.endswith(".csv"):
        header = next(csv.reader(io.StringIO(text)), [])
        if len(header) < 2 or header[0] != "fname":
            raise ValueError(f"{path}: expected a header 'fname,<label>,...', got {header[:3]}")
        labels = [h.strip() for h in header[1:]]
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path}: no labels found")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate labels {dupes}")
    return labels


def unsafe_path_reason(fname: str) -> str | None:
    """Why fname could escape the audio folder, or None when it is a plain relative path."""
    if not fname:
        return "empty file name"
    if "\x00" in fname or "\\" in fname:
        return "file name holds a NUL or backslash"
    if "://" in fname or fname.startswith("/") or (len(fname) > 1 and fname[1] == ":"):
        return "absolute path or URL"
    normalized = posixpath.normpath(fname)
    if normalized == ".." or normalized.startswith("../") or "/../" in f"/{fname}/":
        return "path climbs out of the audio folder with '..'"
    if normalized == ".":
        return "names the audio folder itself, not a file"
    return None


def normalize_fname(fname: str) -> str:
    """The one spelling of a safe file name ("./a.wav", "a.wav/" and "a//b.wav" are "a.wav", "a.wav"
    and "a/b.wav"), used for the duplicate check, the train/eval hash and the examples, so that one
    clip cannot be listed twice under two spellings and land in both splits."""
    return posixpath.normpath(fname)


def parse_rows(text: str, vocabulary: list[str] | None, source: str = CURATED) -> tuple[list[Row], list[BadRow]]:
    """Rows of train_curated.csv or train_noisy.csv (vocabulary given) or sample_submission.csv
    (None: test mode), each marked as from `source`.

    Every data line yields exactly one Row or one BadRow, so input rows = good + bad. The first
    occurrence of a file name wins; later ones are reported as duplicates.
    """
    index = {label: i for i, label in enumerate(vocabulary or [])}
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or header[0].strip() != "fname":
        raise ValueError(f"expected a CSV header starting with 'fname', got {header!r}")
    if vocabulary is not None and (len(header) < 2 or header[1].strip() != "labels"):
        raise ValueError(f"expected the header 'fname,labels', got {header!r}")
    # named columns after fname,labels (a clip's group: pipeline/data/groups.py) are read elsewhere
    width, columns = len(header), ",".join(h.strip() for h in header)
    good, bad, seen = [], [], {}
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue  # blank lines are not rows
        fname = row[0].strip()
        if vocabulary is not None and len(row) != width:
            bad.append(BadRow(fname, line, "malformed_row", f"expected {width} columns ({columns}), got {len(row)}",
                              source))
            continue
        why = unsafe_path_reason(fname)
        if why:
            bad.append(BadRow(fname, line, "unsafe_path", why, source))
            continue
        raw, fname = fname, normalize_fname(fname)
        if fname in seen:
            same = "" if raw == fname else f" as {fname!r}"
            bad.append(BadRow(raw, line, "duplicate_fname", f"already listed{same} on line {seen[fname]}",
                              source))
            continue
        seen[fname] = line
        if vocabulary is None:
            good.append(Row(fname, line, source=source))
            continue
        names = [x.strip() for x in row[1].split(",") if x.strip()]
        unknown = [x for x in names if x not in index]
        if not names:
            bad.append(BadRow(fname, line, "no_labels", "labels column is empty", source))
        elif unknown:
            bad.append(BadRow(fname, line, "unknown_label", f"not in the vocabulary: {', '.join(unknown)}", source))
        else:
            good.append(Row(fname, line, tuple(sorted({index[x] for x in names})), source))
    return good, bad


def parse_sources(texts: list[tuple[str, str, str]], vocabulary: list[str] | None) -> tuple[list[Row], list[BadRow]]:
    """Rows of several sources' CSVs, [(source, csv file name, text)] in order of precedence: each
    parsed by parse_rows, and a file name already listed by an earlier source becomes a
    duplicate_fname bad row of the later one, naming where it is kept. input rows = good + bad."""
    good, bad, kept = [], [], {}
    for source, csv_name, text in texts:
        rows, rejected = parse_rows(text, vocabulary, source)
        bad += rejected
        for row in rows:
            if row.fname in kept:
                where = "{} source ({} line {})".format(*kept[row.fname])
                bad.append(BadRow(row.fname, row.line, "duplicate_fname",
                                  f"also listed by the {where}, which keeps it: one file name is one clip", source))
                continue
            kept[row.fname] = (source, csv_name, row.line)
            good.append(row)
    return good, bad
