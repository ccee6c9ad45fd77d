"""pipeline/training/dataset.py on the Beam job's real output (the session's `train_examples`): batch shapes,
labels against the CSV, order and coverage in eval and training mode, declared cardinality,
split_files' guards, and the frequency-warp / SpecAugment / mixup augmentations."""
import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from pipeline.training import dataset
from pipeline.features import feature_fn as features
from pipeline.data import job_output as output

SHAPE = (101, 40)
C = 80


def key(mel):
    """An example's identity inside a batch: the bytes of its mel."""
    return hashlib.sha1(np.ascontiguousarray(mel, np.float32).tobytes()).hexdigest()


def multi_hot(indices):
    y = np.zeros(C, np.float32)
    y[indices] = 1.0
    return y


def by_key(train_examples, splits=("train", "eval")):
    return {key(r.mel): r for s in splits for r in train_examples.records[s]}


def epoch(ds):
    """[(mel key, labels)] of one pass over ds, and the batch shapes seen."""
    out, shapes = [], []
    for mel, labels in ds:
        shapes.append((tuple(mel.shape), tuple(labels.shape), mel.dtype, labels.dtype))
        out += [(key(m), y) for m, y in zip(mel.numpy(), labels.numpy())]
    return out, shapes


def files_of(train_examples, split):
    return dataset.split_files(str(train_examples.out), split)


# ------------------------------------------------------------------------------ split_files

def test_split_files_lists_the_manifest(train_examples):
    m = train_examples.manifest
    total = 0
    for split in ("train", "eval"):
        files, n = files_of(train_examples, split)
        assert files == [str(train_examples.out / f["path"]) for f in m["splits"][split]["files"]]
        assert n == m["splits"][split]["records"] == len(train_examples.records[split])
        total += n
    assert total == 64


def test_split_files_refuses_unfinished_or_failed_output(train_examples, tmp_path):
    with pytest.raises(output.OutputError, match="no manifest.json"):
        dataset.split_files(str(tmp_path), "train")
    failed = dict(train_examples.manifest, status="failed", status_reason="too many dead letters")
    (tmp_path / "manifest.json").write_text(json.dumps(failed))
    with pytest.raises(output.OutputError, match="status 'failed'"):
        dataset.split_files(str(tmp_path), "train")


def test_split_files_missing_or_empty_split(train_examples, tmp_path):
    with pytest.raises(ValueError, match=r"split 'test' has no examples \(splits: \['eval', 'train'\]\)"):
        dataset.split_files(str(train_examples.out), "test")
    m = json.loads(json.dumps(train_examples.manifest))
    m["splits"]["eval"] = {"files": [], "records": 0}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="split 'eval' has no examples"):
        dataset.split_files(str(tmp_path), "eval")


# ------------------------------------------------------------------------------ make_dataset

def test_eval_batches_shapes_labels_order(train_examples):
    """training=False: [b, 101, 40] / [b, 80] float32 batches, the files' order, every example once,
    the same order on a second pass, multi-hot labels equal to the CSV's (joined by fname)."""
    files, n = files_of(train_examples, "eval")
    ds = dataset.make_dataset(files, SHAPE, C, 4, training=False, num_examples=n)
    first, shapes = epoch(ds)
    second, _ = epoch(ds)
    sizes = [s[0][0] for s in shapes]
    assert sizes == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert all(s[0][1:] == SHAPE and s[1] == (s[0][0], C) for s in shapes)
    assert all(s[2] == tf.float32 and s[3] == tf.float32 for s in shapes)
    records = train_examples.records["eval"]
    assert [k for k, _ in first] == [key(r.mel) for r in records]       # file order, each once
    assert [k for k, _ in second] == [k for k, _ in first]
    known = by_key(train_examples, ["eval"])
    for k, y in first:
        r = known[k]
        np.testing.assert_array_equal(y, multi_hot(train_examples.csv_labels[r.fname]))
        assert r.labels == train_examples.csv_labels[r.fname]


def test_eval_over_several_files_is_deterministic(train_examples):
    """Two files interleaved: deterministic order, all 64 examples exactly once."""
    files = files_of(train_examples, "train")[0] + files_of(train_examples, "eval")[0]
    ds = dataset.make_dataset(files, SHAPE, C, 8, training=False)
    a, _ = epoch(ds)
    b, _ = epoch(dataset.make_dataset(files, SHAPE, C, 8, training=False))
    assert [k for k, _ in a] == [k for k, _ in b]
    assert sorted(k for k, _ in a) == sorted(by_key(train_examples))


