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


def test_a_header_declaring_too_long_a_clip_is_refused_before_decoding(monkeypatch):
    data = wav_bytes(np.zeros(4 * 16000, np.float32))        # 4 s
    monkeypatch.setattr(audio.sf, "read", lambda *a, **k: pytest.fail("decoded despite the header"))
    with pytest.raises(audio.AudioError, match=r"declares 4\.0 s, longer than 2 s") as e:
        audio.decode(data, 16000, limits(max_source_seconds=2))
    assert e.value.reason == "too_long"


def test_decoding_stops_past_the_limit_whatever_the_header_says(monkeypatch):
    """A header that under-declares (a stand-in for a lying or length-less header: soundfile.info is
    made to report 1 s for a 4 s file) cannot make decode read the whole file."""
    data = wav_bytes(np.zeros(4 * 16000, np.float32))
    real_info, real_read, asked = audio.sf.info, audio.sf.read, []

    def lying_info(f):
        i = real_info(f)
        i.frames = 16000
        return i

    def read(f, frames=-1, **kw):
        asked.append(frames)
        return real_read(f, frames=frames, **kw)

    monkeypatch.setattr(audio.sf, "info", lying_info)
    monkeypatch.setattr(audio.sf, "read", read)
    with pytest.raises(audio.AudioError, match="decodes to more than 32000 frames") as e:
        audio.decode(data, 16000, limits(max_source_seconds=2))
    assert e.value.reason == "too_long" and asked == [32001]


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
