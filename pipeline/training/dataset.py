"""tf.data input over the Beam job's TFRecords: the same function feeds the standalone trainer
and the TFX Trainer's run_fn.

    files -> (shuffle files) -> parallel interleave of TFRecordDatasets (GZIP or plain) -> (shuffle)
          -> batch -> parse_example on whole batches -> multi-hot labels -> (augment) -> prefetch

Parsing whole batches costs one parse_example call per batch instead of one per example.
Training may read in non-deterministic order (faster; `deterministic` fixes it); evaluation keeps
the files' order.
Random time shifts, frequency warping (VTLP), SpecAugment masks and mixup (AugmentConfig; the
default recipe uses mixup only) apply to training batches only, in that order.

Examples with noisy clips (FAT2019's train_noisy; NoisyConfig): with `noisy.batch_share` > 0 the
training records split by source after the interleave, each source is shuffled and repeated on
its own and every example is drawn from the noisy one with that probability; a noisy loss weight
other than 1 makes training batches (mel, labels, weight), which mixup mixes like the labels;
`noisy.label_smoothing` softens the noisy clips' labels as they are parsed (before mixup);
`noisy.warmup_epochs` switches the input to the curated clips alone after the warm-up
(pipeline/training/warmup.py).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline import fileio
from pipeline.data import example_schema as examples
from pipeline.features import feature_fn as features
from pipeline.data import job_output as output
from pipeline.data import tfrecord
from pipeline.data import kaggle_layout
from pipeline.config import AugmentConfig, FeatureConfig, NoisyConfig

WARP_LEVELS = 21   # warp factors drawn from this many evenly spaced values in [1 - w, 1 + w]


def split_files(examples_dir: str, split: str, manifest: dict | None = None) -> tuple[list[str], int]:
    """The files of `split` listed by a complete manifest (never a glob over a partial output),
    and their number of examples. `manifest`: one the caller already read with require_complete."""
    manifest = manifest or output.require_complete(examples_dir)
    info = manifest["splits"].get(split)
    if not info or not info["records"]:
        raise ValueError(f"{examples_dir}: split {split!r} has no examples (splits: {sorted(manifest['splits'])})")
    return [fileio.join(examples_dir, f["path"]) for f in info["files"]], info["records"]


def _parse_batch(serialized, mel_shape, num_classes, noisy: NoisyConfig | None = None):
    """(mel, multi-hot labels), and each example's loss weight when noisy clips weigh other than
    1; noisy clips' labels smoothed when `noisy.label_smoothing` > 0 (curated ones never)."""
    weigh = noisy is not None and noisy.loss_weight != 1
    smooth = noisy is not None and noisy.label_smoothing > 0
    parsed = tf.io.parse_example(serialized, examples.parse_spec(mel_shape, with_source=weigh or smooth))
    labels = tf.cast(tf.sparse.to_indicator(parsed[examples.LABELS], num_classes), tf.float32)
    if not (weigh or smooth):
        return parsed[examples.MEL], labels
    is_noisy = tf.equal(parsed[examples.SOURCE], kaggle_layout.NOISY)
    if smooth:
        s = noisy.label_smoothing
        labels = tf.where(is_noisy[:, tf.newaxis], labels * (1.0 - s) + s / 2.0, labels)
    if not weigh:
        return parsed[examples.MEL], labels
    return parsed[examples.MEL], labels, tf.where(is_noisy, noisy.loss_weight, 1.0)


def _is_noisy(serialized):
    return tf.equal(tf.io.parse_single_example(serialized, examples.source_spec())[examples.SOURCE],
                    kaggle_layout.NOISY)


def epoch_batches(curated: int, share: float, batch_size: int) -> int:
    """Training batches of an epoch that draws each of `curated` clips once on average when a
    `share` of every batch's examples is drawn from the noisy clips."""
    return max(1, int(np.ceil(curated / (batch_size * (1.0 - share)))))


def time_shift(mel: tf.Tensor, max_share: float, seed: tf.Tensor) -> tf.Tensor:
    """Each example of [batch, frames, mels] rolled along its frames by a random offset in
    [-max_share, +max_share] x frames: frame t comes from frame t - offset, modulo frames."""
    frames = tf.shape(mel)[1]
    limit = tf.cast(tf.math.floor(max_share * tf.cast(frames, tf.float32)), tf.int32)
    offset = tf.random.stateless_uniform([tf.shape(mel)[0]], seed, -limit, limit + 1, tf.int32)
    source = tf.math.floormod(tf.range(frames)[tf.newaxis, :] - offset[:, tf.newaxis], frames)
    return tf.gather(mel, source, batch_dims=1)


