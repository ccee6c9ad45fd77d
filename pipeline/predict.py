"""Batch prediction: an exported SavedModel + test-mode examples -> submission.csv.

    fatp-predict --model EXPORT_BASE_OR_VERSION --examples OUT_TEST --sample_submission DATA/sample_submission.csv \
        --output submission.csv

Scores come from the SavedModel's serving_default signature (what TF Serving would answer), rows
follow sample_submission.csv's order and columns its label order (the model's assets/labels.txt
is matched by name). A clip listed in sample_submission.csv without an example (a dead letter of
the Beam job) fails the command, naming the clips, unless --allow_missing fills its row with
zeros; either way it is counted. The CSV is written under a temporary name and renamed
(output.write_text).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys

import numpy as np

from pipeline import dataset, kaggle_layout, output

log = logging.getLogger("fatp.predict")


def resolve_version(model: str) -> str:
    """A SavedModel directory, or the newest numeric version under an export base."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(model, "saved_model.pb")):
        return model
    versions = [d.rstrip("/") for d in tf.io.gfile.listdir(model) if d.rstrip("/").isdigit()] \
        if tf.io.gfile.isdir(model) else []
    if not versions:
        raise FileNotFoundError(f"{model} is neither a SavedModel nor a directory of numbered versions")
    return os.path.join(model, max(versions, key=int))


def score_examples(model_dir: str, files: list[str], batch_size: int = 64) -> tuple[list[str], np.ndarray, list[str]]:
    """(fnames, scores [n, labels], model label order) for every example in `files`."""
    import tensorflow as tf

    from pipeline import examples

    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures["serving_default"]
    labels = kaggle_layout.load_vocabulary(os.path.join(model_dir, "assets", "labels.txt"))
    fnames, scores = [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size):
        parsed = tf.io.parse_example(batch, {examples.FNAME: tf.io.FixedLenFeature([], tf.string)})
        fnames += [f.decode("utf-8") for f in parsed[examples.FNAME].numpy()]
        scores.append(serve(examples=batch)["scores"].numpy())
    return fnames, np.concatenate(scores) if scores else np.zeros((0, len(labels))), labels


def write_submission(path: str, order: list[str], columns: list[str], by_fname: dict[str, np.ndarray]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["fname", *columns])
    for fname in order:
        w.writerow([fname, *(f"{v:.6g}" for v in by_fname[fname])])
    output.write_text(path, buf.getvalue())


def predict(model: str, examples_dir: str, sample_submission: str, out_path: str, allow_missing: bool) -> dict:
    model_dir = resolve_version(model)
    files, _ = dataset.split_files(examples_dir, "test")
    fnames, scores, model_labels = score_examples(model_dir, files)
    columns = kaggle_layout.load_vocabulary(sample_submission)
    if sorted(columns) != sorted(model_labels):
        raise ValueError(f"{sample_submission}'s label columns differ from the model's labels.txt "
                         f"({len(set(columns) ^ set(model_labels))} labels differ)")
    reorder = [model_labels.index(c) for c in columns]
    by_fname = {f: s[reorder] for f, s in zip(fnames, scores)}
    rows, _ = kaggle_layout.parse_rows(output.read_text(sample_submission), None)
    order = [r.fname for r in rows]
    missing = [f for f in order if f not in by_fname]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} clips of {sample_submission} have no example (see the Beam job's "
                         f"dead_letters.jsonl): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                         f"pass --allow_missing to write zeros for them")
    for f in missing:
        by_fname[f] = np.zeros(len(columns))
    write_submission(out_path, order, columns, by_fname)
    summary = {"model": model_dir, "rows": len(order), "scored": len(order) - len(missing), "missing": missing,
               "extra_examples": len(set(by_fname) - set(order))}
    log.info("wrote %s: %d rows, %d scored by %s, %d missing (zeros)", out_path, len(order), summary["scored"],
             model_dir, len(missing))
    return summary


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(prog="fatp-predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="SavedModel version directory, or the export base (newest)")
    ap.add_argument("--examples", required=True, help="Beam job output in --mode test")
    ap.add_argument("--sample_submission", required=True)
    ap.add_argument("--output", default="submission.csv")
    ap.add_argument("--allow_missing", action="store_true",
                    help="write zeros for clips without an example instead of failing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predict(args.model, args.examples, args.sample_submission, args.output, args.allow_missing)
    except (ValueError, FileNotFoundError, output.OutputError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
