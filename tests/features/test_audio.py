"""pipeline.features.audio.decode: any libsndfile format -> mono float32 at the target rate, exactly as the
seed's librosa.load; every kind of bad file -> AudioError with its dead-letter reason."""
import io
import math

import librosa
import numpy as np
import pytest
import soundfile as sf

from pipeline.features import audio

# (container, subtype, source sample rate, channels)
CASES = [
    ("WAV", "PCM_U8", 22050, 1),
    ("WAV", "PCM_16", 44100, 1),
    ("WAV", "PCM_24", 48000, 2),
    ("WAV", "PCM_32", 8000, 1),
    ("WAV", "FLOAT", 16000, 1),
    ("WAV", "PCM_16", 22050, 2),
    ("WAV", "PCM_16", 16000, 3),
    ("FLAC", "PCM_16", 22050, 2),
    ("FLAC", "PCM_24", 48000, 1),
    ("OGG", "VORBIS", 44100, 1),
]


def signal(sr, channels, seconds=0.731, seed=0):
    """A tone plus noise, each channel at a different gain (so the down-mix is a real mean)."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    y = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / sr) + 0.1 * rng.normal(0, 1, n)
    return np.stack([y * (0.4 + 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else y


def write(path, data, sr, container, subtype):
    if not sf.check_format(container, subtype):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {container}/{subtype}")
    sf.write(str(path), data, sr, format=container, subtype=subtype)
    return path.read_bytes()


@pytest.mark.parametrize("container,subtype,sr,channels", CASES,
                         ids=[f"{c}-{s}-{r}-{ch}ch" for c, s, r, ch in CASES])
@pytest.mark.parametrize("target", [16000, 44100])
def test_decode_matches_librosa_load(tmp_path, container, subtype, sr, channels, target):
    """decode(bytes, target) == librosa.load(path, sr=target), bit for bit, with the source's info."""
    path = tmp_path / f"clip.{container.lower()}"
    data = write(path, signal(sr, channels), sr, container, subtype)
    got, info = audio.decode(data, target)
    want, want_sr = librosa.load(str(path), sr=target)
    assert want_sr == target
    assert got.dtype == np.float32 and got.ndim == 1
    assert len(got) == len(want) == math.ceil(sf.info(str(path)).frames * target / sr)
    np.testing.assert_array_equal(got, want)
    frames = sf.info(str(path)).frames
    assert info == {"source_sample_rate": sr, "source_channels": channels, "source_seconds": frames / sr}


@pytest.mark.parametrize("channels", [2, 3])
def test_multichannel_is_the_channel_mean(tmp_path, channels):
    """At the native rate (no resampling) the result is exactly the float32 mean of the channels."""
    path = tmp_path / "multi.wav"
    data = write(path, signal(16000, channels), 16000, "WAV", "FLOAT")
    got, info = audio.decode(data, 16000)
    channels_data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    assert channels_data.shape[1] == channels and info["source_channels"] == channels
    np.testing.assert_array_equal(got, channels_data.mean(axis=1, dtype=np.float32))
    assert not np.array_equal(got, channels_data[:, 0])


def test_same_rate_is_returned_unchanged(tmp_path):
    path = tmp_path / "same.wav"
    y = signal(16000, 1).astype(np.float32)
    got, info = audio.decode(write(path, y, 16000, "WAV", "FLOAT"), 16000)
    np.testing.assert_array_equal(got, y)
    assert info["source_seconds"] == pytest.approx(len(y) / 16000)


# ---------------------------------------------------------------------------------------------
# bad inputs


