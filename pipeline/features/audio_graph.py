"""Encoded WAV bytes -> the waveforms the feature function takes, in the graph (the serving_audio
signature), so a client can send files as they are: no decoding, downmixing or resampling on
its side.

    decode_batch(wav_bytes [batch], target_sr, max_seconds, limits) -> (waveform [batch, time] float32, length [batch])

tf.audio.decode_wav reads 16-bit PCM WAV (any rate, any channel count); channels are averaged as
the Beam job does. Source rates outside the Beam job's DecodeLimits are refused, as there (and an
absurd rate in a header cannot make the resampler allocate gigabytes).

Resampling reproduces the Beam job's (soxr HQ, through pipeline.features.audio.resample) by band-limited
interpolation in the frequency domain: the clip is zero-padded (so its ends do not wrap around),
transformed, its spectrum cut (downsampling) or extended with zeros (upsampling) at the lower of
the two Nyquist frequencies and weighted by soxr HQ's own magnitude response, and transformed
back. soxr HQ is linear-phase with its delay removed (measured: phase < 4e-6 rad), so matching
its magnitude response is matching the filter. That response, measured with tones through
soxr.resample for 12 rate pairs between 8 and 96 kHz, depends on the ratio by < 0.007 and is
0.5 * erfc((f - 0.95684) / 0.01631) in units of the lower Nyquist frequency to within 0.003
(flat to 0.1% below 0.92, half at 0.957, < 1e-3 from 0.99). Output length: ceil(n * target /
source) samples as librosa and the Beam job, of which soxr computes round(n * target / source);
the last one, where those differ, is zero, as the Beam job pads it.

What is not reproduced: for some ratios (e.g. 22.05 or 44.1 kHz to 16 kHz) soxr's first one to
three output samples differ from the zero-extended signal's by a few percent of the signal there.
Measured agreement with the Beam path on real clips: BUILD_NOTES.md ("serving_audio").
"""
from __future__ import annotations

import tensorflow as tf

from pipeline.protos import feature_config_pb2

# soxr HQ's magnitude response (see above): 0.5 * erfc((f - CENTRE) / WIDTH), f / lower Nyquist
SOXR_HQ_CENTRE = 0.95684
SOXR_HQ_WIDTH = 0.01631


def soxr_hq_response(frac: tf.Tensor) -> tf.Tensor:
    """soxr HQ's gain at `frac` of the lower Nyquist frequency (float64)."""
    return 0.5 * tf.math.erfc((frac - SOXR_HQ_CENTRE) / SOXR_HQ_WIDTH)


def _gcd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    def body(x, y):
        return y, tf.math.floormod(x, y)

    return tf.while_loop(lambda x, y: y > 0, body, (a, b))[0]


def resample(x: tf.Tensor, source_sr: tf.Tensor, target_sr: int) -> tf.Tensor:
    """Mono float32 [n] at source_sr (int64 scalar) -> float32 [ceil(n * target / source)], as
    pipeline.features.audio.resample (soxr HQ) computes it, up to the differences stated above.
    At the target rate x passes through: the FFTs are built inside the branch that needs them, so
    they do not run (a graph runs a tf.cond branch's ops only when that branch is taken)."""
    return tf.cond(tf.equal(source_sr, tf.constant(target_sr, tf.int64)),
                   lambda: tf.identity(x), lambda: _resample_by_fft(x, source_sr, target_sr))


