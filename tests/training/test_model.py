"""pipeline/training/attention.py and pipeline/training/model.py: the Attention layer against a numpy version of the
seed kernel's formula, masking, serialization; the model's layers and sizes for the small and seed
presets, the cuDNN argument check, the losses against numpy, probabilities, optimizers.

No GPU here: whether Keras really picks the cuDNN kernel cannot be observed, so the tests check
the LSTM arguments cuDNN needs (cudnn_compatible, through Keras' own predicate) and that the check
rejects models that miss them."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from pipeline.training import model as model_lib
from pipeline.training.attention import Attention

RNG = np.random.default_rng(0)


def np_attention(x, w, b=0.0, mask=None):
    """The seed kernel: e = tanh(x.w + b), a = exp(e) / sum(exp(e)) (over unmasked steps), sum_t a_t x_t."""
    e = np.tanh(np.einsum("btd,d->bt", x.astype(np.float64), w) + b)
    a = np.exp(e)
    if mask is not None:
        a = a * mask
    total = a.sum(axis=1, keepdims=True)
    a = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
    return np.einsum("bt,btd->bd", a, x)


def attention_layer(step_dim, d, w=None, b=None):
    layer = Attention(step_dim=step_dim)
    layer.build((None, step_dim, d))
    w = RNG.normal(size=d).astype(np.float32) if w is None else w
    layer.w.assign(w)
    if layer.b is not None:
        b = RNG.normal(size=step_dim).astype(np.float32) if b is None else b
        layer.b.assign(b)
    return layer, w, (b if layer.b is not None else 0.0)


# ------------------------------------------------------------------------------ Attention

def test_attention_matches_the_seed_formula():
    x = RNG.normal(size=(3, 9, 5)).astype(np.float32)
    layer, w, b = attention_layer(9, 5)
    out = layer(tf.constant(x)).numpy()
    assert out.shape == (3, 5)
    assert layer.compute_output_shape((None, 9, 5)) == (None, 5)
    np.testing.assert_allclose(out, np_attention(x, w, b), rtol=0, atol=1e-5)
    assert [v.shape for v in layer.weights] == [(5,), (9,)]


def test_attention_masking():
    """Masked steps get zero weight: their values do not matter; a row masked entirely gives
    zeros, not NaN (nor a uniform average of padding)."""
    x = RNG.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
    layer, w, b = attention_layer(6, 4)
    out = layer(tf.constant(x), mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(out, np_attention(x, w, b, mask.astype(np.float64)), rtol=0, atol=1e-5)
    x2 = x.copy()
    x2[~mask] = 1e3                                   # change only the masked steps
    np.testing.assert_allclose(layer(tf.constant(x2), mask=tf.constant(mask)).numpy(), out, rtol=0, atol=1e-6)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[2], np.zeros(4))
    assert not np.allclose(out[0], layer(tf.constant(x)).numpy()[0])   # the mask did something


def test_attention_takes_the_mask_from_keras_masking():
    """Zero-padded steps behind keras.layers.Masking are ignored (step_dim=None: no per-step bias)."""
    x = RNG.normal(size=(1, 5, 4)).astype(np.float32)
    padded = np.concatenate([x, np.zeros((1, 3, 4), np.float32)], axis=1)
    inp = keras.Input((None, 4))
    m = keras.Model(inp, Attention(step_dim=None, name="att")(keras.layers.Masking(0.0)(inp)))
    np.testing.assert_allclose(m(padded).numpy(), m(x).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(m(x).numpy(), np_attention(x, m.get_layer("att").w.numpy()), rtol=0, atol=1e-5)


def test_attention_variable_length_without_step_dim():
    layer = Attention(step_dim=None, use_bias=True)
    assert layer.use_bias is False                    # a per-step bias needs a fixed step count
    inp = keras.Input((None, 3))
    m = keras.Model(inp, layer(inp))
    assert len(layer.weights) == 1 and layer.b is None
    for t in (5, 9):
        x = RNG.normal(size=(2, t, 3)).astype(np.float32)
        out = m(x).numpy()
        assert out.shape == (2, 3)
        np.testing.assert_allclose(out, np_attention(x, layer.w.numpy()), rtol=0, atol=1e-5)


def test_attention_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"Attention\(step_dim=10\) got 12 time steps"):
        Attention(step_dim=10)(keras.Input((12, 4)))
    with pytest.raises(ValueError, match=r"expects \[batch, time, features\]"):
        Attention(step_dim=None)(keras.Input((4,)))
    Attention(step_dim=10)(keras.Input((None, 4)))     # unknown length: accepted at build time


def test_attention_config_roundtrip():
    layer, _, _ = attention_layer(7, 3)
    cfg = layer.get_config()
    assert cfg["step_dim"] == 7 and cfg["use_bias"] is True
    clone = Attention.from_config(cfg)
    clone.build((None, 7, 3))
    clone.set_weights(layer.get_weights())
    x = RNG.normal(size=(2, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
    assert keras.saving.get_registered_name(Attention) == "fatp>Attention"
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(again, Attention) and again.step_dim == 7


def test_saved_keras_model_reloads_identically(tmp_path):
    """The real model (conv stem + BiLSTM + Attention) through a .keras file, loaded without
    custom_objects."""
    cfg = config.trainer_config("small")
    m = model_lib.build_model((20, 6), 5, cfg)
    x = RNG.normal(size=(3, 20, 6)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("attention"), Attention)
    assert loaded.get_layer("attention").step_dim == 5        # 20 frames through two 2x2 pools
    np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ build_model

def shapes(m):
    return {layer.name: tuple(layer.output.shape) for layer in m.layers}


def test_small_model_layers():
    """The small preset keeps the default's structure: two conv blocks of 8 channels, then the
    BiLSTM (8 units per direction) over 101 // 4 = 25 frames of 40 // 4 = 10 bands x 8."""
    cfg = config.trainer_config("small")
    m = model_lib.build_model((101, 40), 80, cfg)
    conv = {"conv_in": (None, 101, 40, 1)}
    for i, (frames, bands) in enumerate([(101, 40), (50, 20)]):
        conv.update({f"conv_{i}": (None, frames, bands, 8), f"conv_{i}_bn": (None, frames, bands, 8),
                     f"conv_{i}_relu": (None, frames, bands, 8), f"conv_{i}_pool": (None, frames // 2, bands // 2, 8)})
    assert shapes(m) == {"mel": (None, 101, 40), **conv, "conv_out": (None, 25, 80), "bilstm": (None, 25, 16),
                         "attention": (None, 16), "dropout_1": (None, 16), "dense": (None, 16), "elu": (None, 16),
                         "dropout_2": (None, 16), "logits": (None, 80)}
    assert m.get_layer("attention").step_dim == 25
    assert m(np.zeros((2, 101, 40), np.float32)).shape == (2, 80)


def test_band_mean_norm_cancels_a_gain_per_band(tmp_path):
    """With band_mean_norm, adding a constant per mel band (a microphone's response, in dB) to
    every frame leaves the logits unchanged; without it, it changes them. The layer survives a
    .keras round trip."""
    x = RNG.normal(size=(3, 20, 6)).astype(np.float32)
    tilt = np.linspace(-2.0, 3.0, 6, dtype=np.float32)[None, None, :]
    on = model_lib.build_model((20, 6), 5, config.trainer_config("small", "model { band_mean_norm: true }"))
    off = model_lib.build_model((20, 6), 5, config.trainer_config("small"))
    assert "band_mean_norm" in shapes(on) and "band_mean_norm" not in shapes(off)
    np.testing.assert_allclose(on(x + tilt).numpy(), on(x).numpy(), atol=1e-5)
    assert np.abs(off(x + tilt).numpy() - off(x).numpy()).max() > 1e-3
    path = str(tmp_path / "m.keras")
    on.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x).numpy(), on(x).numpy(), atol=1e-6)


def test_conv_stem_halves_frames_and_mels_per_block_and_survives_a_round_trip(tmp_path):
    """model { conv_blocks: 2 conv_channels: 8 }: two Conv-BN-ReLU-pool blocks, so the BiLSTM steps
    through 101 // 4 = 25 frames of 40 // 4 = 10 bands x 8 channels; attention's step bias follows; the
    LSTM keeps cuDNN's arguments; a .keras round trip (BatchNorm statistics included) reloads it."""
    cfg = config.trainer_config("small", "model { conv_blocks: 2 conv_channels: 8 }")
    m = model_lib.build_model((101, 40), 80, cfg)
    s = shapes(m)
    assert s["conv_0_pool"] == (None, 50, 20, 8) and s["conv_1_pool"] == (None, 25, 10, 8)
    assert s["conv_out"] == (None, 25, 80) and s["bilstm"] == (None, 25, 16)
    assert m.get_layer("attention").step_dim == 25
    assert model_lib.cudnn_compatible(m) == []
    x = RNG.normal(size=(3, 101, 40)).astype(np.float32)
    m.compile(optimizer="sgd", loss="mse")
    m.fit(x, np.zeros((3, 80), np.float32), epochs=1, verbose=0)     # moves the BatchNorm statistics
    path = str(tmp_path / "m.keras")
    m.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x).numpy(), m(x).numpy(), atol=1e-5)
    off = model_lib.build_model((101, 40), 80, config.trainer_config("small", "model { conv_blocks: 0 }"))
    assert "conv_0" not in shapes(off) and shapes(off)["bilstm"] == (None, 101, 16)
    for bad in ("conv_blocks: -1", "conv_blocks: 1 conv_channels: 0"):
        with pytest.raises(ValueError, match="conv_blocks"):
            config.trainer_config("small", f"model {{ {bad} }}")