def wav_bytes(y, sr=16000, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def reason_of(data):
    with pytest.raises(audio.AudioError) as e:
        audio.decode(data, 16000)
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(e.value.reason + ": ") and e.value.detail
    return e.value.reason


def test_empty_bytes():
    assert reason_of(b"") == "empty_file"


def test_truncated_wav():
    """A WAV cut in half declares more data than it holds: libsndfile would read it short silently."""
    data = wav_bytes(np.sin(np.arange(22050) / 5.0) * 0.5)
    audio.decode(data, 16000)  # the whole file is fine
    assert reason_of(data[: len(data) // 2]) == "truncated"
    assert reason_of(data[:-1]) == "truncated"


def test_wav_cut_before_its_data_chunk():
    assert reason_of(wav_bytes(np.zeros(100))[:30]) == "truncated"


@pytest.mark.parametrize("data", [np.random.default_rng(0).bytes(4000), b"<html>not audio</html>\n" * 20,
                                  b"fLaC" + bytes(100)],
                         ids=["random", "html", "flac-magic-then-zeros"])
def test_non_audio_bytes(data):
    assert reason_of(data) == "not_audio"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(bad):
    y = np.sin(np.arange(8000) / 3.0).astype(np.float32)
    y[100:110] = bad
    reason = reason_of(wav_bytes(y, subtype="FLOAT"))
    assert reason == "non_finite"


def test_non_finite_detail_counts_samples():
    y = np.zeros(1000, np.float32)
    y[[3, 500]] = np.nan
    with pytest.raises(audio.AudioError, match="2 NaN/Inf samples"):
        audio.decode(wav_bytes(y, subtype="FLOAT"), 16000)


def test_zero_frames():
    assert reason_of(wav_bytes(np.zeros(0, np.float32))) == "zero_length"


# ---------------------------------------------------------------------------------------------
# resample


@pytest.mark.parametrize("orig_sr,target_sr", [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 44100),
                                               (16000, 44100)])
@pytest.mark.parametrize("n", [1, 7, 1000, 22051])
def test_resample_length_and_librosa_parity(orig_sr, target_sr, n):
    """Output length is ceil(n * target/orig), and the samples are librosa.resample's (soxr_hq)."""
    y = np.random.default_rng(n).normal(0, 0.3, n).astype(np.float32)
    got = audio.resample(y, orig_sr, target_sr)
    assert got.dtype == np.float32
    assert len(got) == math.ceil(n * target_sr / orig_sr)
    np.testing.assert_array_equal(got, librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq"))


def test_resample_same_rate_is_identity():
    y = np.arange(10, dtype=np.float64)
    got = audio.resample(y, 16000, 16000)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, y)


# ---------------------------------------------------------------------------------------------
# decode limits: files that would exhaust a worker become dead letters before they are decoded


def limits(**fields):
    return audio.DecodeLimits(**fields)


def test_a_header_declaring_too_long_a_clip_is_refused_from_the_header():
    data = wav_bytes(np.zeros(4 * 16000, np.float32))        # 4 s
    with pytest.raises(audio.AudioError, match=r"the header declares 4\.0 s, longer than 2 s") as e:
        audio.decode(data, 16000, limits(max_source_seconds=2))
    assert e.value.reason == "too_long"


def encoded(y, sr, container, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=container, subtype=subtype)
    return buf.getvalue()


def flac_declaring(data, frames, at=0):
    """A FLAC file (at offset `at`) with its STREAMINFO total_samples, 36 bits from byte 21, set to
    `frames`; 0 is the format's "unknown length", which encoders that cannot seek back write."""
    assert data[at:at + 4] == b"fLaC" and data[at + 4] & 0x7F == 0      # STREAMINFO is the first block
    out = bytearray(data)
    out[at + 21] = (out[at + 21] & 0xF0) | (frames >> 32)
    out[at + 22:at + 26] = (frames & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(out)


def tone(seconds, sr=16000, channels=1):
    y = (0.3 * np.sin(np.arange(int(seconds * sr)) / 5.0)).astype(np.float32)
    return np.stack([y * (1 + c) / channels for c in range(channels)], axis=1) if channels > 1 else y


def test_a_flac_header_declaring_less_than_it_holds_is_judged_by_what_it_holds():
    """libsndfile stops at STREAMINFO's count: before, this 4 s file declaring 1 s decoded to 1 s."""
    liar = flac_declaring(encoded(tone(4), 16000, "FLAC"), 16000)
    assert sf.info(io.BytesIO(liar)).frames == 16000
    with pytest.raises(audio.AudioError, match="decodes to more than 32000 frames, longer than 2 s") as e:
        audio.decode(liar, 16000, limits(max_source_seconds=2))
    assert e.value.reason == "too_long"
    with pytest.raises(audio.AudioError, match=r"declares 16000 frames \(1\.0 s\), the stream holds 64000") as e:
        audio.decode(liar, 16000)
    assert e.value.reason == "header_mismatch"


def test_a_flac_header_declaring_more_than_it_holds_is_truncated():
    """The FLAC twin of a WAV cut short (before: 'not_audio', a failed seek)."""
    with pytest.raises(audio.AudioError, match="declares 64000 frames .* the stream holds 16000") as e:
        audio.decode(flac_declaring(encoded(tone(1), 16000, "FLAC"), 64000), 16000)
    assert e.value.reason == "truncated"


def test_a_flac_of_unknown_length_decodes_to_what_it_holds():
    """total_samples 0 is legal; before, it was refused as 576460752303423.5 s. Behind an ID3v2 tag too."""
    data = encoded(tone(2), 16000, "FLAC")
    want, _ = audio.decode(data, 16000)
    id3 = b"ID3\x04\x00\x00" + bytes([0, 0, 0, 20]) + bytes(20)      # a 20-byte tag: syncsafe size
    for unknown in (flac_declaring(data, 0), id3 + flac_declaring(data, 0)):
        got, info = audio.decode(unknown, 16000)
        np.testing.assert_array_equal(got, want)
        assert info["source_seconds"] == 2.0
        with pytest.raises(audio.AudioError, match="decodes to more than 16000 frames, longer than 1 s"):
            audio.decode(unknown, 16000, limits(max_source_seconds=1))
    with pytest.raises(audio.AudioError, match="the stream holds 32000") as e:     # the tag does not hide STREAMINFO
        audio.decode(id3 + flac_declaring(data, 16000, at=0), 16000)
    assert e.value.reason == "header_mismatch"


def test_samples_are_frames_times_channels_from_the_header():
    """A small Vorbis file of many channels: its header declares 64 x 48000 samples."""
    data = encoded(np.zeros((48000, 64), np.float32), 48000, "OGG", "VORBIS")
    with pytest.raises(audio.AudioError, match="declares 48000 frames of 64 channels, more than 3000000 samples") as e:
        audio.decode(data, 16000, limits(max_source_samples=3_000_000))
    assert e.value.reason == "too_many_samples"
    audio.decode(data, 16000, limits(max_source_samples=64 * 48000))      # at the limit: accepted


def test_samples_are_judged_as_decoded_when_the_header_declares_none():
    unknown = flac_declaring(encoded(tone(2, channels=8), 16000, "FLAC"), 0)
    with pytest.raises(audio.AudioError, match="decodes to more than 16000 frames of 8 channels") as e:
        audio.decode(unknown, 16000, limits(max_source_samples=8 * 16000))
    assert e.value.reason == "too_many_samples"
    _, info = audio.decode(unknown, 16000, limits(max_source_samples=8 * 32000))
    assert info["source_seconds"] == 2.0 and info["source_channels"] == 8


def test_channels_are_down_mixed_as_decoded():
    """Memory follows frames, not frames x channels: 4 s of 64-channel Vorbis is 47 MB decoded;
    decode's Python-side allocations (numpy's, which tracemalloc sees) stay under a quarter of it
    (measured: 5.7 MB; 58.6 MB when the whole file was decoded first)."""
    import tracemalloc

    data = encoded(np.zeros((4 * 48000, 64), np.float32), 48000, "OGG", "VORBIS")
    tracemalloc.start()
    try:
        got, info = audio.decode(data, 16000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["source_channels"] == 64 and len(got) == 4 * 16000
    assert peak < 4 * 48000 * 64 * 4 / 4


@pytest.mark.parametrize("container,subtype,channels", [("FLAC", "PCM_24", 2), ("WAV", "PCM_16", 3), ("WAV", "FLOAT", 1)])
def test_block_by_block_decoding_matches_librosa_load(tmp_path, monkeypatch, container, subtype, channels):
    """Blocks of 999 samples (block edges fall mid-frame counts; the buffer grows) give librosa.load's
    samples bit for bit, also for a FLAC file of unknown length."""
    monkeypatch.setattr(audio, "BLOCK_SAMPLES", 999)
    path = tmp_path / f"clip.{container.lower()}"
    data = write(path, signal(22050, channels, seconds=1.3), 22050, container, subtype)
    want, _ = librosa.load(str(path), sr=16000)
    np.testing.assert_array_equal(audio.decode(data, 16000)[0], want)
    if container == "FLAC":
        np.testing.assert_array_equal(audio.decode(flac_declaring(data, 0), 16000)[0], want)


def test_non_finite_samples_are_counted_over_blocks(monkeypatch):
    monkeypatch.setattr(audio, "BLOCK_SAMPLES", 100)
    y = np.zeros(1000, np.float32)
    y[[3, 500, 999]] = np.nan
    with pytest.raises(audio.AudioError, match="3 NaN/Inf samples"):
        audio.decode(wav_bytes(y, subtype="FLOAT"), 16000)


@pytest.mark.parametrize("sr", [1, 400, 500000])
def test_sample_rates_outside_the_limits(sr):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(64, np.float32), sr, format="WAV", subtype="PCM_16")
    with pytest.raises(audio.AudioError, match=f"{sr} Hz is outside \\[2000, 384000\\]") as e:
        audio.decode(buf.getvalue(), 44100)
    assert e.value.reason == "bad_sample_rate"


def test_files_over_the_byte_limit():
    data = wav_bytes(np.zeros(1000, np.float32))
    with pytest.raises(audio.AudioError, match=f"{len(data)} bytes > the limit of 1000") as e:
        audio.decode(data, 16000, limits(max_file_bytes=1000))
    assert e.value.reason == "too_large"
    audio.decode(data, 16000, limits(max_file_bytes=len(data)))   # at the limit: accepted


def test_clips_within_the_limits_decode_as_before():
    y = np.sin(np.arange(3 * 8000) / 5.0).astype(np.float32) * 0.5
    got, info = audio.decode(wav_bytes(y, sr=8000), 16000, limits(max_source_seconds=3))
    ref, _ = audio.decode(wav_bytes(y, sr=8000), 16000)
    np.testing.assert_array_equal(got, ref)
    assert info["source_seconds"] == 3.0
