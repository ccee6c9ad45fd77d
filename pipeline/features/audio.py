"""Decoding any audio file into the mono float32 waveform the feature function expects.

soundfile (libsndfile) reads wav, flac, ogg and the rest of what libsndfile knows, at any sample
rate, 8/16/24/32-bit integer or float, any channel count. Channels are averaged (librosa's
to_mono) and the result is resampled with soxr at its "HQ" quality, the resampler and quality
librosa.load uses by default, so clips decode exactly as the seed kernel's librosa.load does.
tensorflow-io is not used: it cannot load under TF 2.21 (BUILD_NOTES.md).

Every way a file can be bad raises AudioError with a short machine-readable reason, which the Beam
job turns into a dead-letter row. The FeatureConfig's DecodeLimits bound what one file can cost:
its bytes before it is read; its rate, length and samples (frames x channels) from the header
before anything is decoded, and again as decoded, since a compressed file's header may declare
less than it holds, or nothing ("unknown length"). Decoding goes a block at a time, each block
down-mixed as it comes, and stops one frame past the limits, so a clip costs its mono waveform
(4 bytes a frame) plus one block, whatever its channel count or its header says. A FLAC file is
read with its declared length blanked out (libsndfile would stop at it), and a stream that holds
other than it declared is refused ("truncated" or "header_mismatch").
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


# libsndfile's frame count for a stream of unknown length (SF_COUNT_MAX)
UNKNOWN_FRAMES = 2 ** 63 - 1
# samples (frames x channels) decoded at a time: 4 MiB of float32 whatever the channel count
BLOCK_SAMPLES = 1 << 20


class _ForwardReader(sf.SoundFile):
    """soundfile reads forward only: after each read soundfile seeks back to where it stands, and
    libFLAC cannot seek in a stream of unknown length (total_samples 0: "Internal psf_fseek()
    failed"), nor past the end of one whose header declares more than it holds."""

    def seekable(self) -> bool:
        return False


def _flac_streaminfo(data: bytes) -> int | None:
    """Offset of a FLAC file's STREAMINFO block (after any ID3v2 tags, which libsndfile skips), or
    None when `data` is not a FLAC file laid out so."""
    pos = 0
    while data[pos:pos + 3] == b"ID3" and len(data) >= pos + 10:
        size = 0
        for b in data[pos + 6:pos + 10]:             # a syncsafe integer: 7 bits a byte
            size = size << 7 | (b & 0x7F)
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)
    if data[pos:pos + 4] == b"fLaC" and len(data) >= pos + 42 and data[pos + 4] & 0x7F == 0:
        return pos + 8
    return None


def _flac_unknown_length(data: bytes) -> tuple[bytes, int | None]:
    """(the file with its STREAMINFO total_samples set to 0, "unknown", and the count it declared:
    None when not FLAC, 0 when unknown). libsndfile stops reading a FLAC stream at the declared
    count, so a header declaring 1 s of a 4 s stream would decode to 1 s; declaring nothing, the
    stream decodes to its end, and decode() judges what it holds."""
    at = _flac_streaminfo(data)
    if at is None:
        return data, None
    i = at + 13                                     # total_samples: the low 4 bits of this byte and the next 4 bytes
    declared = (data[i] & 0x0F) << 32 | int.from_bytes(data[i + 1:i + 5], "big")
    if declared == 0:
        return data, 0
    return data[:i] + bytes([data[i] & 0xF0]) + bytes(4) + data[i + 5:], declared


