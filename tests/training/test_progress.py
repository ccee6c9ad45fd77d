"""pipeline/training/progress.py: the line per epoch a person reads, from a real (tiny) Keras fit."""
import logging

import keras
import numpy as np

from pipeline.training.progress import EpochProgress


def test_one_line_per_epoch_with_loss_the_monitored_metric_the_best_and_what_is_left(caplog):
    caplog.set_level(logging.INFO, logger="fatp.train")
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[EpochProgress(3, monitor="val_auc")])
    lines = [r.getMessage() for r in caplog.records if r.name == "fatp.train"]
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3 (1 steps): loss ") and "val_loss " in lines[0] and "val_auc " in lines[0]
    assert "(best " in lines[1] and "at epoch" in lines[1] and "s/epoch, ~" in lines[1] and "left at most" in lines[1]
    assert lines[2].startswith("epoch 3/3") and "left" not in lines[2]


def test_steps_are_counted_where_keras_does_not_know_an_epochs_length(caplog):
    """An input without a declared length (a filter) makes Keras learn the epoch's length only
    as it ends; the line still says how many batches the epoch trained."""
    import tensorflow as tf

    caplog.set_level(logging.INFO, logger="fatp.train")
    x = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8).filter(lambda a, b: True)
    assert ds.cardinality() == tf.data.UNKNOWN_CARDINALITY
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(ds, epochs=2, verbose=0, callbacks=[EpochProgress(2, monitor="loss")])
    lines = [r.getMessage() for r in caplog.records if r.name == "fatp.train"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2 (4 steps)", "epoch 2/2 (4 steps)"]
