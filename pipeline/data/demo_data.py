"""A small synthetic dataset in the FAT2019 layout, so the demo and the tests need nothing outside.

Each of the 80 FAT2019 labels gets its own synthetic sound (a pitch, a number of harmonics, an
amplitude-modulation rate, a noise share and an envelope, all derived from the label's index), and
each clip mixes one to three of them at random offsets over faint noise, so clips are multi-label
like FAT2019's. Files come in several formats (16/24-bit, float, 8-bit, stereo, 22.05/44.1/48 kHz)
to exercise decoding and resampling. With `broken=True` a few deliberately bad inputs are added,
each standing for a failure the Beam job must report rather than crash on:

    empty file, truncated WAV, non-audio bytes, NaN samples, zero-length audio        (files)
    missing file, unknown label, duplicate fname, path escaping the folder ("../")    (CSV rows)

    DATA/train_curated.csv, DATA/train_curated/*.wav, DATA/sample_submission.csv, DATA/test/*.wav,
    DATA/test_labels.csv (the test clips' true labels, which Kaggle keeps secret)

With `noisy=N` (default 0: none, so `make demo` and every figure made from it stay as they were) it
also writes FAT2019's second source, DATA/train_noisy.csv and DATA/train_noisy/*.wav: N clips
("no00000.wav"...) drawn after all the others (the curated and test clips do not change with N),
one in four with a label swapped for a wrong one, like the noisy source's unreliable labels; with
`broken` too, three bad noisy rows: a missing file, an unknown label, and a clip the curated CSV
already lists (a duplicate across sources).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os

import numpy as np
import soundfile as sf

from pipeline import logs

LABELS = [
    "Accelerating_and_revving_and_vroom", "Accordion", "Acoustic_guitar", "Applause", "Bark", "Bass_drum",
    "Bass_guitar", "Bathtub_(filling_or_washing)", "Bicycle_bell", "Burping_and_eructation", "Bus", "Buzz",
    "Car_passing_by", "Cheering", "Chewing_and_mastication", "Child_speech_and_kid_speaking", "Chink_and_clink",
    "Chirp_and_tweet", "Church_bell", "Clapping", "Computer_keyboard", "Crackle", "Cricket", "Crowd",
    "Cupboard_open_or_close", "Cutlery_and_silverware", "Dishes_and_pots_and_pans", "Drawer_open_or_close", "Drip",
    "Electric_guitar", "Fart", "Female_singing", "Female_speech_and_woman_speaking", "Fill_(with_liquid)",
    "Finger_snapping", "Frying_(food)", "Gasp", "Glockenspiel", "Gong", "Gurgling", "Harmonica", "Hi-hat", "Hiss",
    "Keys_jangling", "Knock", "Male_singing", "Male_speech_and_man_speaking", "Marimba_and_xylophone",
    "Mechanical_fan", "Meow", "Microwave_oven", "Motorcycle", "Printer", "Purr", "Race_car_and_auto_racing",
    "Raindrop", "Run", "Scissors", "Screaming", "Shatter", "Sigh", "Sink_(filling_or_washing)", "Skateboard", "Slam",
    "Sneeze", "Squeak", "Stream", "Strum", "Tap", "Tick-tock", "Toilet_flush", "Traffic_noise_and_roadway_noise",
    "Trickle_and_dribble", "Walk_and_footsteps", "Water_tap_and_faucet", "Waves_and_surf", "Whispering", "Writing",
    "Yell", "Zipper_(clothing)",
]
assert len(LABELS) == 80

FORMATS = [(22050, 1, "PCM_16"), (44100, 1, "PCM_16"), (22050, 2, "PCM_24"), (16000, 1, "FLOAT"),
           (48000, 1, "PCM_16"), (22050, 1, "PCM_U8")]
log = logging.getLogger(__name__)


def class_sound(k: int, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The synthetic sound of label k: recognisable by pitch, harmonics, modulation and envelope."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110.0 * 2 ** (k / 14.0) * rng.uniform(0.97, 1.03)          # 110 Hz .. ~5 kHz
    f0 = min(f0, 0.4 * sr / (1 + k % 4))
    tone = sum(np.sin(2 * np.pi * f0 * (h + 1) * t) / (h + 1) for h in range(1 + k % 4))
    am = 1.0 + 0.8 * np.sin(2 * np.pi * (2 + 3 * (k % 5)) * t) if k % 5 else 1.0
    noise = rng.normal(0, 1, len(t)) * (0.6 if k % 3 == 0 else 0.0)
    envelope = np.exp(-t * (1 + 4 * (k % 2))) if k % 4 in (1, 3) else np.minimum(1.0, 20 * t)
    sound = (tone * am + noise) * envelope
    return sound / (np.max(np.abs(sound)) + 1e-9)


def make_clip(labels: list[int], sr: int, rng: np.random.Generator) -> np.ndarray:
    seconds = rng.uniform(0.6, 3.0)
    clip = np.zeros(int(seconds * sr))
    for k in labels:
        sound = class_sound(k, rng.uniform(0.3, min(1.5, seconds)), sr, rng) * rng.uniform(0.3, 0.9)
        start = rng.integers(0, len(clip) - len(sound) + 1)
        clip[start:start + len(sound)] += sound
    clip += rng.normal(0, 10 ** (rng.uniform(-60, -40) / 20), len(clip))
    return clip / max(1.0, np.max(np.abs(clip)) / 0.99)


def _write_clip(path: str, clip: np.ndarray, fmt: tuple[int, int, str]) -> None:
    sr, channels, subtype = fmt
    data = np.stack([clip, 0.8 * clip], axis=1) if channels == 2 else clip
    sf.write(path, data, sr, subtype=subtype)


def _clips(out_dir: str, prefix: str, count: int, rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    rows = []
    for i in range(count):
        labels = sorted(rng.choice(80, size=rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]), replace=False).tolist())
        fmt = FORMATS[rng.integers(len(FORMATS))]
        fname = f"{prefix}{i:05d}.wav"
        _write_clip(os.path.join(out_dir, fname), make_clip(labels, fmt[0], rng), fmt)
        rows.append((fname, labels))
    return rows


def _broken_files(audio_dir: str) -> dict[str, str]:
    """Bad files with the dead-letter reason each must produce."""
    good = os.path.join(audio_dir, "broken_truncated.wav")
    sf.write(good, np.sin(np.arange(22050) / 5.0) * 0.5, 22050, subtype="PCM_16")
    with open(good, "rb") as f:
        data = f.read()
    with open(good, "wb") as f:
        f.write(data[: len(data) // 2])
    open(os.path.join(audio_dir, "broken_empty.wav"), "wb").close()
    with open(os.path.join(audio_dir, "broken_not_audio.wav"), "wb") as f:
        f.write(b"<html>this is not a wav file</html>\n" * 20)
    nan = np.sin(np.arange(8000) / 3.0).astype(np.float32)
    nan[100:110] = np.nan
    sf.write(os.path.join(audio_dir, "broken_nan.wav"), nan, 16000, subtype="FLOAT")
    sf.write(os.path.join(audio_dir, "broken_zero_length.wav"), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    return {"broken_truncated.wav": "truncated", "broken_empty.wav": "empty_file",
            "broken_not_audio.wav": "not_audio", "broken_nan.wav": "non_finite",
            "broken_zero_length.wav": "zero_length"}


def _labelled(rows) -> list[tuple[str, str]]:
    """(fname, label indices) rows as the CSVs list them: (fname, "Name,Name")."""
    return [(fname, ",".join(LABELS[k] for k in labels)) for fname, labels in rows]


def write_labels_csv(path: str, rows: list[tuple[str, str]]) -> None:
    """A Kaggle-layout labels CSV: header fname,labels, then (fname, "Name,Name") rows, quoted as needed."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("fname", "labels"), *rows])


