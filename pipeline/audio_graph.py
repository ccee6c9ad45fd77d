"""Encoded WAV bytes -> the waveforms the feature function takes, in the graph (the serving_audio
signature), so a client can send files as they are: no decoding, downmixing or resampling on
its side.

    decode_batch(wav_bytes [batch], target_sr) -> (waveform [batch, time] float32, length [batch])

tf.audio.decode_wav reads 16-bit PCM WAV (any rate, any channel count); channels are averaged as
the Beam job does. Resampling is band-limited interpolation by FFT: the clip is zero-padded (so
its ends do not wrap around), transformed, its spectrum cut (downsampling) or extended with zeros
(upsampling) at the lower of the two Nyquist frequencies with a raised-cosine roll-off from 91.3%
of it, and transformed back; output length ceil(n * target / source), as librosa and the Beam job.
The Beam job resamples with soxr HQ, a polyphase filter this does not reproduce exactly: the
difference, measured on real clips, is in BUILD_NOTES.md ("serving_audio").
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

ROLL_OFF_START = 0.913      # fraction of the lower Nyquist where the roll-off begins (soxr HQ's passband end)


def _gcd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    def body(x, y):
        return y, tf.math.floormod(x, y)

    return tf.while_loop(lambda x, y: y > 0, body, (a, b))[0]


def resample(x: tf.Tensor, source_sr: tf.Tensor, target_sr: int) -> tf.Tensor:
    """Mono float32 [n] at source_sr (int64 scalar) -> float32 [ceil(n * target / source)]."""
    n = tf.cast(tf.size(x), tf.int64)
    target = tf.constant(target_sr, tf.int64)
    g = _gcd(source_sr, target)
    q = source_sr // g                                   # N a multiple of q makes M = N * target / source whole
    big_n = ((2 * n + 64 + q - 1) // q) * q
    big_m = (big_n // q) * (target // g)
    spectrum = tf.signal.rfft(tf.cast(x, tf.float64), [tf.cast(big_n, tf.int32)])
    keep = tf.minimum(big_n, big_m) // 2 + 1
    frac = tf.cast(tf.range(keep), tf.float64) / (tf.cast(tf.minimum(big_n, big_m), tf.float64) / 2.0)
    roll = (frac - ROLL_OFF_START) / (1.0 - ROLL_OFF_START)
    taper = tf.where(frac < ROLL_OFF_START, tf.ones_like(frac), 0.5 + 0.5 * tf.cos(np.pi * tf.clip_by_value(roll, 0.0, 1.0)))
    kept = spectrum[:keep] * tf.cast(taper, tf.complex128)
    out_bins = big_m // 2 + 1
    kept = tf.concat([kept, tf.zeros([out_bins - keep], tf.complex128)], 0)
    y = tf.signal.irfft(kept, [tf.cast(big_m, tf.int32)]) * tf.cast(big_m, tf.float64) / tf.cast(big_n, tf.float64)
    m = (n * target + source_sr - 1) // source_sr
    out = tf.cast(y[:m], tf.float32)
    return tf.cond(tf.equal(source_sr, target), lambda: x, lambda: out)


def decode_batch(wav_bytes: tf.Tensor, target_sr: int, max_seconds: float) -> tuple[tf.Tensor, tf.Tensor]:
    """[batch] WAV files -> zero-padded mono waveforms at target_sr and their lengths. A file that
    is not 16-bit PCM WAV fails the request (decode_wav's message); one longer than max_seconds too."""
    def one(i, arrays, lengths):
        audio, sr = tf.audio.decode_wav(wav_bytes[i])
        sr = tf.cast(sr, tf.int64)
        frames = tf.shape(audio, out_type=tf.int64)[0]
        checks = [
            tf.debugging.assert_greater(frames, tf.constant(0, tf.int64), message="a WAV file holds no samples"),
            tf.debugging.assert_less_equal(
                tf.cast(frames, tf.float64) / tf.cast(sr, tf.float64), tf.constant(max_seconds, tf.float64),
                message=f"a WAV file is longer than {max_seconds:g} s (ServingConfig.max_request_seconds)"),
        ]
        with tf.control_dependencies(checks):
            mono = tf.reduce_mean(audio, axis=1)
        y = resample(mono, sr, target_sr)
        return i + 1, arrays.write(i, y), lengths.write(i, tf.size(y))

    batch = tf.size(wav_bytes)
    arrays = tf.TensorArray(tf.float32, size=batch, infer_shape=False, element_shape=tf.TensorShape([None]))
    lengths = tf.TensorArray(tf.int32, size=batch)
    _, arrays, lengths = tf.while_loop(lambda i, *_: i < batch, one, (0, arrays, lengths))
    length = lengths.stack()
    ragged = tf.RaggedTensor.from_row_lengths(arrays.concat(), tf.cast(length, tf.int64))
    return ragged.to_tensor(default_value=0.0), length
