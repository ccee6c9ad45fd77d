"""Training on FAT2019's noisy clips (issue 22 §3, NoisyConfig): each noisy clip's loss weight, the
share of each batch drawn from them and what an epoch is then, their smoothed labels, a warm-up on
both sources before fine-tuning on curated clips (one and two workers, resumed); evaluation sees
curated clips only.
Real Examples: the demo layout with a train_noisy subset through the feature job (small preset)."""
from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from pipeline.data import job_output as output
from pipeline.training import dataset
from pipeline.training import train
from tests.conftest import MEL_SHAPE, _read_examples

pytestmark = pytest.mark.slow

CURATED, NOISY = 32, 48


def _key(mel) -> str:
    return hashlib.sha1(np.asarray(mel, np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def noisy_examples(tmp_path_factory):
    """(examples dir, manifest, {mel digest: source} of the train split)."""
    from pipeline.beam import cli
    from pipeline.data import demo_data

    root = tmp_path_factory.mktemp("noisy_examples")
    demo_data.generate(str(root / "data"), train=CURATED, test=2, seed=5, broken=False, noisy=NOISY)
    out = root / "examples"
    assert cli.run(["--data_dir", str(root / "data"), "--output_dir", str(out), "--preset", "small",
                    "--eval_ratio", "0.25", "--log_level", "WARNING"]) == 0
    manifest = output.require_complete(str(out))
    sources = {_key(r.mel): r.source for r in _read_examples(str(out), manifest)["train"]}
    return out, manifest, sources


def _job(examples, cfg_text: str, tmp_path) -> train.TrainJob:
    return train.job_from_examples(str(examples), config.trainer_config("small", cfg_text), str(tmp_path / "w"), None)


def test_the_job_knows_each_source_of_the_train_split(noisy_examples, tmp_path):
    out, manifest, sources = noisy_examples
    job = _job(out, "", tmp_path)
    counts = {s: list(sources.values()).count(s) for s in ("curated", "noisy")}
    assert counts["noisy"] == NOISY and 0 < counts["curated"] < CURATED      # noisy clips all train, curated split
    assert job.train_sources == counts
    assert job.train_examples == len(sources) and job.train_batches(8) == -(-len(sources) // 8)  # one pass over all
    shared = _job(out, "noisy { batch_share: 0.5 }", tmp_path)
    assert shared.train_batches(8) == int(np.ceil(counts["curated"] / (8 * 0.5)))
    # files other than the manifest's train split: its per-split counts do not describe them
    with pytest.raises(ValueError, match="train on its whole train split"):
        train.job_from_examples(str(out), config.trainer_config("small"), str(tmp_path / "w"), None,
                                files=(shared.train_files + shared.eval_files, shared.eval_files))


def test_one_source_examples_have_no_source_counts(train_examples, tmp_path):
    job = _job(train_examples.out, "noisy { batch_share: 0.5 loss_weight: 0.3 }", tmp_path)
    assert job.train_sources is None and job.noisy_clips == 0
    assert train._noisy_input(job, 8) is None                           # the input is built as without them
    assert job.train_batches(8) == -(-job.train_examples // 8)            # the noisy settings change nothing


def _batches(job: train.TrainJob, epochs: int, augment=None):
    ds = dataset.make_dataset(job.train_files, job.mel_shape, len(job.labels), 8, training=True, augment=augment,
                              shuffle_buffer=64, seed=3, num_examples=job.train_examples, noisy=job.cfg.noisy,
                              curated_examples=job.train_sources["curated"])
    return [[tuple(t.numpy() for t in b) for b in ds] for _ in range(epochs)]


def test_a_batch_share_draws_that_share_of_noisy_clips_and_sets_the_epoch(noisy_examples, tmp_path):
    out, _, sources = noisy_examples
    job = _job(out, "noisy { batch_share: 0.25 }", tmp_path)
    epochs = _batches(job, 6)
    assert {len(e) for e in epochs} == {job.train_batches(8)}
    assert all(len(b) == 2 for e in epochs for b in e)                   # weight 1: no weights
    drawn = [sources[_key(m)] for e in epochs for b in e for m in b[0]]
    share = drawn.count("noisy") / len(drawn)
    # 6 epochs x ~5 batches x 8: a binomial share of 0.25 lies within +-0.12 (> 4 standard deviations)
    assert abs(share - 0.25) < 0.12, share
    # each epoch draws about every curated clip (once on average): most of them are seen
    curated_seen = {_key(m) for e in epochs[:1] for b in e for m in b[0] if sources[_key(m)] == "curated"}
    assert len(curated_seen) > 0.5 * job.train_sources["curated"]
    without = _job(out, "", tmp_path)      # share 0: both sources shuffled together, one pass an epoch
    plain = [sources[_key(m)] for e in _batches(without, 1) for b in e for m in b[0]]
    assert sorted(plain) == sorted(sources.values())


def test_noisy_clips_carry_their_loss_weight_and_curated_ones_weight_1(noisy_examples, tmp_path):
    out, _, sources = noisy_examples
    job = _job(out, "noisy { loss_weight: 0.3 }", tmp_path)
    (epoch,) = _batches(job, 1)
    seen = {}
    for mel, _, weight in epoch:
        for m, w in zip(mel, weight):
            seen[sources[_key(m)]] = seen.get(sources[_key(m)], set()) | {round(float(w), 6)}
    assert seen == {"curated": {1.0}, "noisy": {0.3}}
    # evaluation: the eval split (curated only), no weights whatever the config
    ev = dataset.make_dataset(job.eval_files, job.mel_shape, len(job.labels), 8, training=False,
                              noisy=job.cfg.noisy, curated_examples=job.train_sources["curated"])
    assert all(len(b) == 2 for b in ev)


def test_noisy_clips_labels_are_smoothed_and_curated_ones_kept(noisy_examples, tmp_path):
    """label_smoothing 0.2: a noisy clip's labels read 0.9 where it has the label and 0.1 where not;
    a curated clip's stay 0/1; without a loss weight other than 1 the batches carry no weights."""
    out, _, sources = noisy_examples
    plain = {_key(m): y for e in _batches(_job(out, "", tmp_path), 1) for mel, labels in e
             for m, y in zip(mel, labels)}
    job = _job(out, "noisy { label_smoothing: 0.2 }", tmp_path)
    (epoch,) = _batches(job, 1)
    assert all(len(b) == 2 for b in epoch)
    for mel, labels in epoch:
        for m, y in zip(mel, labels):
            want = plain[_key(m)] * 0.8 + 0.1 if sources[_key(m)] == "noisy" else plain[_key(m)]
            np.testing.assert_allclose(y, want, atol=1e-6)
    assert any(sources[_key(m)] == "noisy" for mel, _ in epoch for m in mel)
    weighted = _job(out, "noisy { label_smoothing: 0.2 loss_weight: 0.5 }", tmp_path)
    for mel, labels, weight in _batches(weighted, 1)[0]:
        for m, y, w in zip(mel, labels, weight):
            assert (sources[_key(m)] == "noisy") == (float(w) == 0.5) == bool(np.any((y > 0) & (y < 1)))


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_a_warm_up_reads_both_sources_then_one_pass_over_the_curated_clips(noisy_examples, tmp_path, share):
    """NoisyPhase.on decides each epoch's input when its iterator starts: both sources (as the
    share says) while true, every curated clip exactly once and no noisy one once false, and
    back; the epochs have no declared length (they differ)."""
    from pipeline.training import warmup

    out, _, sources = noisy_examples
    job = _job(out, f"epochs: 4 noisy {{ warmup_epochs: 2 batch_share: {share} loss_weight: 0.5 }}", tmp_path)
    phase = warmup.NoisyPhase(job.cfg.noisy.warmup_epochs)
    ds = dataset.make_dataset(job.train_files, job.mel_shape, len(job.labels), 8, training=True, shuffle_buffer=64,
                              seed=3, num_examples=job.train_examples, noisy=job.cfg.noisy,
                              curated_examples=job.train_sources["curated"], noisy_on=phase.on)
    assert ds.cardinality() == tf.data.UNKNOWN_CARDINALITY
    curated = sorted(k for k, s in sources.items() if s == "curated")
    drawn = []
    for epoch in range(4):
        phase.on_epoch_begin(epoch)
        batches = [tuple(t.numpy() for t in b) for b in ds]
        drawn.append([_key(m) for b in batches for m in b[0]])
        assert all(len(b) == 3 for b in batches)                          # weights in both phases
        if epoch >= 2:
            assert sorted(drawn[-1]) == curated and len(batches) == -(-len(curated) // 8)
            assert all(set(b[2]) == {1.0} for b in batches)
    for warm in drawn[:2]:
        assert any(sources[k] == "noisy" for k in warm)
        assert len(warm) == (job.train_batches(8) * 8 if share else len(sources))
    phase.on_epoch_begin(0)                                               # a rerun from epoch 0 warms up again
    assert any(sources[_key(m)] == "noisy" for b in ds for m in b[0])
    with pytest.raises(ValueError, match="needs the variable that ends the warm-up"):
        dataset.make_dataset(job.train_files, job.mel_shape, len(job.labels), 8, training=True, noisy=job.cfg.noisy,
                             curated_examples=job.train_sources["curated"])


def test_a_warm_up_sets_the_schedules_steps(noisy_examples, tmp_path):
    out, _, sources = noisy_examples
    curated = list(sources.values()).count("curated")
    job = _job(out, "epochs: 10 noisy { warmup_epochs: 3 batch_share: 0.5 }", tmp_path)
    assert job.train_steps(8) == 3 * int(np.ceil(curated / 4)) + 7 * -(-curated // 8)
    plain = _job(out, "epochs: 10 noisy { warmup_epochs: 3 }", tmp_path)
    assert plain.train_steps(8) == 3 * -(-len(sources) // 8) + 7 * -(-curated // 8)
    assert _job(out, "epochs: 10", tmp_path).train_steps(8) == 10 * -(-len(sources) // 8)


def test_mixup_mixes_the_loss_weights_like_the_labels():
    """Each example's mel is a constant c and its weight is c too: after mixup, every example's
    weight must equal its mixed mel's constant (the same lambda and partner)."""
    c = tf.constant([1.0, 0.3, 0.3, 1.0, 0.3, 1.0, 0.3, 0.3])
    mel = tf.ones([8, 5, 4]) * c[:, None, None]
    labels = tf.one_hot(tf.range(8) % 3, 3)
    m, lab, w = dataset.mixup(mel, labels, 0.4, tf.constant([4, 2], tf.int64), weight=c)
    np.testing.assert_allclose(w.numpy(), m.numpy()[:, 0, 0], rtol=1e-6)
    assert np.ptp(w.numpy()) > 0 and not np.allclose(w.numpy(), c.numpy())   # mixed, and not all alike
    m2, lab2 = dataset.mixup(mel, labels, 0.4, tf.constant([4, 2], tf.int64))
    np.testing.assert_array_equal(m2.numpy(), m.numpy())                  # the weight changes no draw
    np.testing.assert_array_equal(lab2.numpy(), lab.numpy())


def test_train_on_noisy_examples_with_a_share_and_weight(noisy_examples, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    out, _, _ = noisy_examples
    job = _job(out, "epochs: 2 noisy { batch_share: 0.5 loss_weight: 0.5 label_smoothing: 0.2 } "
                    "augment { mixup_alpha: 0.4 time_shift: 0.25 }", tmp_path)
    with caplog.at_level("INFO", logger="fatp.train"):
        res = train.train(job)
    assert res["epochs_run"] == 2 and np.isfinite(res["history"]["loss"]).all()
    assert (f"noisy clips: noisy loss weight 0.5, 50% of each batch noisy, {job.train_batches(8)} batches an epoch, "
            "their labels smoothed by 0.2") in caplog.text
    assert 0 <= res["eval_lwlrap"] <= 1


def test_train_warms_up_on_both_sources_then_fine_tunes_on_curated(noisy_examples, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    out, _, _ = noisy_examples
    job = _job(out, "epochs: 3 noisy { warmup_epochs: 1 batch_share: 0.25 label_smoothing: 0.1 } "
                    "optimizer { schedule: COSINE }", tmp_path)
    with caplog.at_level("INFO", logger="fatp.train"), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        res = train.train(job)
    assert not [w for w in warned if "ran out of data" in str(w.message)]   # a false alarm: not shown
    assert res["epochs_run"] == 3 and np.isfinite(res["history"]["loss"]).all()
    # one warm-up epoch of the share's length, then two passes over the curated clips (Keras took
    # the first epoch's length as every epoch's: the shorter ones end when their input does)
    fine = -(-job.train_sources["curated"] // 8)
    assert fine < job.train_batches(8)
    assert f"epoch 1/3 ({job.train_batches(8)} steps)" in caplog.text
    assert f"epoch 2/3 ({fine} steps)" in caplog.text and f"epoch 3/3 ({fine} steps)" in caplog.text
    assert "curated clips only after epoch 1, one pass an epoch" in caplog.text
    assert "epoch 1: warm-up on curated + noisy clips until epoch 1" in caplog.text
    assert "epoch 2: fine-tuning on curated clips only" in caplog.text
    assert caplog.text.count("fine-tuning on curated clips only") == 1


@pytest.mark.parametrize("text,message", [
    ("noisy { loss_weight: 0 }", "noisy.loss_weight must be > 0"),
    ("noisy { batch_share: 1 }", r"noisy.batch_share must be in \[0, 1\)"),
    ("noisy { batch_share: -0.1 }", r"noisy.batch_share must be in \[0, 1\)"),
    ("noisy { label_smoothing: 1 }", r"noisy.label_smoothing must be in \[0, 1\)"),
    ("epochs: 5 noisy { warmup_epochs: 5 }", r"noisy.warmup_epochs must be in \[0, epochs\)"),
])
def test_bad_noisy_settings_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        config.trainer_config("default", text)


def test_a_share_without_curated_clips_counted_is_refused(noisy_examples):
    out, _, _ = noisy_examples
    files = [os.path.join(out, f["path"]) for f in output.require_complete(str(out))["splits"]["train"]["files"]]
    with pytest.raises(ValueError, match="needs the number of curated training clips"):
        dataset.make_dataset(files, MEL_SHAPE, 80, 8, training=True,
                             noisy=config.trainer_config("small", "noisy { batch_share: 0.5 }").noisy)



def test_the_tfx_run_fn_trains_with_the_sources_of_its_split_files(noisy_examples, tmp_path, monkeypatch, caplog):
    """The TFX Trainer's run_fn globs the split's files itself: they are the manifest's train split,
    so the per-source counts apply (and the share sets the epoch)."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    monkeypatch.delenv("TF_CONFIG", raising=False)
    out, _, sources = noisy_examples
    fn_args = FnArgs(train_files=[str(out / "train" / "*")], eval_files=[str(out / "eval" / "*")],
                     serving_model_dir=str(tmp_path / "model" / "Format-Serving"), model_run_dir=str(tmp_path / "run"),
                     custom_config={"trainer_preset": "small", "trainer_config": "epochs: 1 noisy { batch_share: 0.5 }",
                                    train.EXAMPLES_URI: str(out)})
    with caplog.at_level("INFO", logger="fatp.train"):
        train.run_fn(fn_args)
    curated = list(sources.values()).count("curated")
    assert (f"training on {curated} curated + {NOISY} noisy clips: noisy loss weight 1, 50% of each batch noisy, "
            f"{int(np.ceil(curated / 4))} batches an epoch") in caplog.text


def test_a_run_resumed_after_the_warm_up_goes_on_fine_tuning(noisy_examples, tmp_path, monkeypatch, caplog):
    """A run that fails in its third epoch (after a 2-epoch warm-up) leaves a backup at epoch 2; the
    same job run again resumes there, in the fine-tuning phase, and never warms up again."""
    from pipeline.training import warmup

    monkeypatch.delenv("TF_CONFIG", raising=False)
    out, _, sources = noisy_examples
    job = _job(out, "epochs: 4 backup_every_steps: 0 early_stopping_patience: 0 "
                    "noisy { warmup_epochs: 2 batch_share: 0.25 }", tmp_path)
    begin = warmup.NoisyPhase.on_epoch_begin

    def fail_in_epoch_3(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("killed in epoch 3")
        begin(self, epoch, logs)

    monkeypatch.setattr(warmup.NoisyPhase, "on_epoch_begin", fail_in_epoch_3)
    with pytest.raises(RuntimeError, match="killed in epoch 3"):
        train.train(job)
    monkeypatch.setattr(warmup.NoisyPhase, "on_epoch_begin", begin)
    caplog.clear()
    with caplog.at_level("INFO", logger="fatp.train"):
        res = train.train(job)
    assert res["resumed"]["epoch"] == 2 and res["epochs_run"] == 2
    fine = -(-list(sources.values()).count("curated") // 8)
    assert "epoch 3: fine-tuning on curated clips only" in caplog.text and "warm-up on" not in caplog.text
    assert f"epoch 3/4 ({fine} steps)" in caplog.text and f"epoch 4/4 ({fine} steps)" in caplog.text


def test_a_warm_up_under_two_workers(noisy_examples, tmp_path):
    """MultiWorkerMirroredStrategy shards the input by rewriting its graph: the phase variable the
    input reads must survive that, and both workers must switch together (the same weights)."""
    from types import SimpleNamespace

    from tests.training.test_train import WORKER, result_line, run_two_workers

    out, _, sources = noisy_examples
    script = WORKER.replace('config.trainer_config("small", "epochs: 1")',
                            'config.trainer_config("small", "epochs: 3 noisy { warmup_epochs: 1 loss_weight: 0.5 }")')
    assert script != WORKER
    outcome = run_two_workers(SimpleNamespace(out=out), tmp_path, keras_patch=True, script=script)
    for rc, log in outcome:
        assert rc == 0, log[-4000:]
        assert "epoch 2: fine-tuning on curated clips only" in log
    results = [result_line(log) for _, log in outcome]
    assert {r["replicas"] for r in results} == {2} and {r["epochs_run"] for r in results} == {3}
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    # each worker trains on half of each global batch of 16: the curated pass is ceil(curated / 16) steps
    curated = list(sources.values()).count("curated")
    assert all(f"epoch 3/3 ({-(-curated // 16)} steps)" in log for _, log in outcome), outcome[0][1][-3000:]
