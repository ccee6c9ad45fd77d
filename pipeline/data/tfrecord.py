"""TFRecord framing over Beam's FileSystems, so shards can be written to gs:// or s3:// too.

A record is: uint64 length, masked crc32c of the length, the bytes, masked crc32c of the bytes.
Files are plain TFRecords (`*.tfrecord`) or GZIP streams (`*.tfrecord.gz`), as
tf.data.TFRecordDataset reads them with compression_type "" or "GZIP" (`compression_type(path)`
says which). The choice (`--compression`), measured per seed-preset example (326 kB,
bench/README.md):

    none  no deflate:               ~0.1 ms,  100% of the bytes
    fast  GZIP, Huffman coding only: ~2.7 ms,  ~74% (no LZ77 matching: float noise has few repeats)
    best  GZIP, zlib level 6:        ~7.6 ms,  ~65% (what Beam's own GZIP sink and TF's writer use)
"""
from __future__ import annotations

import struct
import zlib

import google_crc32c

# compression -> (zlib level, strategy), None for plain TFRecords
DEFLATE = {"none": None, "fast": (1, zlib.Z_HUFFMAN_ONLY), "best": (6, zlib.Z_DEFAULT_STRATEGY)}
# earlier name of "best", still accepted (AudioExampleGenConfig.Deflate.SMALL)
ALIASES = {"small": "best"}
CHOICES = sorted(DEFLATE) + sorted(ALIASES)


def canonical(compression: str) -> str:
    """'none', 'fast' or 'best' for any accepted name; KeyError for an unknown one."""
    name = ALIASES.get(compression, compression)
    if name not in DEFLATE:
        raise KeyError(f"unknown compression {compression!r}; choose one of {CHOICES}")
    return name


def suffix(compression: str) -> str:
    """The file name ending of shards written with `compression`."""
    return ".tfrecord" if DEFLATE[canonical(compression)] is None else ".tfrecord.gz"


def compression_type(path: str) -> str:
    """tf.data.TFRecordDataset's compression_type for a shard written here: by its name."""
    return "GZIP" if path.endswith(".gz") else ""


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return b"".join([length, struct.pack("<I", _masked_crc(length)), record, struct.pack("<I", _masked_crc(record))])


class TFRecordWriter:
    """Writes framed records to one file, deflated as `compression` says; use as a context manager
    or call close()."""

    def __init__(self, path: str, compression: str = "fast"):
        from apache_beam.io.filesystem import CompressionTypes   # here: readers need only compression_type()
        from apache_beam.io.filesystems import FileSystems

        deflate = DEFLATE[canonical(compression)]
        self.path = path
        self.records = 0
        self._f = FileSystems.create(path, mime_type="application/octet-stream",
                                     compression_type=CompressionTypes.UNCOMPRESSED)
        self._z = None
        if deflate is not None:
            level, strategy = deflate
            self._z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, strategy)  # 16+: gzip header

    def write(self, record: bytes) -> None:
        framed = frame(record)
        self._f.write(framed if self._z is None else self._z.compress(framed))
        self.records += 1

    def close(self) -> None:
        if self._z is not None:
            self._f.write(self._z.flush())
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

