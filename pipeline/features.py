"""The one feature function: waveform -> trim -> centre pad / crop -> log-mel dB -> normalization.

Written in TensorFlow, batched, so the Beam job (inside a DoFn) and the SavedModel's serving
signature run the very same ops: training and serving cannot drift. librosa is the reference it
is tested against (tests/test_features.py):

- trim: librosa.effects.trim(top_db=60, frame_length=2048, hop_length=512): frame RMS with
  centred zero padding, in dB relative to the loudest frame, frames above -top_db kept;
- window: the seed's read_audio: crop from the start, or pad with zeros centred;
- log-mel: librosa.feature.melspectrogram (centred STFT with zero padding, periodic Hann window,
  power 2, Slaney mel filters) and power_to_db(ref=1, amin=1e-10, top_db=80);
- normalization: the seed's normalize: (x - mean) / std, or / eps when std is 0.

Inputs are a zero-padded batch of mono float32 waveforms at cfg.sample_rate, [batch, time], with
each clip's true length, [batch]. Samples past a clip's length are ignored.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.config import FeatureConfig


@functools.lru_cache(maxsize=8)
def _mel_matrix(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney mel filterbank, [1 + n_fft/2, n_mels], a constant in the graph."""
    import librosa

    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                              htk=False, norm="slaney", dtype=np.float32)
    return np.ascontiguousarray(mel.T)


