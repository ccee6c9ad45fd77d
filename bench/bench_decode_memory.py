"""Peak memory of decoding hostile audio files ("decode bombs"): this checkout against a baseline
checkout, same crafted files, same command.

    .ci/inenv python bench/bench_decode_memory.py [--baseline DIR] [--job]

The files are crafted here (silence, so they are tiny):
  ogg64-20s     Ogg Vorbis, 64 channels, 48 kHz, 20 s     (the issue's 13 KB file)
  ogg64-120s    Ogg Vorbis, 64 channels, 48 kHz, 120 s    (the issue's 60 KB file)
  flac8-384k    FLAC 24-bit, 8 channels, 384 kHz, 30 s
  flac-unknown  FLAC mono 44.1 kHz, 10 s, STREAMINFO total_samples = 0 ("unknown length", legal)
  flac-liar     FLAC mono 44.1 kHz holding 10 s, its STREAMINFO declaring 1 s
  wav-30s       an ordinary 30 s stereo 44.1 kHz WAV: the control
Each file is decoded by pipeline.features.audio.decode (default DecodeLimits, target 44.1 kHz) in a
fresh process with the checkout first on sys.path: peak RSS during decode() above the RSS just
before it (everything imported, the file read; Linux's VmHWM, reset through /proc/self/clear_refs), wall time, and what came out (seconds, or the
dead-letter reason). With --job, the whole Beam job (beam_runner.py, DirectRunner, one worker) on
20 demo clips plus four ogg64-120s files, each checkout: peak RSS of the process tree and the
dead letters. With --serving, serving_audio's decoder (pipeline.features.audio_graph.decode_batch,
traced once, then timed) on batches of 4 WAV files, each checkout in a fresh process: at the
model's rate (44.1 kHz, 60 s each: no resampling to do) and at 384 kHz (20 s each, resampled).
Results go to stdout and bench/out/decode_memory.json.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from bench.bench_features import PeakRSS  # noqa: E402

DECODE = r"""
import json, sys, time
sys.path.insert(0, %(repo)r)
from pipeline.features import audio
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
data = open(%(path)r, "rb").read()
open("/proc/self/clear_refs", "w").write("5")      # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
t0 = time.time()
try:
    y, info = audio.decode(data, 44100)
    outcome = "%%.2f s" %% info["source_seconds"]
except audio.AudioError as e:
    outcome = "%%s: %%s" %% (e.reason, e.detail[:70])
seconds = time.time() - t0
peak = status("VmHWM")
print("RESULT", json.dumps({"peak_mb": (peak - before) / 1024, "seconds": seconds, "outcome": outcome}))
"""


SERVING = r"""
import io, json, sys, time
sys.path.insert(0, %(repo)r)
import numpy as np, soundfile as sf, tensorflow as tf
from pipeline.features import audio_graph
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
def wav(sr, seconds):
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(int(sr * seconds)) / 7.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
fn = tf.function(lambda w: audio_graph.decode_batch(w, 44100, 60.0))
fn(tf.constant([wav(8000, 0.5)]))                       # traced before measuring
files = tf.constant([wav(%(rate)d, %(seconds)f)] * 4)
open("/proc/self/clear_refs", "w").write("5")
before, t0 = status("VmRSS"), time.time()
fn(files)
print("RESULT", json.dumps({"peak_mb": (status("VmHWM") - before) / 1024, "seconds": time.time() - t0}))
"""


def craft(fmt: str, subtype: str, sr: int, channels: int, seconds: float, block: int = 1 << 16) -> bytes:
    """Silence written block by block (writing a 64-channel file must not need its decoded size)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, channels, subtype, format=fmt) as f:
        zeros, left = np.zeros((block, channels), np.float32), int(sr * seconds)
        while left > 0:
            f.write(zeros[:min(block, left)])
            left -= block
    return buf.getvalue()


def flac_declaring(data: bytes, frames: int) -> bytes:
    """The FLAC file with STREAMINFO's 36-bit total_samples set to `frames` (0: unknown length)."""
    out = bytearray(data)
    out[21] = (out[21] & 0xF0) | (frames >> 32)
    out[22:26] = (frames & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(out)


def tone(sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    y = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * seconds)) / sr).astype(np.float32)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


