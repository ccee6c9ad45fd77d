"""TFRecord framing over Beam's FileSystems, so shards can be written to gs:// or s3:// too.

A record is: uint64 length, masked crc32c of the length, the bytes, masked crc32c of the bytes.
Files are GZIP streams, as tf.data.TFRecordDataset(compression_type="GZIP") reads them. The
deflate strategy is a choice: "fast" (Huffman coding only) costs 1.8 ms per seed-preset example
and keeps 67% of the bytes; "small" (zlib level 6, what Beam's own writer uses) costs 6 ms and
keeps 57%. On two cores the job is CPU-bound, so "fast" is the default.
"""
from __future__ import annotations

import struct
import zlib

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

DEFLATE = {"fast": (1, zlib.Z_HUFFMAN_ONLY), "small": (6, zlib.Z_DEFAULT_STRATEGY)}


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return b"".join([length, struct.pack("<I", _masked_crc(length)), record, struct.pack("<I", _masked_crc(record))])


class GzipTFRecordWriter:
    """Writes framed records to one GZIP file; use as a context manager or call close()."""

    def __init__(self, path: str, compression: str = "fast"):
        level, strategy = DEFLATE[compression]
        self.path = path
        self.records = 0
        self._f = FileSystems.create(path, mime_type="application/octet-stream",
                                     compression_type=CompressionTypes.UNCOMPRESSED)
        self._z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, strategy)  # 16+: gzip header

    def write(self, record: bytes) -> None:
        self._f.write(self._z.compress(frame(record)))
        self.records += 1

    def close(self) -> None:
        self._f.write(self._z.flush())
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