def _mask_past_length(waveform: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    t = tf.range(tf.shape(waveform)[1])[tf.newaxis, :]
    return tf.where(t < length[:, tf.newaxis], waveform, tf.zeros_like(waveform))


def trim_bounds(waveform: tf.Tensor, length: tf.Tensor, cfg: FeatureConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of the non-silent part of each clip, as librosa.effects.trim finds it.

    Frame energies come from sums over blocks of gcd(frame, hop) samples, so memory stays
    O(time) even for 30 s clips, and the sums are in float64 so that a frame's place relative to
    the threshold does not depend on summation order.
    """
    fl, hop, top_db = cfg.trim.frame_length, cfg.trim.hop_length, cfg.trim.top_db
    block = int(np.gcd(fl, hop))
    x = tf.cast(_mask_past_length(waveform, length), tf.float64)
    batch, time = tf.shape(x)[0], tf.shape(x)[1]
    padded_len = time + 2 * (fl // 2)
    total = ((padded_len + block - 1) // block) * block
    x = tf.pad(x, [[0, 0], [fl // 2, total - time - fl // 2]])
    block_energy = tf.reduce_sum(tf.reshape(tf.square(x), [batch, -1, block]), axis=2)
    frame_energy = tf.reduce_sum(
        tf.signal.frame(block_energy, frame_length=fl // block, frame_step=hop // block, pad_end=False), axis=2)
    power = frame_energy / fl                                        # mean square per frame
    n_valid = 1 + length // hop                                      # librosa: 1 + len // hop frames
    frame_idx = tf.range(tf.shape(power)[1])[tf.newaxis, :]
    valid = frame_idx < n_valid[:, tf.newaxis]
    power = tf.where(valid, power, tf.zeros_like(power))
    amin_sq = tf.constant(1e-10, tf.float64)                         # amplitude_to_db's amin=1e-5, squared
    db = 10.0 * (tf.math.log(tf.maximum(amin_sq, power)) / np.log(10.0))
    ref_db = 10.0 * (tf.math.log(tf.maximum(amin_sq, tf.reduce_max(power, axis=1, keepdims=True))) / np.log(10.0))
    loud = tf.logical_and(valid, db - ref_db > -top_db)
    any_loud = tf.reduce_any(loud, axis=1)
    first = tf.argmax(tf.cast(loud, tf.int32), axis=1, output_type=tf.int32)
    last = tf.shape(loud)[1] - 1 - tf.argmax(tf.cast(tf.reverse(loud, [1]), tf.int32), axis=1, output_type=tf.int32)
    start = tf.where(any_loud, first * hop, 0)
    end = tf.where(any_loud, tf.minimum(length, (last + 1) * hop), 0)
    return start, end


def fit_window(waveform: tf.Tensor, length: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """Trim, then crop from the start or centre-pad with zeros to exactly clip_samples."""
    n = config_lib.clip_samples(cfg)
    length = tf.cast(length, tf.int32)
    if cfg.trim.enabled:
        start, end = trim_bounds(waveform, length, cfg)
    else:
        start, end = tf.zeros_like(length), length
    kept = tf.minimum(end - start, n)
    offset = tf.maximum(0, (n - (end - start)) // 2)

    def place(args):  # a slice and a pad per clip: half the cost of one batched gather
        w, s, k, o = args
        return tf.pad(w[s:s + k], [[o, n - o - k]])

    return tf.map_fn(place, (waveform, start, kept, offset), fn_output_signature=tf.TensorSpec([n], tf.float32))


def frame(x: tf.Tensor, frame_length: int, hop: int) -> tf.Tensor:
    """tf.signal.frame(x, frame_length, hop) for [batch, time], built from contiguous slices.

    When hop does not divide frame_length (the seed's 347 and 2560), tf.signal.frame gathers
    element by element; slicing hop-sized blocks and concatenating them is about twice as fast.
    """
    time_len = tf.shape(x)[1]
    n_frames = 1 + (time_len - frame_length) // hop
    k = -(-frame_length // hop)                                      # blocks a frame touches
    n_blocks = n_frames + k - 1
    x = tf.pad(x, [[0, 0], [0, tf.maximum(0, n_blocks * hop - time_len)]])[:, :n_blocks * hop]
    blocks = tf.reshape(x, [tf.shape(x)[0], n_blocks, hop])
    parts = [blocks[:, i:i + n_frames] for i in range(k - 1)]
    parts.append(blocks[:, k - 1:k - 1 + n_frames, :frame_length - (k - 1) * hop])
    return tf.concat(parts, axis=2)


@functools.lru_cache(maxsize=8)
def _hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window computed in float64 (tf.signal.hann_window in float32 is off by 2e-7)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def _frame_range(window: tf.Tensor, cfg: FeatureConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """[lo, hi) of the centred-STFT frames that overlap a nonzero sample of `window` ([time])."""
    n_fft, hop, pad = cfg.n_fft, cfg.hop_length, cfg.n_fft // 2
    nonzero = tf.cast(tf.where(tf.not_equal(window, 0.0))[:, 0], tf.int32)
    if_any = tf.size(nonzero) > 0
    a = tf.where(if_any, tf.reduce_min(tf.concat([nonzero, [0]], 0)), 0)
    b = tf.where(if_any, tf.reduce_max(tf.concat([nonzero, [0]], 0)), -1)
    # frame f covers window[f*hop - pad, f*hop - pad + n_fft)
    lo = tf.maximum(0, (a + pad - n_fft + 1 + hop - 1) // hop)
    hi = tf.minimum(config_lib.n_frames(cfg), (b + pad) // hop + 1)
    return lo, tf.where(if_any, tf.maximum(lo, hi), lo)


def _mel_power(window: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """Mel power of one fixed-length window, [frames, n_mels].

    Frames lying wholly in the zero padding around a short clip have power exactly 0, so their
    STFT is skipped and zeros written: the work follows the clip's length, not the window's.
    """
    dtype = tf.float64 if cfg.float64_stft else tf.float32
    n_fft, hop, pad = cfg.n_fft, cfg.hop_length, cfg.n_fft // 2
    lo, hi = _frame_range(window, cfg)
    x = tf.pad(window, [[pad, pad]])                                 # center=True, pad_mode="constant"
    segment = x[lo * hop:(hi - 1) * hop + n_fft]
    frames = tf.cast(frame(segment[tf.newaxis, :], n_fft, hop)[0], dtype)
    spectrum = tf.signal.rfft(frames * tf.constant(_hann_window(n_fft), dtype), [n_fft])
    power = tf.cast(tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum)), tf.float32)
    mel_basis = _mel_matrix(cfg.sample_rate, n_fft, cfg.n_mels, float(cfg.fmin), config_lib.fmax(cfg))
    mel = tf.matmul(power, tf.constant(mel_basis))
    return tf.pad(mel, [[lo, config_lib.n_frames(cfg) - hi], [0, 0]])


def log_mel(window: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """Log-mel power in dB of fixed-length windows, [batch, frames, n_mels]."""
    mel = tf.map_fn(lambda w: _mel_power(w, cfg), window,
                    fn_output_signature=tf.TensorSpec([config_lib.n_frames(cfg), cfg.n_mels], tf.float32))
    db = 10.0 * (tf.math.log(tf.maximum(tf.constant(cfg.amin, tf.float32), mel)) / np.log(10.0))
    return tf.maximum(db, tf.reduce_max(db, axis=[1, 2], keepdims=True) - cfg.top_db)


def normalize(features: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    if cfg.normalization == FeatureConfig.NONE:
        return features
    mean = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
    std = tf.math.reduce_std(features, axis=[1, 2], keepdims=True)
    return (features - mean) / tf.where(std > 0, std, tf.constant(cfg.normalization_eps, features.dtype))


def compute_features(waveform: tf.Tensor, length: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """The feature function: [batch, time] waveforms + lengths -> [batch, frames, n_mels] float32."""
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    length = tf.cast(length, tf.int32)
    return normalize(log_mel(fit_window(waveform, length, cfg), cfg), cfg)


def feature_fn(cfg: FeatureConfig) -> tf.types.experimental.PolymorphicFunction:
    """compute_features traced once for any batch and length: what DoFns and SavedModels call."""
    signature = [tf.TensorSpec([None, None], tf.float32, name="waveform"),
                 tf.TensorSpec([None], tf.int32, name="length")]
    return tf.function(lambda w, n: compute_features(w, n, cfg), input_signature=signature)


def without_trim(cfg: FeatureConfig) -> FeatureConfig:
    """cfg with trimming off: the feature function for clips already cut by `window_keeper`."""
    out = FeatureConfig()
    out.CopyFrom(cfg)
    out.trim.enabled = False
    return out


def window_keeper(cfg: FeatureConfig):
    """A function clip -> the samples of it that the feature function keeps: the trimmed part, cropped
    to the window. For every clip,

        compute_features(clip, cfg) == compute_features(keep(clip), without_trim(cfg))

    exactly (fit_window slices [start, start + min(end - start, n)) and centres what it kept), so the
    Beam job trims each clip alone, right after decoding, and holds and batches at most one window
    per clip instead of padding a batch to its longest clip. trim_bounds itself runs here, the same
    function the serving graph runs."""
    n = config_lib.clip_samples(cfg)
    if not cfg.trim.enabled:
        return lambda w: w[:n]
    bounds = tf.function(lambda w, length: trim_bounds(w, length, cfg),
                         input_signature=[tf.TensorSpec([1, None], tf.float32), tf.TensorSpec([1], tf.int32)])

    def keep(waveform: np.ndarray) -> np.ndarray:
        start, end = (int(v[0]) for v in bounds(waveform[np.newaxis, :], np.array([len(waveform)], np.int32)))
        return waveform[start:start + min(end - start, n)]

    return keep


def pad_batch(waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad a list of 1-D float32 waveforms into ([batch, max_len], lengths)."""
    lengths = np.array([len(w) for w in waveforms], dtype=np.int32)
    out = np.zeros((len(waveforms), max(1, int(lengths.max(initial=0)))), dtype=np.float32)
    for i, w in enumerate(waveforms):
        out[i, :len(w)] = w
    return out, lengths