def resized_crop(mel: tf.Tensor, min_share: float, seed: tf.Tensor) -> tf.Tensor:
    """Each example of [batch, frames, mels] cut to a random span of [min_share, 1] x frames at a
    random start and stretched back to `frames`: output frame t reads the span at t x (span - 1) /
    (frames - 1), interpolated linearly between the two nearest frames."""
    batch, frames = tf.shape(mel)[0], tf.shape(mel)[1]
    n = tf.cast(frames, tf.float32)
    s = tf.random.experimental.stateless_split(seed, 2)
    span = tf.random.stateless_uniform([batch], s[0], min_share, 1.0) * n              # frames in the crop
    start = tf.random.stateless_uniform([batch], s[1]) * (n - span)
    t = tf.range(n)[tf.newaxis, :] / tf.maximum(n - 1.0, 1.0)
    pos = tf.minimum(start[:, tf.newaxis] + t * (span[:, tf.newaxis] - 1.0), n - 1.0)
    lo = tf.cast(tf.floor(pos), tf.int32)
    frac = (pos - tf.floor(pos))[:, :, tf.newaxis]
    hi = tf.minimum(lo + 1, frames - 1)
    return (1.0 - frac) * tf.gather(mel, lo, batch_dims=1) + frac * tf.gather(mel, hi, batch_dims=1)