def _resample_by_fft(x: tf.Tensor, source_sr: tf.Tensor, target_sr: int) -> tf.Tensor:
    n = tf.cast(tf.size(x), tf.int64)
    target = tf.constant(target_sr, tf.int64)
    g = _gcd(source_sr, target)
    q = source_sr // g                                   # N a multiple of q makes M = N * target / source whole
    big_n = ((2 * n + 64 + q - 1) // q) * q
    big_m = (big_n // q) * (target // g)
    spectrum = tf.signal.rfft(tf.cast(x, tf.float64), [tf.cast(big_n, tf.int32)])
    keep = tf.minimum(big_n, big_m) // 2 + 1
    frac = tf.cast(tf.range(keep), tf.float64) / (tf.cast(tf.minimum(big_n, big_m), tf.float64) / 2.0)
    kept = spectrum[:keep] * tf.cast(soxr_hq_response(frac), tf.complex128)
    out_bins = big_m // 2 + 1
    kept = tf.concat([kept, tf.zeros([out_bins - keep], tf.complex128)], 0)
    y = tf.signal.irfft(kept, [tf.cast(big_m, tf.int32)]) * tf.cast(big_m, tf.float64) / tf.cast(big_n, tf.float64)
    m = (n * target + source_sr - 1) // source_sr                      # ceil: librosa's length
    soxr_m = (2 * n * target + source_sr) // (2 * source_sr)           # round: what soxr computes
    return tf.where(tf.range(m) < soxr_m, tf.cast(y[:m], tf.float32), 0.0)


# Files of one request decoded at once: each holds its decoded samples and, resampled, FFT
# buffers of ~50 bytes per sample of 2n + 64 points (a 60 s, 384 kHz file: ~1 GB), so a request's
# memory is this many files' worth, not its batch size's. 1: TF Serving already runs requests
# side by side, and decode_wav and the FFTs are single ops that use the intra-op thread pool.
DECODE_PARALLELISM = 1


def decode_batch(wav_bytes: tf.Tensor, target_sr: int, max_seconds: float,
                 limits: feature_config_pb2.DecodeLimits | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """[batch] WAV files -> zero-padded mono waveforms at target_sr and their lengths. A file that
    is not 16-bit PCM WAV fails the request (decode_wav's message); one longer than max_seconds,
    one without samples, or one outside `limits` (the Beam job's DecodeLimits: its bytes before it
    is decoded, its rate, its samples as frames x channels) too."""
    limits = limits if limits is not None else feature_config_pb2.DecodeLimits()
    lo, hi = int(limits.min_source_sample_rate), int(limits.max_source_sample_rate)
    max_bytes, max_samples = int(limits.max_file_bytes), int(limits.max_source_samples)

    def one(i, arrays, lengths):
        size = tf.cast(tf.strings.length(wav_bytes[i]), tf.int64)
        small_enough = tf.debugging.assert_less_equal(
            size, tf.constant(max_bytes, tf.int64),
            message=f"a WAV file is larger than {max_bytes} bytes (DecodeLimits.max_file_bytes)")
        with tf.control_dependencies([small_enough]):
            audio, sr = tf.audio.decode_wav(wav_bytes[i])
        sr = tf.cast(sr, tf.int64)
        shape = tf.shape(audio, out_type=tf.int64)
        frames = shape[0]
        checks = [
            tf.debugging.assert_greater(frames, tf.constant(0, tf.int64), message="a WAV file holds no samples"),
            tf.debugging.assert_less_equal(
                frames * shape[1], tf.constant(max_samples, tf.int64),
                message=f"a WAV file holds more than {max_samples} samples, frames times channels "
                        "(DecodeLimits.max_source_samples)"),
            tf.debugging.assert_greater_equal(sr, tf.constant(lo, tf.int64),
                                              message=f"a WAV file has a sample rate below {lo} Hz (DecodeLimits)"),
            tf.debugging.assert_less_equal(sr, tf.constant(hi, tf.int64),
                                           message=f"a WAV file has a sample rate above {hi} Hz (DecodeLimits)"),
        ]
        with tf.control_dependencies(checks):      # the duration only once the rate is known to be sane
            seconds = tf.cast(frames, tf.float64) / tf.cast(sr, tf.float64)
        checks.append(tf.debugging.assert_less_equal(
            seconds, tf.constant(max_seconds, tf.float64),
            message=f"a WAV file is longer than {max_seconds:g} s (ServingConfig.max_request_seconds)"))
        with tf.control_dependencies(checks):
            mono = tf.reduce_mean(audio, axis=1)
        y = resample(mono, sr, target_sr)
        return i + 1, arrays.write(i, y), lengths.write(i, tf.size(y))

    batch = tf.size(wav_bytes)
    arrays = tf.TensorArray(tf.float32, size=batch, infer_shape=False, element_shape=tf.TensorShape([None]))
    lengths = tf.TensorArray(tf.int32, size=batch)
    _, arrays, lengths = tf.while_loop(lambda i, *_: i < batch, one, (0, arrays, lengths),
                                       parallel_iterations=DECODE_PARALLELISM)
    length = lengths.stack()
    ragged = tf.RaggedTensor.from_row_lengths(arrays.concat(), tf.cast(length, tf.int64))
    return ragged.to_tensor(default_value=0.0), length
