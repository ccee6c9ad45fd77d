"""float32 vs float64 STFT on real clips: parity in the units the model sees, and cost per clip.

    .ci/inenv python bench/stft_dtype.py [--clips 400] [--rounds 3] [--data DIR]

Issue 9's bar for a float32 feature path: within 1e-3 in normalized feature units (the values the
model is fed, after per-clip normalization) on every bin of real clips. For each FSDD-FAT clip
(decoded and resampled as the job does) this computes the seed preset's features both ways with
the feature function itself, trim included, and reports the largest |difference| over all bins,
the clips above 1e-3, the worst clip, and the log-mel dB difference before normalization.

Cost: the traced feature function in batches of 8 clips, one intra-op thread, float32 and float64
alternated round by round in this one process (the machine is shared: only the ratio is read).

Needs ../shared (FSDD recordings and make_fat_dataset.py) unless --data names a FAT-layout folder.
Results: stdout and bench/out/stft_dtype.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from bench_features import make_data  # noqa: E402
from profile_features import _clips  # noqa: E402

BAR = 1e-3


def clips(data: str, n: int, sr: int) -> list:
    """(file name, waveform decoded and resampled as the job does) of the first n clips."""
    import numpy as np

    from pipeline.features import audio

    out = []
    for path in _clips(data, n):
        with open(path, "rb") as f:
            y, _ = audio.decode(f.read(), sr)
        out.append((os.path.basename(path), np.asarray(y, np.float32)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", help="a FAT-layout folder (default: FSDD-FAT built under /tmp)")
    args = ap.parse_args()

    data = args.data or f"/tmp/fatp-bench/fsdd-fat-mixed-{args.clips}"
    if not args.data:
        make_data(args.clips, data, formats="1:PCM_16,2:PCM_24,1:FLOAT")

    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipeline import config
    from pipeline.features import feature_fn as features

    cfgs = {"float64": config.feature_config("seed"), "float32": config.feature_config("seed", "float64_stft: false")}
    raw = {k: config.feature_config("seed", ("" if k == "float64" else "float64_stft: false") + " normalization: NONE")
           for k in cfgs}
    batches = []
    named = clips(data, args.clips, cfgs["float64"].sample_rate)
    for i in range(0, len(named), 8):
        batches.append([tf.constant(a) for a in features.pad_batch([y for _, y in named[i:i + 8]])])

    feats, dbs = {}, {}
    for k in cfgs:
        fn, fn_raw = features.feature_fn(cfgs[k]), features.feature_fn(raw[k])
        feats[k] = np.concatenate([fn(w, n).numpy() for w, n in batches])
        dbs[k] = np.concatenate([fn_raw(w, n).numpy() for w, n in batches])
    per_clip = np.abs(feats["float32"] - feats["float64"]).max(axis=(1, 2))
    db_err = float(np.abs(dbs["float32"] - dbs["float64"]).max())
    worst = int(per_clip.argmax())
    parity = {"clips": len(named), "max_abs_normalized": float(per_clip.max()),
              "clips_over_bar": int((per_clip > BAR).sum()), "bar": BAR, "worst_clip": named[worst][0],
              "median_clip_max_abs": float(np.median(per_clip)), "max_abs_db_before_normalization": db_err}
    print(f"parity over {len(named)} clips, every bin: max |f32 - f64| = {parity['max_abs_normalized']:.2e} "
          f"normalized units (bar {BAR:g}; {parity['clips_over_bar']} clips over it; worst {named[worst][0]}), "
          f"median clip {parity['median_clip_max_abs']:.1e}; log-mel before normalization {db_err:.2e} dB", flush=True)

    timing = {k: [] for k in cfgs}
    fns = {k: features.feature_fn(c) for k, c in cfgs.items()}
    for k in fns:
        fns[k](*batches[0])                       # trace outside the clock
    for r in range(args.rounds):
        for k in (("float32", "float64") if r % 2 == 0 else ("float64", "float32")):
            t = time.process_time()
            for w, n in batches:
                fns[k](w, n)
            timing[k].append(1000 * (time.process_time() - t) / len(named))
    ratios = [a / b for a, b in zip(timing["float64"], timing["float32"])]
    for r in range(args.rounds):
        print(f"round {r + 1}: float64 {timing['float64'][r]:.2f} ms/clip, float32 {timing['float32'][r]:.2f} ms/clip "
              f"(CPU, one thread), float64/float32 {ratios[r]:.2f}")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "stft_dtype.json"), "w") as f:
        json.dump({"parity": parity, "cpu_ms_per_clip": timing, "float64_over_float32": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
