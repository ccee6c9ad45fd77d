"""What a cache key must know about the code: the project's version and a digest of the source a
component runs.

TFX reuses a cached result when a component's inputs and execution properties are unchanged. A
preset's name or a config's text without its defaults says nothing about what the code makes of
them: a new release that changes a default (the conv stem, a feature parameter) would reuse
yesterday's model as if it were today's recipe. The components therefore carry `code_version`:
"<project version> <stage>=<digest>..." over the Python source (and compiled protos) of the
packages they run, so any change to that code is a cache miss and nothing else is.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os

DISTRIBUTION = "fat-audio-pipeline"
_PIPELINE = os.path.dirname(os.path.abspath(__file__))
_SHARED = ("config.py", "fileio.py", "saved_model_layout.py", "protos")

# what each component runs, besides the shared modules
FEATURE_JOB = ("data", "features", "beam")
TRAINER = ("data", "features", "metrics", "training")
EVALUATOR = ("metrics", "serving")              # lwlrap_tfma, bootstrap; the model's batch limit
SERVING = ("data", "beam", "serving")           # BulkInferrer and the SubmissionWriter


def project_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown"


def source_digest(paths: list[str]) -> str:
    """sha256 (first 16 hex digits) over the relative names and bytes of the .py files under
    `paths` (files or folders), in a stable order; caches and compiled files are ignored."""
    files = []
    for path in paths:
        if os.path.isfile(path):
            files.append((os.path.basename(path), path))
            continue
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [(os.path.relpath(os.path.join(folder, n), os.path.dirname(path)), os.path.join(folder, n))
                      for n in names if n.endswith(".py")]
    h = hashlib.sha256()
    for name, path in sorted(files):
        with open(path, "rb") as f:
            h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def code_version(stages: tuple[str, ...], *folders: str) -> str:
    """"<version> code=<digest>" over the shared modules, the given stage packages of `pipeline`
    and any other `folders` (a component's own)."""
    paths = [os.path.join(_PIPELINE, p) for p in (*_SHARED, *stages)] + list(folders)
    return f"{project_version()} code={source_digest(paths)}"