def lstm_params(units, inputs):
    return 4 * (units * (inputs + units) + units)


def test_seed_model_layers_and_size():
    """The seed recipe on the seed features (636 x 128): BiLSTM 256 per direction -> 512, attention
    with a bias per step, Dense 400, 80 logits; the parameter count is exactly the sum of its parts."""
    cfg = config.trainer_config("seed")
    m = model_lib.build_model((636, 128), 80, cfg)
    s = shapes(m)
    assert s["bilstm"] == (None, 636, 512)
    assert s["attention"] == (None, 512) and s["dense"] == (None, 400) and s["logits"] == (None, 80)
    assert m.get_layer("dropout_1").rate == pytest.approx(0.2)
    assert cfg.model.head == model_lib.SOFTMAX
    expected = 2 * lstm_params(256, 128) + (512 + 636) + (512 * 400 + 400) + (400 * 80 + 80)
    assert m.count_params() == expected == 1_026_908


def test_attention_step_bias_off_gives_variable_length_model():
    cfg = config.trainer_config("small", "model { attention_step_bias: false }")
    m = model_lib.build_model((101, 40), 80, cfg)
    assert m.get_layer("attention").step_dim is None and m.get_layer("attention").b is None


# ------------------------------------------------------------------------------ cuDNN arguments

