"""The Beam job's output directory: what a finished one looks like, and guarding it.

    OUT/train/data-*.tfrecord.gz, OUT/eval/...  (or OUT/test/... in test mode)
    OUT/labels.txt          label vocabulary, one per line, in model-output order
    OUT/dead_letters.jsonl  one JSON object per rejected row or clip: fname, line, stage, reason, detail
    OUT/manifest.json       written last; "status": "complete" marks a finished, usable output

Readers trust an output only through its manifest (`require_complete`), so an interrupted run,
which never writes one, cannot be mistaken for a finished run. A new run refuses to write into a
directory that already holds files unless told to overwrite.
"""
from __future__ import annotations

import json
import logging

from apache_beam.io.filesystems import FileSystems

MANIFEST = "manifest.json"
DEAD_LETTERS = "dead_letters.jsonl"
LABELS = "labels.txt"
STATUS_COMPLETE = "complete"

log = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """The output directory is not usable for what was asked (exists, unfinished, failed)."""


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def list_files(directory: str) -> list[str]:
    try:
        matches = FileSystems.match([join(directory, "**")])[0].metadata_list
    except Exception:  # a directory that does not exist matches nothing
        return []
    return sorted(m.path for m in matches)


def read_text(path: str) -> str:
    """A UTF-8 text file (a BOM is dropped) through Beam's FileSystems, so gs:// or s3:// work."""
    try:
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8-sig")
    except (OSError, IOError) as e:
        raise FileNotFoundError(f"cannot read {path}: {e}") from None


def read_manifest(directory: str) -> dict | None:
    path = join(directory, MANIFEST)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def write_text(path: str, text: str) -> None:
    """Write through a temporary name and a rename, so readers never see half a file."""
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(text.encode("utf-8"))
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json(path: str, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def prepare(directory: str, overwrite: bool) -> None:
    """Make `directory` ready for a new run, or refuse with the reason and the way out."""
    files = list_files(directory)
    if not files:
        return
    manifest = read_manifest(directory)
    if not overwrite:
        if manifest is not None:
            raise OutputError(f"{directory} already holds a finished run (manifest.json, status "
                              f"{manifest.get('status')!r}, {manifest.get('created')}); pass --overwrite to replace it")
        raise OutputError(f"{directory} holds {len(files)} files but no manifest.json: an interrupted or "
                          f"foreign run; pass --overwrite to delete them and start again")
    log.warning("--overwrite: deleting %d files under %s", len(files), directory)
    manifest_path = join(directory, MANIFEST)
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