def spec_augment(mel: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Zero random time and frequency stripes of each example ([batch, frames, mels])."""
    batch, frames, mels = tf.shape(mel)[0], tf.shape(mel)[1], tf.shape(mel)[2]
    keep = tf.ones_like(mel)
    for i, (count, width, axis, size) in enumerate(((cfg.time_masks, cfg.time_mask_max_frames, 1, frames),
                                                     (cfg.freq_masks, cfg.freq_mask_max_bins, 2, mels))):
        for j in range(count):
            s = tf.random.experimental.stateless_split(seed + 97 * i + j, 2)
            w = tf.random.stateless_uniform([batch], s[0], 0, width + 1, tf.int32)
            start = tf.cast(tf.random.stateless_uniform([batch], s[1]) * tf.cast(size - w + 1, tf.float32), tf.int32)
            pos = tf.range(size)[tf.newaxis, :]
            stripe = (pos >= start[:, tf.newaxis]) & (pos < (start + w)[:, tf.newaxis])
            stripe = tf.expand_dims(stripe, 2 if axis == 1 else 1)
            keep = keep * (1.0 - tf.cast(stripe, mel.dtype))
    return mel * keep


def freq_warp_matrices(centers: np.ndarray, max_warp: float, levels: int = WARP_LEVELS) -> np.ndarray:
    """[levels, mels, mels]: one linear map of the mel axis per warp factor a in
    linspace(1 - max_warp, 1 + max_warp, levels). Output band i takes the input at frequency
    centers[i] / a, interpolated linearly between the two nearest bands (the edge band past the
    ends): the spectrum of the same sound with every frequency scaled by a (VTLP)."""
    mels = len(centers)
    out = np.zeros((levels, mels, mels), np.float32)
    cols = np.arange(mels)
    for k, a in enumerate(np.linspace(1.0 - max_warp, 1.0 + max_warp, levels)):
        src = np.interp(centers / a, centers, cols)       # fractional source band, clamped to the ends
        lo = np.floor(src).astype(int)
        frac = (src - lo).astype(np.float32)
        out[k, lo, cols] += 1.0 - frac
        out[k, np.minimum(lo + 1, mels - 1), cols] += frac
    return out


def freq_warp(mel: tf.Tensor, matrices: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Each example of [batch, frames, mels] through one of `matrices` picked at random."""
    pick = tf.random.stateless_uniform([tf.shape(mel)[0]], seed, 0, tf.shape(matrices)[0], tf.int32)
    return tf.einsum("btm,bmn->btn", mel, tf.gather(matrices, pick))


def mixup(mel: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor, weight: tf.Tensor | None = None):
    """Convex combinations of each example with a shuffled partner; labels (and loss weights, when
    given: then a third output) mix the same way."""
    s = tf.random.experimental.stateless_split(seed, 3)
    g1 = tf.random.stateless_gamma([tf.shape(mel)[0]], s[0], alpha)
    g2 = tf.random.stateless_gamma([tf.shape(mel)[0]], s[1], alpha)
    lam = g1 / (g1 + g2)
    perm = tf.argsort(tf.random.stateless_uniform([tf.shape(mel)[0]], s[2]))
    mix = lambda a, l: l * a + (1.0 - l) * tf.gather(a, perm)  # noqa: E731
    if weight is None:
        return mix(mel, lam[:, None, None]), mix(labels, lam[:, None])
    return mix(mel, lam[:, None, None]), mix(labels, lam[:, None]), mix(weight, lam)


def make_dataset(files: list[str], mel_shape: tuple[int, int], num_classes: int, batch_size: int, *,
                 training: bool, augment: AugmentConfig | None = None, shuffle_buffer: int = 2048,
                 seed: int = 1234, num_examples: int | None = None,
                 feature_cfg: FeatureConfig | None = None, deterministic: bool = False,
                 noisy: NoisyConfig | None = None, curated_examples: int | None = None,
                 noisy_on: tf.Variable | None = None) -> tf.data.Dataset:
    """(mel [batch, frames, mels], multi-hot labels [batch, classes]) batches from TFRecord files.

    `num_examples` (from the manifest) declares the number of batches, so Keras shows progress
    from the first epoch and knows where an epoch ends. `feature_cfg` (the examples' manifest's)
    gives the mel bands' frequencies, which augment.freq_warp needs. `deterministic`: training
    batches in the same order on every run with the same seed (evaluation's always are).
    `noisy`: how to train on the noisy clips the files hold (None: there are none; evaluation
    ignores it); with its batch_share > 0, `curated_examples` (the curated clips among the files)
    sets the epoch's length; with its warmup_epochs > 0, each epoch reads both sources while the
    boolean variable `noisy_on` is true and one pass over the curated clips once it is false
    (pipeline/training/warmup.py sets it per epoch)."""
    if not files:
        raise ValueError("make_dataset needs at least one TFRecord file")
    ordered = deterministic or not training
    # GZIP or plain shards, by name (the Beam job's --compression)
    ds = tf.data.Dataset.from_tensor_slices((list(files), [tfrecord.compression_type(f) for f in files]))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # training reads up to 8 files at once; evaluation reads them one after another (the files' order)
    ds = ds.interleave(lambda f, compression: tf.data.TFRecordDataset(f, compression_type=compression),
                       cycle_length=min(len(files), 8) if training else 1, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=ordered)
    noisy = noisy if training else None
    staged = noisy is not None and noisy.warmup_epochs > 0
    if staged and noisy_on is None:
        raise ValueError("noisy.warmup_epochs needs the variable that ends the warm-up (warmup.NoisyPhase.on)")
    records = ds
    if noisy is not None and noisy.batch_share > 0:
        if not curated_examples:
            raise ValueError("noisy.batch_share needs the number of curated training clips (none given)")
        ds = _sample_sources(records, noisy.batch_share, shuffle_buffer, seed)
        batches = epoch_batches(curated_examples, noisy.batch_share, batch_size)
        ds = ds.batch(batch_size).take(batches)      # an endless stream: take() makes its length known
    else:
        if training:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=False)
        if num_examples is not None and not staged:      # staged: the epochs differ in length
            ds = ds.apply(tf.data.experimental.assert_cardinality(-(-num_examples // batch_size)))
    if staged:
        curated = records.filter(lambda s: tf.logical_not(_is_noisy(s))).shuffle(
            shuffle_buffer, seed=seed + 2, reshuffle_each_iteration=True).batch(batch_size)
        # read as each batch is chosen; NoisyPhase changes it only between epochs
        phase = tf.data.Dataset.from_tensors(0).repeat().map(lambda _: tf.cast(tf.logical_not(noisy_on), tf.int64))
        ds = tf.data.Dataset.choose_from_datasets([ds, curated], phase)
    ds = ds.map(lambda s: _parse_batch(s, mel_shape, num_classes, noisy), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=ordered)
    if training and augment is not None and (augment.time_masks or augment.freq_masks or augment.mixup_alpha
                                             or augment.freq_warp or augment.time_shift
                                             or augment.resized_crop_min):
        ds = _augmented(ds, augment, seed, feature_cfg, ordered)
    return ds.prefetch(tf.data.AUTOTUNE)


def _sample_sources(records: tf.data.Dataset, share: float, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    """Endless records, each from the noisy ones with probability `share`, else from the curated
    ones; each source read, shuffled and repeated on its own (both must hold records)."""
    streams = [records.filter(lambda s: tf.logical_not(_is_noisy(s))), records.filter(_is_noisy)]
    streams = [s.shuffle(shuffle_buffer, seed=seed + k, reshuffle_each_iteration=True).repeat()
               for k, s in enumerate(streams)]
    return tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 - share, share], seed=seed,
                                                rerandomize_each_iteration=True)


def _augmented(ds: tf.data.Dataset, cfg: AugmentConfig, seed: int, feature_cfg: FeatureConfig | None,
               ordered: bool):
    warps = None
    if cfg.freq_warp:
        if feature_cfg is None:
            raise ValueError("augment.freq_warp needs the examples' feature config (the mel bands' frequencies)")
        warps = tf.constant(freq_warp_matrices(features.mel_centers(feature_cfg), cfg.freq_warp))

    def augment(step, batch):
        mel, labels, weight = batch if len(batch) == 3 else (*batch, None)
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        # one independent stream per augmentation (seeds that differ by a small offset could share draws)
        stream = lambda k: tf.random.experimental.stateless_fold_in(step_seed, k)  # noqa: E731
        if cfg.time_shift:
            mel = time_shift(mel, cfg.time_shift, stream(3))
        if cfg.resized_crop_min:
            mel = resized_crop(mel, cfg.resized_crop_min, stream(4))
        if warps is not None:
            mel = freq_warp(mel, warps, stream(0))
        if cfg.time_masks or cfg.freq_masks:
            mel = spec_augment(mel, cfg, stream(1))
        if cfg.mixup_alpha > 0:
            return mixup(mel, labels, cfg.mixup_alpha, stream(2), weight)
        return (mel, labels) if weight is None else (mel, labels, weight)

    # a counter gives each batch its own stateless seed: reproducible, no shared RNG state
    return ds.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)
