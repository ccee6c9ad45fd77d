"""The hand-written tf.Example serializer and the GZIP TFRecord writer, read back by TensorFlow."""
import gzip

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data import example_schema as examples
from pipeline.data import tfrecord


def proto_example(fname, labels, mel, source_seconds):
    """The same example built through the protobuf API."""
    f = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "fname": f(bytes_list=tf.train.BytesList(value=[fname.encode("utf-8")])),
        "labels": f(int64_list=tf.train.Int64List(value=list(labels))),
        "mel": f(float_list=tf.train.FloatList(value=np.asarray(mel, np.float32).reshape(-1).tolist())),
        "mel_shape": f(int64_list=tf.train.Int64List(value=list(np.shape(mel)))),
        "source_seconds": f(float_list=tf.train.FloatList(value=[source_seconds])),
    }))


def random_mel(shape=(101, 40), seed=0):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


CASES = {
    "typical": ("tr00001.wav", (3, 17, 79), random_mel(), 2.345),
    "no_labels": ("te00001.wav", (), random_mel(seed=1), 0.6),
    "big_and_negative_ints": ("x.wav", (0, 127, 128, 2 ** 40, -1), random_mel((3, 2)), 1.0),
    "unicode_fname": ("sub/Grüße 🎵.wav", (5,), random_mel((2, 3)), 0.0),
    "empty_mel": ("e.wav", (1,), np.zeros((0, 40), np.float32), 12.5),
    "float64_mel": ("f.wav", (2,), random_mel((4, 5)).astype(np.float64), 3.0),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_serialize_equals_protobuf_api(case):
    """The bytes parse to exactly the message the protobuf API builds.

    (Not the API's bytes: upb's deterministic map order puts "mel_shape" before "mel"; the
    serializer writes keys in plain sorted order instead, equally deterministic.)
    """
    fname, labels, mel, seconds = CASES[case]
    data = examples.serialize(fname, labels, mel, seconds)
    want = proto_example(fname, labels, mel, seconds)
    got = tf.train.Example.FromString(data)
    assert got == want
    assert len(got.features.feature["mel"].float_list.value) == np.size(mel)


def test_serialize_is_deterministic():
    """Same inputs, same bytes; map entries in sorted key order."""
    fname, labels, mel, seconds = CASES["typical"]
    data = examples.serialize(fname, labels, mel, seconds)
    assert data == examples.serialize(fname, list(labels), mel.copy(), seconds)
    keys = [b"\x05fname\x12", b"\x06labels\x12", b"\x03mel\x12", b"\x09mel_shape\x12", b"\x0esource_seconds\x12"]
    positions = [data.index(k) for k in keys]
    assert positions == sorted(positions)


def test_source_is_written_only_when_given_and_parses_as_curated_where_absent():
    """A source-tagged Example is the untagged one plus a `source` bytes feature (protobuf API
    equality); without `source` the bytes are exactly the seed's serialization; parse_spec reads
    `source` only when asked, and reads an untagged Example as curated."""
    fname, labels, mel, seconds = CASES["typical"]
    plain = examples.serialize(fname, labels, mel, seconds)
    assert examples.serialize(fname, labels, mel, seconds, None) == plain
    tagged = examples.serialize(fname, labels, mel, seconds, "noisy")
    want = proto_example(fname, labels, mel, seconds)
    want.features.feature["source"].bytes_list.value.append(b"noisy")
    assert tf.train.Example.FromString(tagged) == want
    assert "source" not in examples.parse_spec((101, 40))
    parsed = tf.io.parse_example(tf.constant([plain, tagged]), examples.parse_spec((101, 40), with_source=True))
    assert parsed["source"].numpy().tolist() == [b"curated", b"noisy"]
    plain_parse = tf.io.parse_example(tf.constant([plain, tagged]), examples.parse_spec((101, 40)))
    np.testing.assert_array_equal(plain_parse["mel"].numpy()[0], plain_parse["mel"].numpy()[1])


def test_parse_example_with_parse_spec():
    """tf.io.parse_example(parse_spec(shape)) returns fname, sparse labels, mel already shaped."""
    shape = (101, 40)
    records = [examples.serialize(*CASES["typical"]), examples.serialize(*CASES["no_labels"])]
    parsed = tf.io.parse_example(tf.constant(records), examples.parse_spec(shape))
    assert parsed["fname"].numpy().tolist() == [b"tr00001.wav", b"te00001.wav"]
    assert isinstance(parsed["labels"], tf.SparseTensor)
    labels = tf.sparse.to_dense(parsed["labels"], default_value=-1).numpy()
    np.testing.assert_array_equal(labels, [[3, 17, 79], [-1, -1, -1]])
    assert parsed["mel"].shape == (2, *shape)
    np.testing.assert_array_equal(parsed["mel"].numpy(), [CASES["typical"][2], CASES["no_labels"][2]])
    np.testing.assert_array_equal(parsed["mel_shape"].numpy(), [shape, shape])
    np.testing.assert_allclose(parsed["source_seconds"].numpy(), [2.345, 0.6], rtol=1e-7)


def test_parse_spec_rejects_a_wrong_shape():
    record = examples.serialize(*CASES["typical"])
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.parse_example(tf.constant([record]), examples.parse_spec((100, 40)))


# ---------------------------------------------------------------------------------------------
# TFRecord


RECORDS = [b"", b"x", bytes(range(256)) * 40, examples.serialize(*CASES["typical"])]


def read_gzip_records(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]


@pytest.mark.parametrize("compression", [None, "fast", "best", "small"])
def test_gzip_writer_is_readable_by_tf(tmp_path, compression):
    """Both deflate settings write a gzip stream that TF (and Python's gzip) reads back intact."""
    path = tmp_path / "data.tfrecord.gz"
    args = () if compression is None else (compression,)
    with tfrecord.TFRecordWriter(str(path), *args) as w:
        for r in RECORDS:
            w.write(r)
    assert w.records == len(RECORDS)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    assert read_gzip_records(path) == RECORDS
    assert gzip.decompress(path.read_bytes()) == b"".join(tfrecord.frame(r) for r in RECORDS)


def test_plain_writer_is_readable_by_tf(tmp_path):
    """compression "none": the framed records as they are, no gzip header; TF reads them with
    compression_type "" (what compression_type() says for a *.tfrecord name)."""
    path = tmp_path / f"data{tfrecord.suffix('none')}"
    with tfrecord.TFRecordWriter(str(path), "none") as w:
        for r in RECORDS:
            w.write(r)
    assert path.name == "data.tfrecord" and tfrecord.compression_type(str(path)) == ""
    assert path.read_bytes() == b"".join(tfrecord.frame(r) for r in RECORDS)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="")] == RECORDS


