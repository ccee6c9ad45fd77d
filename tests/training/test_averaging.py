"""pipeline/training/averaging.py: the optimizer's moving averages swapped into a real Keras model and the
raw weights restored bit for bit; train() end to end with optimizer.ema_momentum is in test_train."""
import keras
import numpy as np

from pipeline.training import averaging


def _fitted(use_ema: bool):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=use_ema, ema_momentum=0.9), loss="mse")
    rng = np.random.default_rng(0)
    for _ in range(16):      # batch by batch: fit() would end by writing the averages into the model
        model.train_on_batch(rng.normal(size=(8, 6)), rng.normal(size=(8, 2)))
    return model


def test_averaged_weights_swaps_in_the_averages_and_restores_the_raw_weights_exactly():
    model = _fitted(use_ema=True)
    raw = [w.copy() for w in model.get_weights()]
    averages = [a.numpy() for a in model.optimizer._model_variables_moving_average]
    with averaging.averaged_weights(model):
        inside = model.get_weights()
    assert len(averages) == len(raw) == 4
    for got, average, before in zip(inside, averages, raw):
        np.testing.assert_array_equal(got, average)
        assert np.abs(average - before).max() > 1e-4      # the averages really differ from the raw weights
    for after, before in zip(model.get_weights(), raw):
        np.testing.assert_array_equal(after, before)     # bit for bit, unlike an add/subtract swap


def test_averaged_weights_is_a_no_op_without_averages():
    model = _fitted(use_ema=False)
    raw = model.get_weights()
    with averaging.averaged_weights(model):
        for got, before in zip(model.get_weights(), raw):
            np.testing.assert_array_equal(got, before)
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])   # no optimizer at all
    with averaging.averaged_weights(fresh):
        pass
