"""The one feature function: waveform -> trim -> centre pad / crop -> log-mel dB -> normalization.

Written in TensorFlow, batched, so the Beam job (inside a DoFn) and the SavedModel's serving
signature run the very same ops: training and serving cannot drift. librosa is the reference it
is tested against (tests/features/test_feature_fn.py):

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
from pipeline.features import mel_filters
from pipeline.config import FeatureConfig


HTK_MEL = False   # Slaney's mel scale (librosa's default, the seed's): the filterbank's and mel_centers'


@functools.lru_cache(maxsize=8)
def _mel_matrix(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney mel filterbank, [1 + n_fft/2, n_mels], a constant in the graph."""
    mel = mel_filters.mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk=HTK_MEL, dtype=np.float32)
    return np.ascontiguousarray(mel.T)


def mel_centers(cfg: FeatureConfig) -> np.ndarray:
    """The centre frequency (Hz) of each mel band of the filterbank above, [n_mels]."""
    return mel_filters.mel_frequencies(cfg.n_mels + 2, float(cfg.fmin), config_lib.fmax(cfg), htk=HTK_MEL)[1:-1]


def _mask_past_length(waveform: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    t = tf.range(tf.shape(waveform)[1])[tf.newaxis, :]
    return tf.where(t < length[:, tf.newaxis], waveform, tf.zeros_like(waveform))


def trim_bounds(waveform: tf.Tensor, length: tf.Tensor, cfg: FeatureConfig,
                padded: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of the non-silent part of each clip, as librosa.effects.trim finds it.

    Frame energies come from sums over blocks of gcd(frame, hop) samples, so memory stays
    O(time) even for 30 s clips, and the sums are in float64 so that a frame's place relative to
    the threshold does not depend on summation order. `padded=False` says that no clip has samples
    past its length (a single clip, as window_keeper passes it), which skips the masking.
    """
    fl, hop, top_db = cfg.trim.frame_length, cfg.trim.hop_length, cfg.trim.top_db
    block = int(np.gcd(fl, hop))
    x = _mask_past_length(waveform, length) if padded else waveform
    batch, time = tf.shape(x)[0], tf.shape(x)[1]
    padded_len = time + 2 * (fl // 2)
    total = ((padded_len + block - 1) // block) * block
    x = tf.cast(tf.pad(x, [[0, 0], [fl // 2, total - time - fl // 2]]), tf.float64)
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
        with tf.name_scope("trim"):
            start, end = trim_bounds(waveform, length, cfg)
    else:
        start, end = tf.zeros_like(length), length
    kept = tf.minimum(end - start, n)
    offset = tf.maximum(0, (n - (end - start)) // 2)

    def place(args):  # a slice and a pad per clip: half the cost of one batched gather
        w, s, k, o = args
        return tf.pad(w[s:s + k], [[o, n - o - k]])

    with tf.name_scope("fit_window"):
        return tf.map_fn(place, (waveform, start, kept, offset),
                         fn_output_signature=tf.TensorSpec([n], tf.float32))


@functools.lru_cache(maxsize=8)
def _hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window computed in float64 (tf.signal.hann_window in float32 is off by 2e-7)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


# Frames the STFT runs on at a time. Each step's tensors (frames, spectrum, power) then stay in
# the CPU's cache instead of streaming a whole batch's ~75 MB through memory per op, and every
# FFT and matmul sees the same shapes whatever the batch, so a clip's features do not depend on
# which clips share its batch (a matmul of one row takes another kernel and rounds differently).
CHUNK_FRAMES = 128


@functools.lru_cache(maxsize=8)
def _mel_bands(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
               overhead: int = 2000) -> tuple[tuple[int, int, np.ndarray], ...]:
    """The Slaney filterbank as a few dense blocks over only the FFT bins their mels touch.

    Each mel's triangle covers a few bins (3 at the bottom of the seed's filterbank, 79 at the
    top), so the dense [bins, mels] product is >90% multiplications by zero. Consecutive mels are
    grouped into bands; a band multiplies only its bins' slice. The grouping minimises the
    multiply-adds plus `overhead` per band (the cost of one more slice and matmul), by dynamic
    programming over band boundaries. Each block's rows are doubled for the interleaved
    (re^2, im^2) columns of the power: [(first column, end column, [2 * band bins, band mels])].
    The blocks hold exactly the filterbank's nonzero weights; only zeros are left out.
    """
    mel = _mel_matrix(sample_rate, n_fft, n_mels, fmin, fmax)
    nonzero = mel != 0
    lo = np.array([np.argmax(nonzero[:, m]) if nonzero[:, m].any() else -1 for m in range(n_mels)])
    hi = np.array([len(nonzero) - np.argmax(nonzero[::-1, m]) if nonzero[:, m].any() else -1 for m in range(n_mels)])

    def span(i: int, j: int) -> tuple[int, int]:
        used = lo[i:j] >= 0
        return (int(lo[i:j][used].min()), int(hi[i:j][used].max())) if used.any() else (0, 1)

    best, cut = [0.0] + [np.inf] * n_mels, [0] * (n_mels + 1)
    for j in range(1, n_mels + 1):
        for i in range(j):
            a, b = span(i, j)
            cost = best[i] + (b - a) * (j - i) + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bands, j = [], n_mels
    while j > 0:
        i = cut[j]
        a, b = span(i, j)
        bands.append((2 * a, 2 * b, np.ascontiguousarray(np.repeat(mel[a:b, i:j], 2, axis=0))))
        j = i
    assert sum(np.count_nonzero(w) for _, _, w in bands) == 2 * np.count_nonzero(mel)
    return tuple(reversed(bands))


def _frame_blocks(cfg: FeatureConfig) -> tuple[int, int]:
    """(blocks of hop samples a frame touches, blocks per centre-padded window)."""
    k = -(-cfg.n_fft // cfg.hop_length)
    return k, config_lib.n_frames(cfg) + k - 1


def _chunk_mel_power(blocks: tf.Tensor, first_block: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """Mel power of CHUNK_FRAMES frames, [CHUNK_FRAMES, n_mels]; frame i starts at blocks[first_block[i]].

    Frames are gathered as whole rows of hop samples (row copies; tf.signal.frame gathers sample by
    sample when hop does not divide n_fft), windowed with a Hann window zero-padded to k * hop, and
    cropped to n_fft by the rfft. The power is summed in float32 from the spectrum's real and
    imaginary parts side by side (a bitcast, no copy), so the mel product adds re^2 + im^2 itself.
    """
    dtype = blocks.dtype
    n_fft, hop = cfg.n_fft, cfg.hop_length
    k, _ = _frame_blocks(cfg)
    window = np.zeros(k * hop)
    window[:n_fft] = _hann_window(n_fft)
    with tf.name_scope("frames"):          # name scopes: bench/profile_features.py reports by them
        frames = tf.reshape(tf.gather(blocks, first_block[:, tf.newaxis] + tf.range(k)), [-1, k * hop])
        frames = frames * tf.constant(window, dtype)
    with tf.name_scope("fft"):
        spectrum = tf.signal.rfft(frames, [n_fft])
    with tf.name_scope("power"):
        power = tf.square(tf.cast(tf.bitcast(spectrum, dtype), tf.float32))       # [frames, bins, (re, im)]
        power = tf.reshape(power, [-1, 2 * (n_fft // 2 + 1)])
    with tf.name_scope("mel_bands"):
        bands = _mel_bands(cfg.sample_rate, n_fft, cfg.n_mels, float(cfg.fmin), config_lib.fmax(cfg))
        return tf.concat([tf.matmul(power[:, a:b], tf.constant(w)) for a, b, w in bands], axis=1)


def _mel_power(window: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """Mel power of fixed-length windows, [batch, frames, n_mels].

    The centred STFT runs only on frames that touch a block of hop samples with a nonzero sample:
    a frame of zeros has power exactly 0, so the work follows the clips' lengths, not the window's
    (FSDD-FAT: ~70% of the frames). The frames of the whole batch are computed together in chunks
    of CHUNK_FRAMES (the last padded with frames of zeros) and scattered back in place.
    """
    dtype = tf.float64 if cfg.float64_stft else tf.float32
    hop, pad, n_frames = cfg.hop_length, cfg.n_fft // 2, config_lib.n_frames(cfg)
    k, n_blocks = _frame_blocks(cfg)
    n = config_lib.clip_samples(cfg)
    batch = tf.shape(window)[0]
    with tf.name_scope("frame_selection"):
        # each clip: centre padding (center=True, zeros), cut or padded to n_blocks blocks of hop
        # samples, then k blocks of zeros, which the chunks' padding frames read
        right = n_blocks * hop - n - pad
        if right >= 0:
            x = tf.pad(window, [[0, 0], [pad, right + k * hop]])
        else:                                                          # hop > n_fft / 2: no frame reaches the end
            x = tf.pad(tf.pad(window, [[0, 0], [pad, 0]])[:, :n_blocks * hop], [[0, 0], [0, k * hop]])
        blocks = tf.reshape(x, [batch, n_blocks + k, hop])
        nonzero = tf.cast(tf.reduce_any(tf.not_equal(blocks, 0.0), axis=2), tf.int32)
        seen = tf.pad(tf.cumsum(nonzero, axis=1), [[0, 0], [1, 0]])
        used = tf.cast(tf.where(seen[:, k:k + n_frames] - seen[:, :n_frames] > 0), tf.int32)  # [used, (clip, frame)]
        first_block = used[:, 0] * (n_blocks + k) + used[:, 1]
        n_used = tf.shape(first_block)[0]
        n_chunks = (n_used + CHUNK_FRAMES - 1) // CHUNK_FRAMES
        chunks = tf.reshape(tf.pad(first_block, [[0, n_chunks * CHUNK_FRAMES - n_used]], constant_values=n_blocks),
                            [n_chunks, CHUNK_FRAMES])               # padding frames: clip 0's zero blocks
        blocks = tf.reshape(tf.cast(blocks, dtype), [-1, hop])
    mel = tf.map_fn(lambda c: _chunk_mel_power(blocks, c, cfg), chunks,
                    fn_output_signature=tf.TensorSpec([CHUNK_FRAMES, cfg.n_mels], tf.float32))
    with tf.name_scope("scatter"):
        mel = tf.reshape(mel, [-1, cfg.n_mels])[:n_used]
        return tf.scatter_nd(used, mel, tf.stack([batch, n_frames, cfg.n_mels]))


def log_mel(window: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """Log-mel power in dB of fixed-length windows ([batch, clip_samples]), [batch, frames, n_mels]."""
    mel = _mel_power(tf.convert_to_tensor(window, tf.float32), cfg)
    with tf.name_scope("db"):
        db = 10.0 * (tf.math.log(tf.maximum(tf.constant(cfg.amin, tf.float32), mel)) / np.log(10.0))
        return tf.maximum(db, tf.reduce_max(db, axis=[1, 2], keepdims=True) - cfg.top_db)


def normalize(features: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    if cfg.normalization == FeatureConfig.NONE:
        return features
    with tf.name_scope("normalize"):
        mean = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
        std = tf.math.reduce_std(features, axis=[1, 2], keepdims=True)
        return (features - mean) / tf.where(std > 0, std, tf.constant(cfg.normalization_eps, features.dtype))


def compute_features(waveform: tf.Tensor, length: tf.Tensor, cfg: FeatureConfig) -> tf.Tensor:
    """The feature function: [batch, time] waveforms + lengths -> [batch, frames, n_mels] float32."""
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    length = tf.cast(length, tf.int32)
    return normalize(log_mel(fit_window(waveform, length, cfg), cfg), cfg)


def feature_fn(cfg: FeatureConfig) -> tf.types.experimental.PolymorphicFunction:
    """compute_features traced once for any batch and length: what the Beam job's DoFns call.

    Without AutoGraph: compute_features has no Python control flow on tensors (its `if`s read the
    config), so AutoGraph would only rewrite its source, 0.7 of the trace's 0.85 s in every worker
    (bench/README.md, issue 9); the graph is the same."""
    signature = [tf.TensorSpec([None, None], tf.float32, name="waveform"),
                 tf.TensorSpec([None], tf.int32, name="length")]
    return tf.function(lambda w, n: compute_features(w, n, cfg), input_signature=signature, autograph=False)


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
    # a concrete function with one output: per clip, the call and the copy back cost ~0.3 ms less
    # than a tf.function returning two tensors
    def clip_bounds(w):
        return tf.stack(trim_bounds(w, tf.shape(w)[1:], cfg, padded=False), axis=1)[0]

    bounds = tf.function(clip_bounds, input_signature=[tf.TensorSpec([1, None], tf.float32)],
                         autograph=False).get_concrete_function()

    def keep(waveform: np.ndarray) -> np.ndarray:
        start, end = bounds(tf.constant(waveform[np.newaxis, :])).numpy().tolist()
        return waveform[start:start + min(end - start, n)]

    return keep


def pad_batch(waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad a list of 1-D float32 waveforms into ([batch, max_len], lengths)."""
    lengths = np.array([len(w) for w in waveforms], dtype=np.int32)
    out = np.zeros((len(waveforms), max(1, int(lengths.max(initial=0)))), dtype=np.float32)
    for i, w in enumerate(waveforms):
        out[i, :len(w)] = w
    return out, lengths
