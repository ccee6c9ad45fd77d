"""TFRecord framing over Beam's FileSystems, so shards can be written to gs:// or s3:// too.

A record is: uint64 length, masked crc32c of the length, the bytes, masked crc32c of the bytes.
Files are GZIP-compressed, as tf.data.TFRecordDataset(compression_type="GZIP") reads them.
"""
from __future__ import annotations

import struct

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return b"".join([length, struct.pack("<I", _masked_crc(length)), record, struct.pack("<I", _masked_crc(record))])


class GzipTFRecordWriter:
    """Writes framed records to one GZIP file; use as a context manager or call close()."""

    def __init__(self, path: str):
        self.path = path
        self.records = 0
        self._f = FileSystems.create(path, mime_type="application/octet-stream",
                                     compression_type=CompressionTypes.GZIP)

    def write(self, record: bytes) -> None:
        self._f.write(frame(record))
        self.records += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