def _noisy_part(out: str, count: int, curated: list, broken: bool, rng: np.random.Generator) -> tuple[list, dict]:
    """train_noisy/ and train_noisy.csv; returns the good rows as listed (some labels wrong) and the
    bad rows' expected reasons ({fname: reason}; the cross-source duplicate as "<fname>#noisy")."""
    noisy_dir = os.path.join(out, "train_noisy")
    os.makedirs(noisy_dir, exist_ok=True)
    rows = []
    for fname, labels in _clips(noisy_dir, "no", count, rng):
        if rng.random() < 0.25:
            labels = sorted({int(rng.integers(80)), *labels[1:]})
        rows.append((fname, labels))
    csv_rows = _labelled(rows)
    dead = {}
    if broken:
        csv_rows += [("noisy_missing.wav", LABELS[4]), ("noisy_unknown.wav", "Not_a_label"), (curated[0][0], LABELS[5])]
        dead = {"noisy_missing.wav": "missing_file", "noisy_unknown.wav": "unknown_label",
                f"{curated[0][0]}#noisy": "duplicate_fname"}
    write_labels_csv(os.path.join(out, "train_noisy.csv"), csv_rows)
    return rows, dead


def generate(out: str, train: int = 240, test: int = 60, seed: int = 0, broken: bool = True, noisy: int = 0) -> dict:
    """Write the dataset; returns {"train": rows, "test": rows, "expected_dead": {fname: reason}}, and
    with `noisy`, "noisy": rows and "noisy_dead": {fname: reason}."""
    rng = np.random.default_rng(seed)
    train_dir, test_dir = os.path.join(out, "train_curated"), os.path.join(out, "test")
    os.makedirs(train_dir, exist_ok=True)
    os.makedirs(test_dir, exist_ok=True)
    train_rows = _clips(train_dir, "tr", train, rng)
    test_rows = _clips(test_dir, "te", test, rng)
    csv_rows = _labelled(train_rows)
    expected_dead = {}
    if broken:
        for fname, reason in _broken_files(train_dir).items():
            csv_rows.append((fname, LABELS[0]))
            expected_dead[fname] = reason
        csv_rows += [("missing_clip.wav", LABELS[1]), ("unknown_label.wav", "Not_a_label"),
                     (train_rows[0][0], LABELS[2]), ("../escape.wav", LABELS[3])]
        expected_dead.update({"missing_clip.wav": "missing_file", "unknown_label.wav": "unknown_label",
                              "../escape.wav": "unsafe_path"})
        expected_dead[f"{train_rows[0][0]}#duplicate"] = "duplicate_fname"
    write_labels_csv(os.path.join(out, "train_curated.csv"), csv_rows)
    with open(os.path.join(out, "sample_submission.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", *LABELS])
        w.writerows([fname, *([0] * len(LABELS))] for fname, _ in test_rows)
    write_labels_csv(os.path.join(out, "test_labels.csv"), _labelled(test_rows))
    log.info("wrote %d train clips (+%d bad rows) and %d test clips to %s", train, len(expected_dead), test, out)
    result = {"train": train_rows, "test": test_rows, "expected_dead": expected_dead}
    if noisy:
        result["noisy"], result["noisy_dead"] = _noisy_part(out, noisy, train_rows, broken, rng)
        log.info("wrote %d noisy clips (+%d bad rows)", noisy, len(result["noisy_dead"]))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noisy", type=int, default=0, help="clips in a train_noisy source (0: none)")
    ap.add_argument("--no_broken", action="store_true", help="leave out the deliberately bad inputs")
    args = ap.parse_args(argv)
    logs.setup("INFO")
    generate(args.out, args.train, args.test, args.seed, broken=not args.no_broken, noisy=args.noisy)


if __name__ == "__main__":
    main()
