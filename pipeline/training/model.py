"""The Keras Functional model: (conv stem ->) BiLSTM -> attention over time -> Dense + ELU -> label
logits. The default puts two Conv-BatchNorm-ReLU-pool blocks before the LSTM (ModelConfig.conv_blocks;
measured in bench/README.md); the seed preset's LSTM reads the mel frames directly.

The LSTM is `keras.layers.LSTM` with the arguments under which Keras runs it on cuDNN on a GPU
(tanh, sigmoid, no recurrent dropout, unroll False, use_bias True; masks must be right-padded);
`cudnn_compatible()` checks them and the tests assert it. The model outputs logits: losses are
computed from logits (numerically stable), and `probabilities()` turns them into the head's
scores for evaluation and serving.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from pipeline.training.attention import Attention
from pipeline.config import TrainerConfig
from pipeline.protos import trainer_config_pb2

SOFTMAX = trainer_config_pb2.ModelConfig.SOFTMAX


@keras.saving.register_keras_serializable(package="fatp")
class BandMeanNorm(keras.layers.Layer):
    """[batch, frames, mels] minus each example's per-band mean over frames (ModelConfig.band_mean_norm)."""

    def call(self, x):
        return x - keras.ops.mean(x, axis=1, keepdims=True)


def build_model(mel_shape: tuple[int, int], num_classes: int, cfg: TrainerConfig,
                name: str = "bilstm_attention") -> keras.Model:
    frames, n_mels = mel_shape
    m = cfg.model
    inputs = keras.Input(shape=(frames, n_mels), name="mel")
    x = BandMeanNorm(name="band_mean_norm")(inputs) if m.band_mean_norm else inputs
    x, frames = conv_stem(x, m.conv_blocks, m.conv_channels)
    x = keras.layers.Bidirectional(keras.layers.LSTM(m.lstm_units, return_sequences=True), name="bilstm")(x)
    x = Attention(step_dim=frames if m.attention_step_bias else None, name="attention")(x)
    x = keras.layers.Dropout(m.dropout, name="dropout_1")(x)
    x = keras.layers.Dense(m.dense_units, name="dense")(x)
    x = keras.layers.ELU(name="elu")(x)
    x = keras.layers.Dropout(m.dropout, name="dropout_2")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def ensemble(members: list[keras.Model], mel_shape: tuple[int, int]) -> keras.Model:
    """One model over TrainerConfig.ensemble_size trained members (distinct names): the mean of
    their logits, so `probabilities()`, the export and serving treat it as one model."""
    inputs = keras.Input(shape=tuple(mel_shape), name="mel")
    logits = keras.layers.Average(name="mean_logits")([m(inputs) for m in members])
    return keras.Model(inputs, logits, name="ensemble")


def conv_stem(x, blocks: int, channels: int):
    """ModelConfig's conv_blocks blocks on [batch, frames, mels]: ([batch, frames', mels' x
    channels], frames'), each block halving frames and mels (floor)."""
    if not blocks:
        return x, x.shape[1]
    x = keras.layers.Reshape((x.shape[1], x.shape[2], 1), name="conv_in")(x)
    for i in range(blocks):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
        # statistics over the global batch, all-reduced across replicas and workers: without it each
        # worker keeps its own moving statistics and the workers' models drift apart
        x = keras.layers.BatchNormalization(synchronized=True, name=f"conv_{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv_{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"conv_{i}_pool")(x)
    frames, mels, c = x.shape[1], x.shape[2], x.shape[3]
    return keras.layers.Reshape((frames, mels * c), name="conv_out")(x), frames


def loss_fn(cfg: TrainerConfig):
    """Binary cross-entropy per label (sigmoid head) or the seed's categorical cross-entropy over
    labels normalized to sum 1 (softmax head), both from logits."""
    if cfg.model.head == SOFTMAX:
        cce = keras.losses.CategoricalCrossentropy(from_logits=True)

        def softmax_loss(y_true, logits):
            y = tf.cast(y_true, logits.dtype)
            return cce(y / tf.maximum(tf.reduce_sum(y, axis=-1, keepdims=True), 1e-9), logits)

        return softmax_loss
    return keras.losses.BinaryCrossentropy(from_logits=True)


def probabilities(logits: tf.Tensor, cfg: TrainerConfig) -> tf.Tensor:
    return tf.nn.softmax(logits, axis=-1) if cfg.model.head == SOFTMAX else tf.sigmoid(logits)


def optimizer(cfg: TrainerConfig, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The configured optimizer; a COSINE schedule decays over `total_steps` (needed then)."""
    o = cfg.optimizer
    extra = {"clipnorm": o.clipnorm} if o.clipnorm > 0 else {}
    if o.ema_momentum > 0:    # pipeline/training/averaging.py puts the averages where validation and export see them
        extra.update(use_ema=True, ema_momentum=o.ema_momentum)
    lr = o.learning_rate
    if o.schedule == trainer_config_pb2.OptimizerConfig.COSINE:
        if not total_steps:
            raise ValueError("a COSINE learning-rate schedule needs the number of training steps")
        lr = keras.optimizers.schedules.CosineDecay(o.learning_rate, decay_steps=total_steps)
    if o.name == "adam":
        return keras.optimizers.Adam(lr, beta_1=o.beta_1, beta_2=o.beta_2, amsgrad=o.amsgrad, **extra)
    if o.name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=o.weight_decay, beta_1=o.beta_1, beta_2=o.beta_2,
                                      amsgrad=o.amsgrad, **extra)
    if o.name == "rmsprop":
        return keras.optimizers.RMSprop(lr, **extra)
    return keras.optimizers.SGD(lr, momentum=0.9, **extra)


def cudnn_compatible(model: keras.Model) -> list[str]:
    """Why each LSTM of `model` would miss the cuDNN kernel; empty when all qualify."""
    from keras.src.backend.tensorflow.rnn import _do_lstm_arguments_support_cudnn

    problems = []
    for layer in _lstm_layers(model):
        if not _do_lstm_arguments_support_cudnn(layer.cell.activation, layer.cell.recurrent_activation,
                                                layer.unroll, layer.use_bias):
            problems.append(f"{layer.name}: activation/recurrent_activation/unroll/use_bias outside cuDNN's")
        if layer.recurrent_dropout:
            problems.append(f"{layer.name}: recurrent_dropout={layer.recurrent_dropout} disables cuDNN")
        if layer.use_cudnn not in ("auto", True):
            problems.append(f"{layer.name}: use_cudnn={layer.use_cudnn}")
    return problems


def _lstm_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):      # an ensemble's members
            yield from _lstm_layers(layer)
        elif isinstance(layer, keras.layers.Bidirectional):
            yield layer.forward_layer
            yield layer.backward_layer
        elif isinstance(layer, keras.layers.LSTM):
            yield layer
