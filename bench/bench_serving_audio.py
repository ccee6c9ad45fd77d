"""serving_audio (WAV bytes, decoded and resampled in the graph) against the Beam path (soundfile +
soxr HQ in Python, then serving_waveform), on real clips at several sample rates.

    .ci/inenv python bench/bench_serving_audio.py --model EXPORT/<version> [--clips 40]

FSDD recordings (8 kHz, ../shared/data/fsdd) are brought to 8, 16, 22.05, 44.1 and 48 kHz with
soxr HQ, written as 16-bit PCM WAV, mono and (a second channel at 0.8x) stereo. Each WAV goes both
ways through the SavedModel loaded as TF Serving loads it. Reported per rate: the largest score
difference and the largest difference of the normalized features (the values the model sees),
computed with the model's feature config. Results: stdout and bench/out/serving_audio.json.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)
RATES = (8000, 16000, 22050, 44100, 48000)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an exported SavedModel version folder")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "serving_audio.json"))
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf
    import soxr

    from pipeline.features import audio
    from pipeline.features import audio_graph
    from pipeline import config
    from pipeline.features import feature_fn as features
    from tests.serving_loader import ServedModel

    cfg = config.from_text(open(os.path.join(args.model, "assets", "feature_config.pbtxt")).read())
    files = sorted(glob.glob(os.path.join(SHARED, "data", "fsdd", "recordings", "*.wav")))[::7][:args.clips]
    if not files:
        sys.exit(f"needs {SHARED}/data/fsdd/recordings (FSDD)")
    served = ServedModel(args.model)
    result = {"model": args.model, "target_rate": cfg.sample_rate, "clips": len(files), "rates": {}}
    for rate in RATES:
        score_diff = feat_diff = 0.0
        for f in files:
            y, sr = sf.read(f, dtype="float32")
            y = soxr.resample(y, sr, rate, quality="HQ").astype(np.float32) if sr != rate else y
            for channels in (1, 2):
                data = np.stack([y, 0.8 * y], 1) if channels == 2 else y
                buf = io.BytesIO()
                sf.write(buf, data, rate, format="WAV", subtype="PCM_16")
                wav = buf.getvalue()
                beam_wave, _ = audio.decode(wav, cfg.sample_rate)
                w, n = features.pad_batch([beam_wave])
                by_beam = served.run("serving_waveform", waveform=w, length=n)["scores"]
                by_graph = served.run("serving_audio", audio=np.array([wav], dtype=object))["scores"]
                score_diff = max(score_diff, float(np.abs(by_beam - by_graph).max()))
                gw, gn = audio_graph.decode_batch(np.array([wav], dtype=object), cfg.sample_rate, 600.0, cfg.limits)
                a = features.compute_features(w, n, cfg).numpy()
                b = features.compute_features(gw, gn, cfg).numpy()
                feat_diff = max(feat_diff, float(np.abs(a - b).max()))
        result["rates"][rate] = {"max_score_diff": score_diff, "max_feature_diff": feat_diff}
        print(rate, result["rates"][rate], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
