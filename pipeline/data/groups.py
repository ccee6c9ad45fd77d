"""Which training clips belong together (takes cut from one recording), so that a train/eval split
can keep every clip of a group on one side. Three ways to say it, at most one per job:

- a regex on the file name whose first (...) is the group (`--group_regex`; kitchen10's
  `^[0-9]+-(.+)-[A-Z]+-[0-9]+\\.ogg$`, the recording a take was cut from);
- a column of the training CSV (`--group_column group` with a header `fname,labels,group`);
- a separate CSV of file names and groups (`--group_csv FILE`, columns `fname` and `group`, or the
  column `--group_column` names).

A clip without a group (the regex does not match it, its cell is empty, the table does not list
it) is a group of its own, and the manifest counts it as ungrouped. Without any of the three the
split is a hash of the file name, as it always was. FAT2019's curated clips carry no group;
datasets cut from longer recordings do.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from pipeline.data import kaggle_layout

DEFAULT_COLUMN = "group"


@dataclass(frozen=True)
class Grouping:
    """How clips are grouped: `regex`, or `table` (file name -> group) read from `column` of the
    training CSV or of `csv`. Empty: no grouping."""
    regex: str = ""
    column: str = ""
    csv: str = ""
    table: dict = field(default_factory=dict, compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.regex or self.column)

    def key(self, fname: str) -> str:
        """The split key of a clip: "group <g>", or "clip <fname>" for a clip without a group."""
        if self.regex:
            m = re.match(self.regex, fname)
            group = m.group(1) if m else None
        else:
            group = self.table.get(fname)
        return f"group {group}" if group else f"clip {fname}"

    def describe(self) -> dict:
        """What the manifest records of it (plain data)."""
        if self.regex:
            return {"group_regex": self.regex}
        return {"group_column": self.column, **({"group_csv": self.csv} if self.csv else {})}


def check_regex(regex: str) -> None:
    """A group regex must compile and capture the group (its first group is the key)."""
    try:
        compiled = re.compile(regex)
    except re.error as e:
        raise ValueError(f"--group_regex {regex!r}: {e}") from None
    if compiled.groups < 1:
        raise ValueError(f"--group_regex {regex!r} has no group: its first (...) is the group key, "
                         "e.g. '^[0-9]+-(.+)-[A-Z]+-[0-9]+\\.ogg$' for kitchen10's recording")


def read_table(text: str, column: str, where: str, strict: bool) -> dict[str, str]:
    """{file name: group} of a CSV's `fname` and `column` columns (file names normalized as the
    rows' are; empty cells left out). `strict` (a group CSV of its own): a row of the wrong width
    or a file name given two groups is a ValueError naming the line. Not strict (the training CSV,
    whose malformed rows become dead letters): rows of the wrong width are skipped."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, None) or []]
    if column in ("fname", "labels"):
        raise ValueError(f"--group_column {column!r} names the {column} column itself; name the group's column")
    missing = [c for c in ("fname", column) if c not in header]
    if missing:
        raise ValueError(f"{where}: no column {' or '.join(map(repr, missing))} in its header {header}"
                         + ("" if column != DEFAULT_COLUMN else " (--group_column names another)"))
    at, col = header.index("fname"), header.index(column)
    table, lines = {}, {}
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            if strict:
                raise ValueError(f"{where} line {reader.line_num}: expected {len(header)} columns "
                                 f"({','.join(header)}), got {len(row)}")
            continue
        fname, group = kaggle_layout.normalize_fname(row[at].strip()), row[col].strip()
        if not group:
            continue
        if strict and table.get(fname, group) != group:
            raise ValueError(f"{where} line {reader.line_num}: {fname} is given group {group!r}, but line "
                             f"{lines[fname]} gave it {table[fname]!r}")
        table.setdefault(fname, group)
        lines.setdefault(fname, reader.line_num)
    return table


def add_flags(ap, default=None) -> None:
    """--group_regex, --group_column, --group_csv on an argparse parser (the feature job's and
    fatp-pipeline's; `default` None there, so an unset flag leaves the config file's value)."""
    ap.add_argument("--group_regex", default=default,
                    help="split by group, not by file name: the first (...) of this regex on the file name is the "
                         "group (clips cut from one recording), and all clips of a group land in one split, e.g. "
                         "'^[0-9]+-(.+)-[A-Z]+-[0-9]+\\.ogg$' (kitchen10's recording); a clip without a group is "
                         "a group of its own (the manifest counts them: ungrouped)")
    ap.add_argument("--group_column", default=default,
                    help="split by group: this column of the training CSV holds each clip's group (header "
                         f"fname,labels,{DEFAULT_COLUMN}), or of --group_csv's file")
    ap.add_argument("--group_csv", default=default,
                    help=f"split by group: a CSV with columns fname and {DEFAULT_COLUMN} (or --group_column's) "
                         "giving each training clip's group; clips it does not list are groups of their own")
