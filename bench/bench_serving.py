"""Serving benchmark: the exported SavedModel loaded the way TF Serving loads it (TF1 Session,
signatures by tensor name; tests/serving_loader.py), on the same real clips by each route.

    .ci/inenv python bench/bench_serving.py [--requests 200] [--trainer_preset default] [--set 'ensemble_size: 1']

Clips: FSDD recordings (../shared/data/fsdd) resampled to the model's 44.1 kHz (seed features:
5 s windows, 636 x 128). Per signature: latency p50/p99 of single-clip requests (batch 1) and
clips/s at batch 32. serving_default gets the clips' tf.Examples (features computed beforehand,
as the Beam job writes them: the model alone), serving_waveform the raw waveforms (features in the
graph), serving_audio the clips' WAV files as they are (8 kHz: decoded and resampled in the graph
too). The headline is the cost of features in the graph: waveform / examples time at batch 32
(target <= 1.2). One process, alternating rounds, so both routes see the same machine state. The
model's weights are untrained: latency does not depend on them. Results: stdout and
bench/out/serving.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="batch-1 requests per signature")
    ap.add_argument("--batches", type=int, default=6, help="batch-32 requests per signature")
    ap.add_argument("--trainer_preset", default="default")
    ap.add_argument("--set", default="", help="TrainerConfig overrides, e.g. 'ensemble_size: 1'")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "serving.json"))
    args = ap.parse_args()

    import keras
    import numpy as np
    import soundfile as sf

    from pipeline.features import audio
    from pipeline import config
    from pipeline.data import example_schema as examples
    from pipeline.training import export
    from pipeline.features import feature_fn as features
    from pipeline.training import model as model_lib
    from tests.serving_loader import ServedModel

    files = sorted(glob.glob(os.path.join(SHARED, "data", "fsdd", "recordings", "*.wav")))
    if not files:
        sys.exit(f"needs {SHARED}/data/fsdd/recordings (FSDD)")
    fcfg, tcfg = config.feature_config("seed"), config.trainer_config(args.trainer_preset, args.set)
    rng = np.random.default_rng(0)
    clips, wavs = [], []
    for f in rng.choice(files, 64, replace=False):
        y, sr = sf.read(f, dtype="float32")
        clips.append(audio.resample(y, sr, fcfg.sample_rate))
        with open(f, "rb") as fh:
            wavs.append(fh.read())            # the file as it is (8 kHz): serving_audio resamples in the graph
    wavs = np.array(wavs, dtype=object)
    keras.utils.set_random_seed(0)
    members = [model_lib.build_model(config.mel_shape(fcfg), 80, tcfg, name=f"member_{i}")
               for i in range(tcfg.ensemble_size)]      # the default exports an ensemble: N models a request
    model = members[0] if len(members) == 1 else model_lib.ensemble(members, config.mel_shape(fcfg))
    tmp = tempfile.mkdtemp(prefix="fatp-bench-serving-")
    labels = os.path.join(tmp, "labels.txt")
    with open(labels, "w") as f:
        f.write("\n".join(f"label{i}" for i in range(80)) + "\n")
    path = export.export_saved_model(model, fcfg, tcfg, labels, os.path.join(tmp, "export"))
    served = ServedModel(path)
    wave, length = features.pad_batch(clips)
    mel = features.compute_features(wave, length, fcfg).numpy()
    serialized = np.array([examples.serialize(f"c{i}", [], m, 1.0) for i, m in enumerate(mel)], dtype=object)

    def request(sig, idx):
        if sig == "serving_default":
            return {"examples": serialized[idx]}
        if sig == "serving_audio":
            return {"audio": wavs[idx]}
        w, n = features.pad_batch([clips[i] for i in idx])
        return {"waveform": w, "length": n}

    sigs = ("serving_default", "serving_waveform", "serving_audio")
    for sig in sigs:                                  # warm-up: tracing and allocation
        served.run(sig, **request(sig, [0]))
        served.run(sig, **request(sig, list(range(32))))
    lat = {s: [] for s in sigs}
    for r in range(args.requests):                    # alternate the routes request by request
        for sig in sigs:
            req = request(sig, [r % len(clips)])
            t = time.perf_counter()
            served.run(sig, **req)
            lat[sig].append(time.perf_counter() - t)
    thr = {s: [] for s in sigs}
    for b in range(args.batches):
        idx = [(b * 32 + i) % len(clips) for i in range(32)]
        for sig in sigs:
            req = request(sig, idx)
            t = time.perf_counter()
            served.run(sig, **req)
            thr[sig].append(time.perf_counter() - t)
    result = {"trainer_preset": args.trainer_preset, "set": args.set, "ensemble_size": tcfg.ensemble_size, "requests": args.requests,
              "batches": args.batches}
    for sig in sigs:
        ms = np.array(lat[sig]) * 1e3
        result[sig] = {"batch1_p50_ms": float(np.percentile(ms, 50)), "batch1_p99_ms": float(np.percentile(ms, 99)),
                       "batch32_clips_per_s": 32 / float(np.median(thr[sig]))}
    result["features_in_graph_cost_batch32"] = (float(np.median(thr["serving_waveform"]))
                                                / float(np.median(thr["serving_default"])))
    result["features_in_graph_cost_batch1_p50"] = (result["serving_waveform"]["batch1_p50_ms"]
                                                   / result["serving_default"]["batch1_p50_ms"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
