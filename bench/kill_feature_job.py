"""A feature job killed at ~80 % and run again (issue 29): is the rerun complete and correct, what did
the kill leave, and how much is computed again?

    .ci/inenv python bench/kill_feature_job.py --data /work/fat/quarter [--at 0.8]

Runs `beam_runner.py` (seed preset, the README's flags) into a fresh folder, SIGKILLs its process
group once a progress line passes --at of the clips, then checks what is left (no manifest saying
complete: nothing a reader takes for a finished output), reruns with --overwrite and compares the
rerun with an uninterrupted run into another folder: same manifest counts and the same Example
bytes per file name. Reports both runs' wall times: the rerun recomputes every clip (a Beam job keeps
no partial state), so rerun time / clean time is the recomputed share, ~1.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROGRESS = re.compile(r"features: (\d+) of ~(\d+) clips")


def job(data: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(REPO, "beam_runner.py"), "--runner=DirectRunner", "--data_dir", data,
            "--output_dir", out, *extra]


def examples(out: str) -> dict:
    import tensorflow as tf

    got = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "*.tfrecord*"))):
        comp = "GZIP" if path.endswith(".gz") else ""
        for raw in tf.data.TFRecordDataset(path, compression_type=comp):
            ex = tf.train.Example.FromString(raw.numpy())
            got[ex.features.feature["fname"].bytes_list.value[0].decode()] = raw.numpy()
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--at", type=float, default=0.8)
    ap.add_argument("--work", default="/tmp/fatp-kill")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    killed_dir, clean_dir = os.path.join(args.work, "killed"), os.path.join(args.work, "clean")
    t0 = time.time()
    proc = subprocess.Popen(job(args.data, killed_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    done = total = 0
    for line in proc.stdout:
        m = PROGRESS.search(line)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
            if done >= args.at * total:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    killed_after = time.time() - t0
    manifest = os.path.join(killed_dir, "manifest.json")
    left = {"files": sum(len(f) for _, _, f in os.walk(killed_dir)),
            "manifest": json.load(open(manifest)).get("status") if os.path.exists(manifest) else None}
    t0 = time.time()
    rerun = subprocess.run(job(args.data, killed_dir, "--overwrite"), capture_output=True, text=True)
    rerun_s = time.time() - t0
    t0 = time.time()
    clean = subprocess.run(job(args.data, clean_dir), capture_output=True, text=True)
    clean_s = time.time() - t0
    m_rerun, m_clean = (json.load(open(os.path.join(d, "manifest.json"))) for d in (killed_dir, clean_dir))
    same = examples(killed_dir) == examples(clean_dir)
    result = {"killed_at_clips": done, "of": total, "killed_after_s": round(killed_after, 1), "left_by_kill": left,
              "rerun_rc": rerun.returncode, "rerun_s": round(rerun_s, 1), "clean_rc": clean.returncode,
              "clean_s": round(clean_s, 1), "recomputed_share": round(rerun_s / clean_s, 2),
              "rerun_status": m_rerun["status"], "counts_equal": m_rerun["counts"] == m_clean["counts"],
              "examples_equal": same}
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "kill_feature_job.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