def test_training_shuffles_but_covers_each_example_once(train_examples):
    files, n = files_of(train_examples, "train")
    known = by_key(train_examples, ["train"])
    orders = []
    for seed in (1, 2):
        ds = dataset.make_dataset(files, SHAPE, C, 8, training=True, seed=seed, shuffle_buffer=64, num_examples=n)
        for _ in range(2):   # two epochs of the same dataset
            got, shapes = epoch(ds)
            assert sorted(k for k, _ in got) == sorted(known)          # a permutation: each once
            assert all(s[0][1:] == SHAPE for s in shapes)
            for k, y in got:                                             # labels travel with their mel
                np.testing.assert_array_equal(y, multi_hot(train_examples.csv_labels[known[k].fname]))
            orders.append([k for k, _ in got])
    file_order = [key(r.mel) for r in train_examples.records["train"]]
    assert orders[0] != file_order and orders[2] != file_order
    assert orders[0] != orders[2]                                       # seed 1 vs seed 2


def test_deterministic_training_input_repeats_its_batches(train_examples):
    """deterministic=True: two datasets built with the same seed hand out the same augmented
    (mixed-up) batches in the same order, epoch after epoch, and still shuffle."""
    files, n = files_of(train_examples, "train")
    aug = config.trainer_config("default").augment
    assert aug.mixup_alpha > 0
    runs = []
    for _ in range(2):
        ds = dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug, seed=3, shuffle_buffer=64,
                                  num_examples=n, deterministic=True)
        runs.append([(m.numpy(), y.numpy()) for _ in range(2) for m, y in ds])
    assert len(runs[0]) == len(runs[1]) == 2 * -(-n // 8)
    for (m0, y0), (m1, y1) in zip(*runs):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(y0, y1)
    half = len(runs[0]) // 2
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(runs[0][:half], runs[0][half:]))  # reshuffled


def test_num_examples_declares_cardinality(train_examples):
    files, n = files_of(train_examples, "train")
    assert n == 47
    declared = dataset.make_dataset(files, SHAPE, C, 8, training=True, num_examples=n)
    assert int(declared.cardinality()) == 6 == -(-n // 8)
    undeclared = dataset.make_dataset(files, SHAPE, C, 8, training=False)
    assert int(undeclared.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    assert sum(1 for _ in undeclared) == 6
    wrong = dataset.make_dataset(files, SHAPE, C, 8, training=False, num_examples=2 * n)   # asserted, not trusted
    with pytest.raises(tf.errors.OpError, match="expected to contain 12 elements"):
        for _ in wrong:
            pass


def test_no_files_is_an_error():
    with pytest.raises(ValueError, match="at least one TFRecord file"):
        dataset.make_dataset([], SHAPE, C, 8, training=False)


def test_augmentation_applies_to_training_batches_only(train_examples):
    """With masks configured, training batches hold all-zero frames and mel bins (normalized
    log-mels never do by themselves), eval batches are untouched; mixup gives soft labels."""
    files, n = files_of(train_examples, "train")
    aug = config.AugmentConfig(time_masks=1, time_mask_max_frames=30, freq_masks=1, freq_mask_max_bins=10)

    def zero_frames_and_bins(ds):
        rows = cols = 0
        for mel, _ in ds:
            z = mel.numpy() == 0
            rows += int(z.all(axis=2).sum())
            cols += int(z.all(axis=1).sum())
        return rows, cols

    rows, cols = zero_frames_and_bins(dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug))
    assert rows > 0 and cols > 0
    assert zero_frames_and_bins(dataset.make_dataset(files, SHAPE, C, 8, training=False, augment=aug)) == (0, 0)
    assert zero_frames_and_bins(dataset.make_dataset(files, SHAPE, C, 8, training=True)) == (0, 0)

    mix = config.AugmentConfig(mixup_alpha=0.4)
    labels = np.concatenate([y.numpy() for _, y in dataset.make_dataset(files, SHAPE, C, 8, training=True,
                                                                         augment=mix)])
    assert labels.shape == (n, C)
    assert labels.min() >= 0.0 and labels.max() <= 1.0
    assert ((labels > 0) & (labels < 1)).any()


def test_default_recipe_mixes_training_batches_and_the_seed_recipe_does_not(train_examples):
    """The default TrainerConfig trains on mixup batches (soft labels), chosen on speaker-held-out
    folds; the seed preset stays the Kaggle kernel's recipe, with plain 0/1 labels."""
    files, _ = files_of(train_examples, "train")

    def soft_labels(preset):
        aug = config.trainer_config(preset).augment
        y = np.concatenate([y.numpy() for _, y in dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug)])
        return int(((y > 0) & (y < 1)).sum())

    assert soft_labels("default") > 0
    assert soft_labels("seed") == 0


