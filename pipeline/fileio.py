"""File I/O every stage shares: paths through Beam's FileSystems (local, gs://, s3://), and writes
that readers never see half done.

Atomic writes: a file is written under a temporary name beside its final one and renamed into
place; a folder (a SavedModel version) is built under a temporary name and renamed. On local disks
the data and the folder entry are fsynced, so a power cut after the rename cannot leave an empty
or torn file under the final name. Object stores have no rename of their own (Beam copies, then
deletes) but a reader sees either no object or a whole one.
"""
from __future__ import annotations

import json
import os

from apache_beam.io.filesystems import FileSystems


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def is_local(path: str) -> bool:
    return "://" not in path


def is_within(inner: str, outer: str) -> bool:
    """`inner` is `outer` or lies under it. Local paths are compared after resolving symlinks
    (a link cannot hide where a path really is); URLs by prefix; a local path is never inside a URL."""
    if is_local(inner) != is_local(outer):
        return False
    if is_local(inner):
        inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    inner, outer = inner.rstrip("/"), outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def read_bytes(path: str) -> bytes:
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return f.read()
    except (OSError, IOError) as e:
        raise FileNotFoundError(f"cannot read {path}: {e}") from None


def read_text(path: str) -> str:
    """A UTF-8 text file (a BOM is dropped)."""
    return read_bytes(path).decode("utf-8-sig")


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to PATH.tmp, then rename it to `path` (replacing an older file)."""
    tmp = path + ".tmp"
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)    # as FileSystems.create does
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
        return
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def publish_dir(tmp: str, final: str) -> None:
    """Rename a finished local folder into place: its files are fsynced first, the parent after.
    Refuses to replace an existing `final` (FileExistsError)."""
    for folder, _, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(folder, name), "rb+") as f:
                os.fsync(f.fileno())
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists")
    os.rename(tmp, final)
    _fsync_dir(os.path.dirname(final))