@pytest.mark.parametrize("preset", ["small", "seed", "default"])
def test_presets_are_cudnn_compatible(preset):
    m = model_lib.build_model((50, 16), 80, config.trainer_config(preset))
    assert model_lib.cudnn_compatible(m) == []


def tiny_lstm_model(**lstm_kwargs):
    inp = keras.Input((10, 4))
    out = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True, **lstm_kwargs), name="bi")(inp)
    return keras.Model(inp, Attention(step_dim=10)(out))


@pytest.mark.parametrize("kwargs, expect", [
    ({"recurrent_dropout": 0.1}, "recurrent_dropout=0.1 disables cuDNN"),
    ({"activation": "relu"}, "outside cuDNN's"),
    ({"unroll": True}, "outside cuDNN's"),
    ({"use_cudnn": False}, "use_cudnn=False"),
])
def test_cudnn_check_rejects(kwargs, expect):
    problems = model_lib.cudnn_compatible(tiny_lstm_model(**kwargs))
    assert len(problems) == 2                     # forward and backward layer
    assert all(expect in p for p in problems), problems


def test_cudnn_check_sees_a_plain_lstm():
    inp = keras.Input((10, 4))
    m = keras.Model(inp, keras.layers.LSTM(3, recurrent_activation="tanh", name="plain")(inp))
    problems = model_lib.cudnn_compatible(m)
    assert len(problems) == 1 and problems[0].startswith("plain:")
    assert model_lib.cudnn_compatible(tiny_lstm_model()) == []


# ------------------------------------------------------------------------------ losses

def labels_and_logits(seed=3, n=6, c=80):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.05).astype(np.float32)
    y[0] = 0.0                                    # a clip without labels
    y[1, :3] = 1.0
    z = (3 * rng.normal(size=(n, c))).astype(np.float32)
    return y, z


def test_sigmoid_loss_is_bce_from_logits():
    y, z = labels_and_logits()
    loss = float(model_lib.loss_fn(config.trainer_config("small"))(tf.constant(y), tf.constant(z)))
    zd = z.astype(np.float64)
    manual = np.mean(np.maximum(zd, 0) - zd * y + np.log1p(np.exp(-np.abs(zd))))
    assert loss == pytest.approx(manual, rel=1e-5)


def np_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def test_softmax_loss_is_cce_on_normalized_labels():
    y, z = labels_and_logits()
    loss = float(model_lib.loss_fn(config.trainer_config("seed"))(tf.constant(y), tf.constant(z)))
    sums = y.sum(axis=1, keepdims=True)
    yn = np.divide(y, sums, out=np.zeros_like(y), where=sums > 0)
    manual = np.mean(-(yn * np_log_softmax(z)).sum(axis=1))   # the unlabelled row contributes 0
    assert loss == pytest.approx(manual, rel=1e-5)