# ------------------------------------------------------------------------------ spec_augment

def random_mel(batch=16, frames=101, mels=40, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, frames, mels)).astype(np.float32) + 0.1


def test_spec_augment_zeroes_whole_stripes():
    x = random_mel()
    cfg = config.AugmentConfig(time_masks=2, time_mask_max_frames=20, freq_masks=2, freq_mask_max_bins=8)
    out = dataset.spec_augment(tf.constant(x), cfg, tf.constant([3, 5], tf.int64)).numpy()
    z = out == 0
    assert not (x == 0).any()
    np.testing.assert_array_equal(out[~z], x[~z])              # the rest is untouched
    total_rows = total_cols = 0
    for b in range(len(x)):
        rows, cols = z[b].all(axis=1), z[b].all(axis=0)     # all-zero frames, all-zero mel bins
        np.testing.assert_array_equal(z[b], rows[:, None] | cols[None, :])  # zeros only as whole stripes
        assert rows.sum() <= 2 * 20 and cols.sum() <= 2 * 8
        runs = lambda v: int(np.sum(np.diff(np.concatenate([[0], v.astype(int)])) == 1))  # noqa: E731
        assert runs(rows) <= 2 and runs(cols) <= 2
        total_rows += rows.sum()
        total_cols += cols.sum()
    assert total_rows > 0 and total_cols > 0


def test_spec_augment_reproducible_and_disabled():
    x = tf.constant(random_mel())
    cfg = config.AugmentConfig(time_masks=2, freq_masks=2)
    seed = tf.constant([7, 1], tf.int64)
    a = dataset.spec_augment(x, cfg, seed).numpy()
    np.testing.assert_array_equal(a, dataset.spec_augment(x, cfg, seed).numpy())
    assert not np.array_equal(a, dataset.spec_augment(x, cfg, tf.constant([7, 2], tf.int64)).numpy())
    off = config.AugmentConfig(time_masks=0, freq_masks=0)
    np.testing.assert_array_equal(dataset.spec_augment(x, off, seed).numpy(), x.numpy())


# ------------------------------------------------------------------------------ freq_warp

def test_freq_warp_moves_a_band_to_the_scaled_frequency():
    """A mel image with one lit band at frequency f comes out lit at the band nearest a*f, for the
    seed preset's own filterbank; every output band is a convex mix of at most two input bands."""
    centers = features.mel_centers(config.feature_config("seed"))
    mats = dataset.freq_warp_matrices(centers, 0.2, levels=5)          # a in 0.8, 0.9, 1.0, 1.1, 1.2
    assert mats.shape == (5, 128, 128)
    np.testing.assert_allclose(mats.sum(axis=1), 1.0, atol=1e-6)       # columns: convex weights
    assert ((mats > 0).sum(axis=1) <= 2).all()
    np.testing.assert_array_equal(mats[2], np.eye(128, dtype=np.float32))  # a = 1: identity
    for src in (10, 40, 90):
        x = np.zeros((1, 3, 128), np.float32)
        x[..., src] = 1.0
        for k, a in enumerate((0.8, 0.9, 1.0, 1.1, 1.2)):
            out = x[0] @ mats[k]
            peak = int(np.argmax(out[0]))
            assert abs(centers[peak] - a * centers[src]) <= np.max(np.diff(centers)[max(0, peak - 1):peak + 1])
            assert (peak > src) == (a > 1.0) and (peak < src) == (a < 1.0)


def test_freq_warp_picks_a_factor_per_example_reproducibly():
    centers = features.mel_centers(config.feature_config("seed"))
    mats = tf.constant(dataset.freq_warp_matrices(centers, 0.15))
    x = tf.constant(random_mel(batch=32, frames=20, mels=128))
    seed = tf.constant([5, 0], tf.int64)
    out = dataset.freq_warp(x, mats, seed).numpy()
    np.testing.assert_array_equal(out, dataset.freq_warp(x, mats, seed).numpy())
    assert not np.array_equal(out, dataset.freq_warp(x, mats, tf.constant([5, 1], tf.int64)).numpy())
    # each example is exactly one of the 21 warps of itself, and the batch uses several of them
    used = set()
    for b in range(32):
        errs = [np.max(np.abs(out[b] - x[b].numpy() @ m)) for m in mats.numpy()]
        assert min(errs) < 1e-5
        used.add(int(np.argmin(errs)))
    assert len(used) >= 5