def test_compression_names():
    """none/fast/best, "small" still accepted as best; GZIP shards end in .gz and are read as GZIP."""
    assert [tfrecord.canonical(c) for c in ("none", "fast", "best", "small")] == ["none", "fast", "best", "best"]
    assert [tfrecord.suffix(c) for c in ("none", "fast", "small")] == [".tfrecord", ".tfrecord.gz", ".tfrecord.gz"]
    assert tfrecord.compression_type("x/data-00000-of-00001.tfrecord.gz") == "GZIP"
    assert tfrecord.compression_type("x/data-00000-of-00001.tfrecord") == ""
    with pytest.raises(KeyError):
        tfrecord.canonical("medium")


def test_small_deflate_is_smaller(tmp_path):
    sizes = {}
    for compression in ("none", "fast", "small"):
        path = tmp_path / f"{compression}.tfrecord.gz"
        with tfrecord.TFRecordWriter(str(path), compression) as w:
            for seed in range(5):
                w.write(examples.serialize("x.wav", (1,), random_mel(seed=seed), 1.0))
        sizes[compression] = path.stat().st_size
    assert sizes["small"] < sizes["fast"] < sizes["none"]


def test_unknown_deflate_setting(tmp_path):
    with pytest.raises(KeyError):
        tfrecord.TFRecordWriter(str(tmp_path / "x.gz"), "medium")


def test_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.tfrecord.gz"
    w = tfrecord.TFRecordWriter(str(path))
    w.close()
    assert w.records == 0
    assert read_gzip_records(path) == []


def test_framing_equals_tfs_own_writer(tmp_path):
    """frame() produces the bytes of tf.io.TFRecordWriter (length, masked CRCs, payload)."""
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in RECORDS:
            w.write(r)
    assert path.read_bytes() == b"".join(tfrecord.frame(r) for r in RECORDS)


@pytest.mark.parametrize("where", ["payload", "length"])
def test_tf_checks_the_crc(tmp_path, where):
    """A flipped byte inside the uncompressed stream (a valid gzip around it) makes TF raise."""
    stream = bytearray(b"".join(tfrecord.frame(r) for r in RECORDS[2:]))
    stream[100 if where == "payload" else 2] ^= 0x01
    path = tmp_path / "corrupt.tfrecord.gz"
    path.write_bytes(gzip.compress(bytes(stream)))
    with pytest.raises(tf.errors.DataLossError):
        read_gzip_records(path)