def test_softmax_loss_finite_for_extreme_logits():
    """Logit 1e4 on the wrong label: the true loss is 1e4. Cross-entropy on probabilities gives inf
    (the right label's probability underflows to 0); the loss from logits stays exact."""
    y = np.zeros((2, 80), np.float32)
    y[0, 1] = 1.0
    y[1, [2, 3]] = 1.0
    z = np.zeros((2, 80), np.float32)
    z[0, 0] = 1e4
    z[1, 2] = -1e4
    p = tf.nn.softmax(z).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        naive = -np.where(y > 0, y / y.sum(1, keepdims=True) * np.log(p), 0.0).sum(axis=1)
    assert np.isinf(naive).all()
    loss = float(model_lib.loss_fn(config.trainer_config("seed"))(tf.constant(y), tf.constant(z)))
    manual = np.mean(-(y / y.sum(1, keepdims=True) * np_log_softmax(z)).sum(axis=1))
    assert np.isfinite(loss)
    assert loss == pytest.approx(manual, rel=1e-4)
    assert loss == pytest.approx((1e4 + (0.5 * 1e4 + np.log(79))) / 2, rel=1e-4)
    bce = float(model_lib.loss_fn(config.trainer_config("small"))(tf.constant(y), tf.constant(z)))
    assert np.isfinite(bce)


def test_probabilities_per_head():
    _, z = labels_and_logits()
    soft = model_lib.probabilities(tf.constant(z), config.trainer_config("seed")).numpy()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(soft, np.exp(np_log_softmax(z)), rtol=1e-5, atol=1e-7)
    sig = model_lib.probabilities(tf.constant(z), config.trainer_config("small")).numpy()
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-z.astype(np.float64))), rtol=1e-5, atol=1e-7)
    assert (sig > 0).all() and (sig < 1).all()
    assert not np.allclose(sig.sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.argsort(soft, axis=1), np.argsort(sig, axis=1))  # same ranking


# ------------------------------------------------------------------------------ optimizers

def test_seed_optimizer_recipe():
    opt = model_lib.optimizer(config.trainer_config("seed"))
    c = opt.get_config()
    assert isinstance(opt, keras.optimizers.Adam)
    assert c["learning_rate"] == pytest.approx(0.005)
    assert c["beta_1"] == pytest.approx(0.1) and c["beta_2"] == pytest.approx(0.001)
    assert c["amsgrad"] is True
    assert c["clipnorm"] is None


def test_default_optimizer_is_the_seed_adam():
    """Chosen by measured lwlrap (bench/README.md): the seed's Adam, no clipping."""
    c = model_lib.optimizer(config.trainer_config("default")).get_config()
    assert c["learning_rate"] == pytest.approx(0.005) and c["amsgrad"] is True
    assert c["beta_1"] == pytest.approx(0.1) and c["beta_2"] == pytest.approx(0.001)
    assert c["clipnorm"] is None


def test_clipnorm_and_adam_parameters_are_configurable():
    cfg = config.trainer_config("default", "optimizer { learning_rate: 0.001 beta_1: 0.9 beta_2: 0.999 "
                                           "amsgrad: false clipnorm: 1.0 }")
    c = model_lib.optimizer(cfg).get_config()
    assert c["learning_rate"] == pytest.approx(0.001)
    assert c["beta_1"] == pytest.approx(0.9) and c["beta_2"] == pytest.approx(0.999)
    assert c["amsgrad"] is False
    assert c["clipnorm"] == pytest.approx(1.0)


def test_cosine_schedule_decays_over_the_training_steps():
    cfg = config.trainer_config("default", "optimizer { schedule: COSINE learning_rate: 0.01 }")
    with pytest.raises(ValueError, match="needs the number of training steps"):
        model_lib.optimizer(cfg)
    schedule = model_lib.optimizer(cfg, total_steps=100)._learning_rate
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(50)) == pytest.approx(0.005)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name, cls, extra", [
    ("adamw", keras.optimizers.AdamW, {"weight_decay": 0.01}),
    ("sgd", keras.optimizers.SGD, {"momentum": 0.9}),
    ("rmsprop", keras.optimizers.RMSprop, {}),
])
def test_other_optimizers(name, cls, extra):
    cfg = config.trainer_config("default", f'optimizer {{ name: "{name}" learning_rate: 0.02 weight_decay: 0.01 '
                                           f'clipnorm: 1.0 }}')
    opt = model_lib.optimizer(cfg)
    c = opt.get_config()
    assert type(opt) is cls
    assert c["learning_rate"] == pytest.approx(0.02)
    assert c["clipnorm"] == pytest.approx(1.0)
    for k, v in extra.items():
        assert c[k] == pytest.approx(v)