def test_freq_warp_in_training_batches_needs_the_feature_config(train_examples):
    files, _ = files_of(train_examples, "train")
    aug = config.AugmentConfig(freq_warp=0.1)
    with pytest.raises(ValueError, match="feature config"):
        dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug)
    fcfg = config.from_text(output.require_complete(str(train_examples.out))["feature_config_text"])
    plain = {key(m): m for m, _ in dataset.make_dataset(files, SHAPE, C, 8, training=False)
             for m in m.numpy()}
    warped = [m for m, _ in dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug, feature_cfg=fcfg)
              for m in m.numpy()]
    assert len(warped) == len(plain)
    assert sum(key(m) in plain for m in warped) <= len(warped) // 2    # most examples were warped
    eval_batches = dataset.make_dataset(files, SHAPE, C, 8, training=False, augment=aug, feature_cfg=fcfg)
    assert all(key(m) in plain for mel, _ in eval_batches for m in mel.numpy())  # eval: untouched


def test_trainer_config_refuses_a_warp_of_half_or_more():
    with pytest.raises(ValueError, match="freq_warp"):
        config.trainer_config("default", "augment { freq_warp: 0.5 }")


# ------------------------------------------------------------------------------ time_shift

def test_time_shift_rolls_each_example_within_its_bound():
    """Each example comes out as itself rolled along its frames (nothing lost or invented) by an
    offset within +-max_share x frames; offsets differ between examples and repeat for a seed."""
    frames, share = 101, 0.2
    x = random_mel(batch=32, frames=frames, mels=6)
    seed = tf.constant([9, 4], tf.int64)
    out = dataset.time_shift(tf.constant(x), share, seed).numpy()
    np.testing.assert_array_equal(out, dataset.time_shift(tf.constant(x), share, seed).numpy())
    assert not np.array_equal(out, dataset.time_shift(tf.constant(x), share, tf.constant([9, 5], tf.int64)).numpy())
    offsets = []
    for b in range(len(x)):
        (k,) = [k for k in range(frames) if np.array_equal(out[b], np.roll(x[b], k, axis=0))]
        offsets.append(k if k <= frames // 2 else k - frames)
    assert max(abs(k) for k in offsets) <= int(share * frames)
    assert min(offsets) < 0 < max(offsets) and len(set(offsets)) >= 10
    np.testing.assert_array_equal(dataset.time_shift(tf.constant(x), 0.0, seed).numpy(), x)


def test_time_shift_applies_to_training_batches_only(train_examples):
    files, _ = files_of(train_examples, "train")
    aug = config.trainer_config("default", "augment { mixup_alpha: 0 time_shift: 0.5 }").augment
    plain = {key(m): m for m, _ in dataset.make_dataset(files, SHAPE, C, 8, training=False) for m in m.numpy()}
    shifted = [m for m, _ in dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug) for m in m.numpy()]
    assert len(shifted) == len(plain)
    assert sum(key(m) in plain for m in shifted) <= len(shifted) // 4       # most examples moved
    rolls = {key(np.roll(m, k, axis=0)) for m in plain.values() for k in range(SHAPE[0])}
    assert all(key(m) in rolls for m in shifted)                           # each one a roll of a real example
    eval_batches = dataset.make_dataset(files, SHAPE, C, 8, training=False, augment=aug)
    assert all(key(m) in plain for mel, _ in eval_batches for m in mel.numpy())


@pytest.mark.parametrize("value", [-0.1, 0.6])
def test_trainer_config_refuses_a_time_shift_outside_0_to_half(value):
    with pytest.raises(ValueError, match=r"augment.time_shift must be in \[0, 0.5\]"):
        config.trainer_config("default", f"augment {{ time_shift: {value} }}")


# ------------------------------------------------------------------------------ resized_crop

