"""Decoding any audio file into the mono float32 waveform the feature function expects.

soundfile (libsndfile) reads wav, flac, ogg and the rest of what libsndfile knows, at any sample
rate, 8/16/24/32-bit integer or float, any channel count. Channels are averaged (librosa's
to_mono) and the result is resampled with soxr at its "HQ" quality, the resampler and quality
librosa.load uses by default, so clips decode exactly as the seed kernel's librosa.load does.
tensorflow-io is not used: it cannot load under TF 2.21 (BUILD_NOTES.md).

Every way a file can be bad raises AudioError with a short machine-readable reason, which the Beam
job turns into a dead-letter row. Sizes are checked against the FeatureConfig's DecodeLimits from
the header (soundfile.info) before anything is decoded, and decoding stops one frame past the limit
whatever the header says, so no file can make a worker decode hours of audio.
"""
from __future__ import annotations

import io
import math
import struct

import numpy as np
import soundfile as sf
import soxr

from pipeline.protos import feature_config_pb2

DecodeLimits = feature_config_pb2.DecodeLimits


class AudioError(ValueError):
    """A clip that cannot become a waveform; `reason` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_wav_complete(data: bytes) -> None:
    """Raise AudioError('truncated') when a RIFF/WAVE file holds fewer data bytes than it declares.

    libsndfile quietly reads what is there, so a file cut short in transfer would otherwise become
    a shorter clip without anyone noticing.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk_id == b"data":
            if size != 0xFFFFFFFF and pos + 8 + size > len(data):  # RF64 stores the size elsewhere
                raise AudioError("truncated", f"data chunk declares {size} bytes, file has {len(data) - pos - 8}")
            return
        pos += 8 + size + (size & 1)
    raise AudioError("truncated", "WAV file has no data chunk")


def check_file_size(size: int, limits: DecodeLimits) -> None:
    """Raise AudioError('too_large') for a file over the limit, before it is read."""
    if size > limits.max_file_bytes:
        raise AudioError("too_large", f"{size} bytes > the limit of {limits.max_file_bytes} (DecodeLimits.max_file_bytes)")


def _soundfile_error(e: Exception) -> AudioError:
    message = str(e).split(": ", 1)[-1]  # drop "Error opening <_io.BytesIO ...>"
    return AudioError("not_audio", f"soundfile cannot decode it: {message}")


def decode(data: bytes, target_sr: int, limits: DecodeLimits | None = None) -> tuple[np.ndarray, dict]:
    """Bytes of an audio file -> (mono float32 waveform at target_sr, info about the source)."""
    limits = limits if limits is not None else DecodeLimits()
    if not data:
        raise AudioError("empty_file", "file has 0 bytes")
    check_file_size(len(data), limits)
    check_wav_complete(data)
    try:
        header = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise _soundfile_error(e) from None
    sr = int(header.samplerate)
    if not limits.min_source_sample_rate <= sr <= limits.max_source_sample_rate:
        raise AudioError("bad_sample_rate", f"{sr} Hz is outside [{limits.min_source_sample_rate}, "
                                            f"{limits.max_source_sample_rate}] Hz (DecodeLimits)")
    max_frames = int(limits.max_source_seconds * sr)
    too_long = f"longer than {limits.max_source_seconds:g} s (DecodeLimits.max_source_seconds)"
    if header.frames > max_frames:
        raise AudioError("too_long", f"the header declares {header.frames / sr:.1f} s, {too_long}")
    try:  # one frame past the limit at most, whatever the header said
        audio, sr = sf.read(io.BytesIO(data), frames=max_frames + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise _soundfile_error(e) from None
    if audio.shape[0] > max_frames:
        raise AudioError("too_long", f"decodes to more than {max_frames} frames, {too_long}")
    frames, channels = audio.shape
    info = {"source_sample_rate": int(sr), "source_channels": int(channels), "source_seconds": frames / float(sr)}
    if frames == 0:
        raise AudioError("zero_length", "audio has 0 samples")
    if not np.isfinite(audio).all():
        raise AudioError("non_finite", f"{int((~np.isfinite(audio)).sum())} NaN/Inf samples")
    mono = audio.mean(axis=1, dtype=np.float32) if channels > 1 else audio[:, 0]
    return resample(mono, int(sr), target_sr), info


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr HQ resampling with librosa.resample's output length, ceil(len * ratio)."""
    if orig_sr == target_sr:
        return np.ascontiguousarray(y, dtype=np.float32)
    out = soxr.resample(y, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    n = int(math.ceil(len(y) * target_sr / orig_sr))
    if len(out) >= n:
        return out[:n]
    return np.pad(out, (0, n - len(out)))
