"""pipeline/metrics/lwlrap_keras.py: the Keras metric eagerly, against the numpy reference, and under
MirroredStrategy (2 logical CPUs, in a subprocess so the device split does not leak)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.metrics.lwlrap import lwlrap, precision_at_hits
from pipeline.metrics.lwlrap_keras import LwlrapMetric
from tests.metrics.test_lwlrap import CASES, REPO, sklearn_lwlrap

def test_keras_metric_streaming_and_reset():
    truth, scores = CASES["tied_round1_60x80"]
    scores = scores.astype(np.float32)
    m = LwlrapMetric(80)
    assert m.name == "lwlrap"
    for a, b in [(0, 16), (16, 32), (32, 48), (48, 60)]:
        m.update_state(truth[a:b], scores[a:b])
    assert abs(float(m.result()) - lwlrap(truth, scores)) < 1e-6
    np.testing.assert_allclose(np.asarray(m.count), truth.sum(0))
    np.testing.assert_allclose(np.asarray(m.numerator),
                               precision_at_hits(truth, scores).sum(0), atol=1e-5)
    m.reset_state()
    assert float(m.result()) == 0.0 and float(np.asarray(m.count).sum()) == 0.0
    t2, s2 = CASES["empty_rows_mixed_40x80"]
    m.update_state(t2, s2.astype(np.float32))
    assert abs(float(m.result()) - lwlrap(t2, s2.astype(np.float32))) < 1e-6


def test_keras_metric_int_ties_sample_weight_and_config():
    truth, scores = CASES["tied_int0to3_30x10"]
    m = LwlrapMetric(10, name="lw")
    m.update_state(truth, scores)                           # integer scores: exact ties
    assert abs(float(m.result()) - sklearn_lwlrap(truth, scores)) < 1e-6
    m.reset_state()
    w = np.zeros(30)
    w[:12] = 1.0                                            # weight 0 masks a sample
    m.update_state(truth, scores, sample_weight=w)
    assert abs(float(m.result()) - lwlrap(truth[:12], scores[:12])) < 1e-6
    cfg = m.get_config()
    assert cfg["num_classes"] == 10 and cfg["name"] == "lw"
    clone = LwlrapMetric.from_config(cfg)
    assert clone.num_classes == 10 and clone.name == "lw"


MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, %(repo)r)
    from pipeline.metrics.lwlrap import lwlrap
    from pipeline.metrics.lwlrap_keras import LwlrapMetric

    rng = np.random.default_rng(7)
    n, d, c = 70, 6, 8                       # 70 = 4 full batches of 16 + a partial one of 6
    x = rng.normal(size=(n, d)).astype("float32")
    y = np.zeros((n, c), dtype="float32")
    for i in range(n):
        if i %% 9 != 4:                      # some samples without labels
            y[i, rng.choice(c, rng.integers(1, 4), replace=False)] = 1
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(c, activation="sigmoid")])
        # learning rate 0: fit runs the real training step but leaves the weights unchanged,
        # so its epoch metric is comparable with the predictions too
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                      loss="binary_crossentropy", metrics=[LwlrapMetric(c)])
    hist = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    res = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    pred = model.predict(x, batch_size=16, verbose=0)
    print("RESULT " + json.dumps({"metric": float(res["lwlrap"]), "fit": float(hist.history["lwlrap"][-1]),
                                  "numpy": lwlrap(y, pred), "replicas": strategy.num_replicas_in_sync}))
""")


@pytest.mark.slow
def test_keras_metric_under_mirrored_strategy():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", MIRRORED % {"repo": REPO}], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2
    assert 0.0 < out["numpy"] <= 1.0
    assert abs(out["metric"] - out["numpy"]) < 1e-6, out
    assert abs(out["fit"] - out["numpy"]) < 1e-6, out