def test_resized_crop_stretches_a_random_span_of_each_example_to_the_full_length():
    """On frames whose value is their index, each output is a straight line: it starts at the crop's
    start, rises by span/frames per frame (a span of [min_share, 1] x frames, wholly inside the
    clip), the mel bands untouched; crops differ between examples and repeat for a seed; the
    spans' lengths cover the range."""
    frames, share = 100, 0.6
    ramp = np.broadcast_to(np.arange(frames, dtype=np.float32)[None, :, None], (64, frames, 3))
    seed = tf.constant([3, 1], tf.int64)
    out = dataset.resized_crop(tf.constant(ramp), share, seed).numpy()
    np.testing.assert_array_equal(out, dataset.resized_crop(tf.constant(ramp), share, seed).numpy())
    assert not np.array_equal(out, dataset.resized_crop(tf.constant(ramp), share, tf.constant([3, 2], tf.int64)).numpy())
    np.testing.assert_allclose(out, out[:, :, :1].repeat(3, axis=2))      # every band cropped alike
    first, step = out[:, 0, 0], np.diff(out[:, :, 0], axis=1)
    np.testing.assert_allclose(step, step[:, :1].repeat(frames - 1, axis=1), atol=1e-4)   # linear
    spans = step[:, 0] * (frames - 1) + 1                                   # frames the crop covered
    assert (first >= 0).all() and (first + spans - 1 <= frames - 1 + 1e-3).all()
    assert (spans >= share * frames - 1e-3).all() and (spans <= frames + 1e-3).all()
    assert spans.min() < 0.7 * frames and spans.max() > 0.9 * frames and len(set(np.round(first))) > 10


def test_resized_crop_applies_to_training_batches_only_and_is_refused_outside_0_to_1(train_examples):
    files, _ = files_of(train_examples, "train")
    aug = config.trainer_config("default", "augment { mixup_alpha: 0 resized_crop_min: 0.5 }").augment
    plain = {key(m): m for m, _ in dataset.make_dataset(files, SHAPE, C, 8, training=False) for m in m.numpy()}
    cropped = [m for m, _ in dataset.make_dataset(files, SHAPE, C, 8, training=True, augment=aug) for m in m.numpy()]
    assert len(cropped) == len(plain) and sum(key(m) in plain for m in cropped) <= len(cropped) // 4
    eval_batches = dataset.make_dataset(files, SHAPE, C, 8, training=False, augment=aug)
    assert all(key(m) in plain for mel, _ in eval_batches for m in mel.numpy())
    for value in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"augment.resized_crop_min must be in \[0, 1\)"):
            config.trainer_config("default", f"augment {{ resized_crop_min: {value} }}")


# ------------------------------------------------------------------------------ mixup

def test_mixup_is_a_convex_combination_with_a_permutation():
    """For every i, mel_i = lam_i x_i + (1 - lam_i) x_perm(i) and labels mix with the same lam_i,
    lam_i in [0, 1], perm a permutation: recovered from the outputs alone."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 7, 3)).astype(np.float32)
    y = (rng.random((12, 6)) < 0.3).astype(np.float32)
    y[:, 0] = 1.0                                                  # every row has a label
    mel, lab = dataset.mixup(tf.constant(x), tf.constant(y), 1.0, tf.constant([4, 2], tf.int64))
    mel, lab = mel.numpy(), lab.numpy()
    assert mel.shape == x.shape and lab.shape == y.shape
    assert lab.min() >= 0.0 and lab.max() <= 1.0
    partners, lams = [], []
    for i in range(len(x)):
        if np.max(np.abs(mel[i] - x[i])) < 1e-7:                  # paired with itself
            partners.append(i)
            lams.append(1.0)
            np.testing.assert_array_equal(lab[i], y[i])
            continue
        best = None
        for j in range(len(x)):
            if j == i:
                continue
            d = (x[i] - x[j]).ravel()
            lam = float(np.dot((mel[i] - x[j]).ravel(), d) / np.dot(d, d))
            resid = np.max(np.abs(mel[i] - (lam * x[i] + (1 - lam) * x[j])))
            if best is None or resid < best[0]:
                best = (resid, j, lam)
        resid, j, lam = best
        assert resid < 1e-5
        assert -1e-6 <= lam <= 1 + 1e-6
        np.testing.assert_allclose(lab[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5)
        np.testing.assert_allclose(lab[i].sum(), lam * y[i].sum() + (1 - lam) * y[j].sum(), atol=1e-5)
        partners.append(j)
        lams.append(lam)
    assert sorted(partners) == list(range(len(x)))                # a permutation
    assert any(0.05 < lam < 0.95 for lam in lams)                 # really mixed


def test_mixup_reproducible_for_a_seed():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(8, 5, 4)).astype(np.float32))
    y = tf.constant((rng.random((8, 10)) < 0.3).astype(np.float32))
    a = dataset.mixup(x, y, 0.4, tf.constant([9, 9], tf.int64))
    b = dataset.mixup(x, y, 0.4, tf.constant([9, 9], tf.int64))
    c = dataset.mixup(x, y, 0.4, tf.constant([9, 10], tf.int64))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