def decode(data: bytes, target_sr: int, limits: DecodeLimits | None = None) -> tuple[np.ndarray, dict]:
    """Bytes of an audio file -> (mono float32 waveform at target_sr, info about the source).

    Decoded BLOCK_SAMPLES samples at a time and down-mixed as it goes, so channels cost one block,
    not the decoded file; reading stops one frame past the limits whatever the header says, and
    the limits judge what was decoded."""
    limits = limits if limits is not None else DecodeLimits()
    if not data:
        raise AudioError("empty_file", "file has 0 bytes")
    check_file_size(len(data), limits)
    check_wav_complete(data)
    data, flac_declared = _flac_unknown_length(data)
    try:
        with _ForwardReader(io.BytesIO(data)) as f:
            sr, channels = int(f.samplerate), int(f.channels)
            declared = flac_declared if flac_declared is not None else f.frames
            by_seconds, by_samples = _frame_limits(sr, channels, 0 if declared >= UNKNOWN_FRAMES else declared, limits)
            mono, frames, bad = _read_mono(f, min(by_seconds, by_samples), declared)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise _soundfile_error(e) from None
    if frames > by_seconds:
        raise _too_long(f"decodes to more than {by_seconds} frames", limits)
    if frames > by_samples:
        raise _too_many(f"decodes to more than {by_samples} frames of {channels} channels", limits)
    if flac_declared and frames != flac_declared:
        held = f"the header declares {flac_declared} frames ({flac_declared / sr:.1f} s), the stream holds {frames}"
        raise AudioError("truncated" if frames < flac_declared else "header_mismatch", held)
    info = {"source_sample_rate": sr, "source_channels": channels, "source_seconds": frames / float(sr)}
    if frames == 0:
        raise AudioError("zero_length", "audio has 0 samples")
    if bad:
        raise AudioError("non_finite", f"{bad} NaN/Inf samples")
    return resample(mono[:frames], sr, target_sr), info


def _frame_limits(sr: int, channels: int, declared: int, limits: DecodeLimits) -> tuple[int, int]:
    """The most frames max_source_seconds and max_source_samples allow at this rate and channel
    count; refuses a bad rate, and a header that declares more (declared 0: unknown, judged as decoded)."""
    if not limits.min_source_sample_rate <= sr <= limits.max_source_sample_rate:
        raise AudioError("bad_sample_rate", f"{sr} Hz is outside [{limits.min_source_sample_rate}, "
                                            f"{limits.max_source_sample_rate}] Hz (DecodeLimits)")
    by_seconds, by_samples = int(limits.max_source_seconds * sr), int(limits.max_source_samples // channels)
    if declared > by_seconds:
        raise _too_long(f"the header declares {declared / sr:.1f} s", limits)
    if declared > by_samples:
        raise _too_many(f"the header declares {declared} frames of {channels} channels", limits)
    return by_seconds, by_samples


def _too_long(what: str, limits: DecodeLimits) -> AudioError:
    return AudioError("too_long", f"{what}, longer than {limits.max_source_seconds:g} s (DecodeLimits.max_source_seconds)")


def _too_many(what: str, limits: DecodeLimits) -> AudioError:
    return AudioError("too_many_samples", f"{what}, more than {limits.max_source_samples} samples "
                                          "(frames x channels; DecodeLimits.max_source_samples)")


def _read_mono(f: sf.SoundFile, max_frames: int, declared: int) -> tuple[np.ndarray, int, int]:
    """(buffer whose first `frames` values are the mean of the channels, frames, NaN/Inf samples
    seen), reading at most max_frames + 1 frames, a block at a time. The buffer starts at the
    declared length (within the limit) and doubles when the stream holds more."""
    channels = f.channels
    block = np.empty((max(1, BLOCK_SAMPLES // channels), channels), np.float32)
    mono = np.empty(max(1, min(max_frames + 1, declared if 0 < declared < UNKNOWN_FRAMES else len(block))), np.float32)
    frames, bad = 0, 0
    while frames <= max_frames:
        got = f.read(min(len(block), max_frames + 1 - frames), dtype="float32", always_2d=True, out=block)
        n = len(got)
        if n == 0:
            break
        if frames + n > len(mono):
            grown = np.empty(min(max_frames + 1, max(2 * len(mono), frames + n)), np.float32)
            grown[:frames] = mono[:frames]
            mono = grown
        bad += int(got.size - np.count_nonzero(np.isfinite(got)))
        if channels > 1:         # librosa's to_mono; a row's mean does not depend on the block it is in
            np.mean(got, axis=1, dtype=np.float32, out=mono[frames:frames + n])
        else:
            mono[frames:frames + n] = got[:, 0]
        frames += n
    return mono, frames, bad


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr HQ resampling with librosa.resample's output length, ceil(len * ratio)."""
    if orig_sr == target_sr:
        return np.ascontiguousarray(y, dtype=np.float32)
    out = soxr.resample(y, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    n = int(math.ceil(len(y) * target_sr / orig_sr))
    if len(out) >= n:
        return out[:n]
    return np.pad(out, (0, n - len(out)))
