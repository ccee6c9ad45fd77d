"""fatp-pipeline killed with SIGKILL at random moments (issue 31 §4): does every rerun complete, and
does a kill ever leave a served version TF Serving cannot load, torn Examples or an unreadable ML
Metadata store?

    .ci/inenv python bench/random_kills.py [--trials 8] [--kills 2] [--seed 0] [--train 40] [--epochs 2]

An uninterrupted run on generated data (pipeline.data.demo_data, 9 bad rows among them) gives the
reference outcome and its wall time T. Each trial takes a fresh pipeline root and starts the
pipeline --kills times in a row, each killed (os.killpg, SIGKILL, from outside) at a time drawn
uniformly from [0, T] after its start, then runs it once more without a kill. After every kill the
checks of tests/killed_run.py: ML Metadata opens, no Examples folder that says it is complete is
torn, every version in the serving root loads the way TF Serving loads it. The last run of a trial
must complete and deliver the reference's outcome (Examples per split, dead letters, verdict,
versions served, submission rows). Where a kill landed is the component of the run's last progress
line. The fixed kill moments (exact points such as a rename) are the slow test
tests/orchestration/test_kills.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
NAME = "fat-kills"
STEP = re.compile(r"\[\d+/\d+\] (\S+): (running|executed|cached|done|FAILED)")


def flags(root: str, data: str, epochs: int) -> list[str]:
    opts = {"data_dir": data, "pipeline_root": os.path.join(root, "pipeline"),
            "serving_root": os.path.join(root, "serving"), "pipeline_name": NAME, "feature_preset": "small",
            "trainer_preset": "small", "epochs": epochs, "eval_ratio": 0.3, "max_error_ratio": 0.3, "min_lwlrap": 0}
    return [x for k, v in opts.items() for x in (f"--{k}", str(v))]


def start(root: str, data: str, epochs: int, log_path: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.run_local", *flags(root, data, epochs)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def landed_in(log_path: str) -> str:
    """The component a run was in when it stopped: its last progress line's, or 'between components'."""
    with open(log_path, errors="replace") as f:
        steps = STEP.findall(f.read())
    if not steps:
        return "start-up"
    component, what = steps[-1]
    return component if what == "running" else "between components"


def problems(root: str) -> dict:
    from tests import killed_run

    found = {}
    try:
        killed_run.states(os.path.join(root, "pipeline"), NAME)
    except Exception as e:  # noqa: BLE001 -- an unreadable store is what is counted
        found["mlmd_unreadable"] = f"{type(e).__name__}: {e}"
    found["torn_examples"] = killed_run.torn_examples(os.path.join(root, "pipeline"))
    found["bad_versions"] = killed_run.unloadable_versions(os.path.join(root, "serving", "fat_tagger"))
    return {k: v for k, v in found.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--kills", type=int, default=2, help="kills in a row per trial, each followed by a rerun")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "random_kills.json"))
    args = ap.parse_args()
    from pipeline.data import demo_data
    from tests import killed_run

    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="fatp-kills-")
    data = os.path.join(work, "data")
    demo_data.generate(data, train=args.train, test=4, seed=args.seed, broken=True)
    t0 = time.time()
    ref_root = os.path.join(work, "reference")
    rc = start(ref_root, data, args.epochs, os.path.join(work, "reference.log")).wait()
    wall = time.time() - t0
    if rc != 0:
        sys.exit(f"the uninterrupted run failed (rc {rc}); see {work}/reference.log")
    reference = killed_run.outcome(os.path.join(ref_root, "pipeline"), os.path.join(ref_root, "serving", "fat_tagger"),
                                   NAME)
    print(f"uninterrupted run: {wall:.0f} s; kills drawn from [0, {wall:.0f}] s", flush=True)
    kills, finished_first, landed, seen, trials = 0, 0, Counter(), Counter(), []
    for trial in range(args.trials):
        root = os.path.join(work, f"trial-{trial}")
        events = []
        for k in range(args.kills):
            log_path = os.path.join(work, f"trial-{trial}-{k}.log")
            at = rng.uniform(0, wall)
            proc = start(root, data, args.epochs, log_path)
            try:
                proc.wait(timeout=at)
                finished_first += 1
                events.append({"at": round(at, 1), "finished_first": proc.returncode})
                continue
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            kills += 1
            where = landed_in(log_path)
            landed[where] += 1
            found = problems(root)
            for key in found:
                seen[key] += 1
            events.append({"at": round(at, 1), "landed_in": where, **found})
            print(f"trial {trial} kill {k + 1}: at {at:5.1f} s in {where}; {found or 'nothing broken'}", flush=True)
        log_path = os.path.join(work, f"trial-{trial}-final.log")
        rc = start(root, data, args.epochs, log_path).wait()
        found = problems(root)
        got = killed_run.outcome(os.path.join(root, "pipeline"), os.path.join(root, "serving", "fat_tagger"),
                                 NAME) if rc == 0 else None
        differs = {} if got is None else {k: (got[k], v) for k, v in reference.items() if got[k] != v}
        trials.append({"events": events, "final_rc": rc, "final_problems": found, "differs": differs})
        print(f"trial {trial}: rerun rc {rc}; {found or 'nothing broken'}; "
              f"{'same outcome as the uninterrupted run' if got is not None and not differs else differs}", flush=True)
    summary = {"uninterrupted_s": round(wall, 1), "trials": args.trials, "kills": kills,
               "runs_finished_before_their_kill": finished_first, "landed_in": dict(landed),
               "reruns_completed": sum(t["final_rc"] == 0 for t in trials),
               "same_outcome": sum(t["final_rc"] == 0 and not t["differs"] for t in trials),
               "kills_that_left_bad_versions": seen["bad_versions"], "kills_that_left_torn_examples": seen["torn_examples"],
               "kills_that_left_mlmd_unreadable": seen["mlmd_unreadable"], "seed": args.seed, "details": trials}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "details"}, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