def write_files(folder: str) -> dict[str, str]:
    def enc(y, sr, fmt, subtype):
        buf = io.BytesIO()
        sf.write(buf, y, sr, format=fmt, subtype=subtype)
        return buf.getvalue()

    flac10 = enc(tone(44100, 10), 44100, "FLAC", "PCM_16")
    files = {
        "ogg64-20s": craft("OGG", "VORBIS", 48000, 64, 20),
        "ogg64-120s": craft("OGG", "VORBIS", 48000, 64, 120),
        "flac8-384k": craft("FLAC", "PCM_24", 384000, 8, 30),
        "flac-unknown": flac_declaring(flac10, 0),
        "flac-liar": flac_declaring(flac10, 44100),
        "wav-30s": enc(tone(44100, 30, 2), 44100, "WAV", "PCM_16"),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(folder, name + {"o": ".ogg", "f": ".flac", "w": ".wav"}[name[0]])
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


def decode_once(repo: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", DECODE % {"repo": repo, "path": path}], capture_output=True,
                         text=True, cwd=repo)
    if out.returncode != 0:
        return {"outcome": f"process failed ({out.returncode}): {out.stderr.strip()[-200:]}"}
    return json.loads(out.stdout.split("RESULT", 1)[1])


def serving_once(repo: str, rate: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, "-c", SERVING % {"repo": repo, "rate": rate, "seconds": seconds}],
                         capture_output=True, text=True, cwd=repo)
    if out.returncode != 0:
        return {"failed": out.stderr.strip()[-300:]}
    return json.loads(out.stdout.split("RESULT", 1)[1])


def job_once(repo: str, data: str, out: str) -> dict:
    cmd = [sys.executable, os.path.join(repo, "beam_runner.py"), "--data_dir", data, "--output_dir", out,
           "--overwrite", "--preset", "small", "--max_error_ratio", "1", "--runner=DirectRunner",
           "--direct_num_workers=1"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=repo)
    rss = PeakRSS(proc)
    log, _ = proc.communicate()
    if proc.returncode != 0:
        return {"failed": log[-2000:]}
    with open(os.path.join(out, "manifest.json")) as f:
        counts = json.load(f)["counts"]
    return {"seconds": time.time() - t0, "peak_rss_mb": rss.peak / 2**20, "written": counts["written"],
            "failed_by_reason": counts["failed_by_reason"]}


def job_data(folder: str, bomb: str) -> str:
    from pipeline.data import demo_data

    root = os.path.join(folder, "job-data")
    demo_data.generate(root, train=20, test=1, seed=0, broken=False)
    with open(os.path.join(root, "train_curated.csv"), "a", newline="") as f:
        for k in range(4):
            shutil.copy(bomb, os.path.join(root, "train_curated", f"bomb{k}.ogg"))
            csv.writer(f).writerow([f"bomb{k}.ogg", demo_data.LABELS[0]])
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="another checkout of the project (e.g. the commit before a change)")
    ap.add_argument("--job", action="store_true", help="also the whole Beam job with four 64-channel bombs")
    ap.add_argument("--serving", action="store_true", help="also serving_audio's decoder on batches of 4 WAV files")
    args = ap.parse_args()
    checkouts = {"this": REPO, **({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
    folder = tempfile.mkdtemp(prefix="fatp-decode-bench-")
    try:
        paths = write_files(folder)
        results = {"files": {n: os.path.getsize(p) for n, p in paths.items()}, "decode": {}, "job": {}}
        for name, path in paths.items():
            row = results["decode"][name] = {c: decode_once(repo, path) for c, repo in checkouts.items()}
            line = f"{name:13s} {results['files'][name]:>9,d} B"
            for c, r in row.items():
                line += f" | {c}: {r.get('peak_mb', float('nan')):7.1f} MB {r.get('seconds', 0):5.2f} s  {r['outcome']}"
            if "baseline" in row and row["baseline"].get("peak_mb"):
                row["peak_ratio"] = row["this"]["peak_mb"] / row["baseline"]["peak_mb"]
                line += f" | this/baseline {row['peak_ratio']:.3f}"
            print(line, flush=True)
        if args.job:
            data = job_data(folder, paths["ogg64-120s"])
            for c, repo in checkouts.items():
                results["job"][c] = job_once(repo, data, os.path.join(folder, f"out-{c}"))
                print(f"job {c}: {json.dumps(results['job'][c])}", flush=True)
        if args.serving:
            for name, rate, seconds in (("4 x 60 s at 44.1 kHz", 44100, 60.0), ("4 x 20 s at 384 kHz", 384000, 20.0)):
                results.setdefault("serving", {})[name] = {c: serving_once(repo, rate, seconds)
                                                           for c, repo in checkouts.items()}
                print(f"serving_audio decode, {name}: {json.dumps(results['serving'][name])}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "decode_memory.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
