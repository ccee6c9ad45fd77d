"""The Beam job's output directory: what a finished one looks like, and guarding it.

    OUT/train/data-*.tfrecord.gz, OUT/eval/...  (or OUT/test/... in test mode; *.tfrecord without GZIP)
    OUT/labels.txt          label vocabulary, one per line, in model-output order
    OUT/dead_letters.jsonl  one JSON object per rejected row or clip: fname, line, stage, reason, detail
    OUT/manifest.json       written last; "status": "complete" marks a finished, usable output

Readers trust an output only through its manifest (`require_complete`), so an interrupted run,
which never writes one, cannot be mistaken for a finished run. A new run refuses to write into a
directory that already holds files unless told to overwrite, and refuses a local output tree with a
symbolic link inside it (the folder itself may be one): renames into a linked split folder or
deletes under a linked `_tmp` would touch files elsewhere.
"""
from __future__ import annotations

import json
import logging
import os
import re

from apache_beam.io.filesystems import FileSystems

from pipeline import fileio

MANIFEST = "manifest.json"
DEAD_LETTERS = "dead_letters.jsonl"
LABELS = "labels.txt"
STATUS_COMPLETE = "complete"

log = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """The output directory is not usable for what was asked (exists, unfinished, failed)."""


# What a run of the job writes, relative to its output directory: split folders of shards (plain,
# or "Split-<name>" for a TFX Examples artifact), the bundles' temporary folder, the three report
# files and write_text's temporary names. Nothing else is ever deleted by --overwrite.
_JOB_FILE = re.compile(r"^(?:(?:Split-)?(?:train|eval|test)/data-\d{5}-of-\d{5}\.tfrecord(?:\.gz)?"
                       r"|_tmp/[\w-]+\.tfrecord(?:\.gz)?"
                       r"|(?:manifest\.json|labels\.txt|dead_letters\.jsonl)(?:\.tmp)?)$")


def list_files(directory: str) -> list[str]:
    """Every file under `directory`, recursively ([] when it does not exist). A listing error
    raises OutputError: an unreadable folder is never taken for an empty one."""
    try:
        matches = FileSystems.match([fileio.join(directory, "**")])[0].metadata_list
    except Exception as e:  # noqa: BLE001 -- Beam wraps every filesystem error in BeamIOError
        raise OutputError(f"cannot list {directory}: {type(e).__name__}: {e}") from None
    return sorted(m.path for m in matches)


def refuse_links(directory: str) -> None:
    """Raise OutputError naming the first symbolic link found inside a local `directory` (checked
    with lstat, links never followed). The directory itself may be a link; URLs have no links."""
    if not fileio.is_local(directory) or not os.path.isdir(directory):
        return
    for folder, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                raise OutputError(f"{path} is a symbolic link (to {os.readlink(path)}); the job refuses links inside "
                                  f"its output folder, where its writes and deletes would reach files elsewhere: "
                                  f"remove the link or choose another output directory")


def _relative(directory: str, path: str) -> str:
    prefix = directory.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def is_job_file(relative_path: str) -> bool:
    return bool(_JOB_FILE.match(relative_path))


def check_separate(directory: str, inputs: list[str]) -> None:
    """Refuse an output directory that contains an input (the job could overwrite or delete its own
    data) or lies inside one (its files would become data on the next run)."""
    for path in inputs:
        if fileio.is_within(path, directory):
            raise OutputError(f"the output directory {directory} contains the input {path}; choose another one")
        if fileio.is_within(directory, path):
            raise OutputError(f"the output directory {directory} lies inside the input {path}; choose another one")


def read_manifest(directory: str) -> dict | None:
    path = fileio.join(directory, MANIFEST)
    if not FileSystems.exists(path):
        return None
    return json.loads(fileio.read_bytes(path).decode("utf-8"))


def prepare(directory: str, overwrite: bool, inputs: list[str] = (), is_ours=None) -> None:
    """Make `directory` ready for a new run, or refuse with the reason and the way out.

    Refused: an output that contains or lies inside one of `inputs`; a folder that cannot be
    listed; a symbolic link inside it; without `overwrite`, any file; with it, any file a run of
    this job does not write (overwrite deletes only the job's own files, never a stranger's).
    `is_ours(relative path)` says which files those are (default: the feature job's, is_job_file)."""
    check_separate(directory, list(inputs))
    refuse_links(directory)
    files = list_files(directory)
    if not files:
        return
    is_ours = is_ours or is_job_file
    foreign = [_relative(directory, f) for f in files if not is_ours(_relative(directory, f))]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"{directory} holds {len(foreign)} files this job did not write ({shown}); "
                          f"refusing to write there{' even with --overwrite' if overwrite else ''}: "
                          f"use an empty or new output directory")
    manifest = read_manifest(directory)
    if not overwrite:
        if manifest is not None:
            raise OutputError(f"{directory} already holds a finished run (manifest.json, status "
                              f"{manifest.get('status')!r}, {manifest.get('created')}); pass --overwrite to replace it")
        raise OutputError(f"{directory} holds {len(files)} files but no manifest.json: an interrupted or "
                          f"foreign run; pass --overwrite to delete them and start again")
    log.warning("--overwrite: deleting %d files under %s", len(files), directory)
    manifest_path = fileio.join(directory, MANIFEST)
    if manifest_path in files:  # the completion mark goes first, so a crash mid-delete is never "complete"
        FileSystems.delete([manifest_path])
        files.remove(manifest_path)
    if files:
        FileSystems.delete(files)


def require_complete(directory: str) -> dict:
    """The manifest of a finished output, or OutputError saying why it cannot be used."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise OutputError(f"{directory} has no manifest.json: the Beam job did not finish there")
    if manifest.get("status") != STATUS_COMPLETE:
        raise OutputError(f"{directory}: the Beam job ended with status {manifest.get('status')!r}: "
                          f"{manifest.get('status_reason', '')}")
    return manifest
