"""What the Audio ExampleGen reads: the paths its config (pipeline.config.AudioExampleGenConfig)
resolves inside the data folder, and a fingerprint of those inputs for TFX's cache key.

Shared by the driver (which fingerprints the inputs before the cache lookup) and the executor (which
runs the job on the same paths), so the two cannot disagree about what "the data" is.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from pipeline.config import AudioExampleGenConfig

# exec property names (component spec parameters, plus the one the driver adds)
DATA_DIR = "data_dir"
CONFIG = "config"
CODE_VERSION = "code_version"
FINGERPRINT = "input_fingerprint"   # the name TFX's own ExampleGen uses for the same idea


@dataclass(frozen=True)
class InputPaths:
    csv: str
    audio_dir: str
    labels: str
    noisy_csv: str | None = None           # the noisy source, where it is read (None: curated only)
    noisy_audio_dir: str | None = None
    group_csv: str | None = None           # a CSV of each training clip's group, where one is named


def _under(data_dir: str, path: str) -> str:
    if path.startswith("/") or "://" in path:
        return path
    return FileSystems.join(data_dir, path)


def resolve(data_dir: str, cfg: AudioExampleGenConfig) -> InputPaths:
    """Paths of the CSV, the audio folder and the label file, of the group CSV where one is named,
    and of the noisy source's CSV and folder where it is read (mode TRAIN; `noisy` ON, or AUTO and
    its CSV exists); relative paths are under data_dir."""
    paths = InputPaths(csv=_under(data_dir, cfg.csv), audio_dir=_under(data_dir, cfg.audio_dir),
                       labels=_under(data_dir, cfg.labels),
                       group_csv=_under(data_dir, cfg.group_csv) if cfg.group_csv else None)
    if cfg.mode == AudioExampleGenConfig.TEST or cfg.noisy == AudioExampleGenConfig.OFF:
        return paths
    noisy_csv = _under(data_dir, cfg.noisy_csv)
    if cfg.noisy == AudioExampleGenConfig.AUTO and not FileSystems.exists(noisy_csv):
        return paths
    return dataclasses.replace(paths, noisy_csv=noisy_csv, noisy_audio_dir=_under(data_dir, cfg.noisy_audio_dir))


def _metadata(pattern: str) -> list:
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001 -- Beam wraps every filesystem error in BeamIOError
        raise ValueError(f"cannot list {pattern}: {e}") from None


def _content_checksum(path: str) -> str:
    """The object store's checksum of a file where it keeps one, else sha256 of its bytes. (Beam's
    local filesystem answers a file's size as its "checksum": never used here.)"""
    if "://" in path:
        try:
            return FileSystems.checksum(path)
        except Exception:  # noqa: BLE001 -- a store without checksums: read the bytes
            pass
    h = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(paths: InputPaths, mode: int = AudioExampleGenConfig.METADATA) -> str:
    """A digest that changes when the data changes: the CSVs' and the label file's bytes, and for
    every file under the audio folders its name and size with, by `mode`, its modification time
    (METADATA, what TFX's FileBasedExampleGen fingerprints too, without reading gigabytes of
    audio) or a checksum of its content (CONTENT). The noisy source's CSV and folder count where
    it is read, and the group CSV where one is named; without them the digest is what it was
    before either existed.

    Returns "sha256:<hex> files=<n> bytes=<total>[ content]", readable in MLMD."""
    noisy = [("noisy CSV", paths.noisy_csv), ("noisy audio folder", paths.noisy_audio_dir)] if paths.noisy_csv else []
    grouped = [("group CSV", paths.group_csv)] if paths.group_csv else []
    for what, path in [("CSV", paths.csv), ("label file", paths.labels), ("audio folder", paths.audio_dir), *noisy,
                       *grouped]:
        if not FileSystems.exists(path):
            raise ValueError(f"the {what} {path} does not exist")
    h = hashlib.sha256()
    for path in (paths.csv, paths.labels) + ((paths.noisy_csv,) if noisy else ()) + tuple(p for _, p in grouped):
        with FileSystems.open(path, compression_type="uncompressed") as f:
            h.update(path.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    folders = [paths.audio_dir] + ([paths.noisy_audio_dir] if noisy else [])
    files = [m for folder in folders for m in sorted(_metadata(FileSystems.join(folder, "**")), key=lambda m: m.path)]
    content = mode == AudioExampleGenConfig.CONTENT
    total = 0
    for m in files:
        total += m.size_in_bytes
        version = _content_checksum(m.path) if content else m.last_updated_in_seconds
        h.update(f"{m.path}\0{m.size_in_bytes}\0{version}\n".encode())
    return f"sha256:{h.hexdigest()} files={len(files)} bytes={total}{' content' if content else ''}"
