"""Batch prediction -> submission.csv in sample_submission.csv's format, two ways:

    # local: an exported SavedModel + the Beam job's test-mode examples
    fatp-predict --model EXPORT_BASE_OR_VERSION --examples OUT_TEST \\
        --sample_submission DATA/sample_submission.csv --output submission.csv

    # server: wav files or a folder sent to a running TensorFlow Serving (gRPC or REST)
    fatp-predict --server grpc://localhost:8500 --model_name fat_tagger --audio DATA/test \\
        --sample_submission DATA/sample_submission.csv --output submission.csv

Local mode scores examples through the SavedModel's serving_default signature (what TF Serving
would answer) and refuses examples whose feature config is not the model's. Server mode decodes
and resamples each file with the Beam job's own audio code (pipeline.features.audio) to the model's sample
rate, which it asks the model for (serving_waveform's `sample_rate` output; --feature_preset or
--feature_config only for models exported before it, and refused if they name another rate),
and sends batches to serving_waveform; with --signature serving_audio it sends the files as
they are (16-bit PCM WAV: the model decodes and resamples them in its graph, and refuses other
files, which are reported). Either way columns are matched by the label names the model returns.

Rows follow sample_submission.csv's order and columns its label order. A row of it that cannot be
used (duplicate, unsafe name) fails the command by name: the submission is never shorter than the
sample. A clip without scores (a dead letter of the Beam job, an unreadable file, a request the
server refused) fails the command, naming the clips, unless --allow_missing fills its row with
zeros; either way it is counted, and server mode writes one line per such file to
OUTPUT.errors.jsonl. The CSV is written under a temporary name and renamed (output.write_text).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from pipeline import fileio
from pipeline import config as config_lib
from pipeline import logs
from pipeline import saved_model_layout as layout
from pipeline.training import dataset
from pipeline.data import kaggle_layout
from pipeline.serving import submission
from pipeline.data import job_output as output

log = logging.getLogger("fatp.predict")


def resolve_version(model: str) -> str:
    """A SavedModel directory, or the newest numeric version under an export base."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(model, "saved_model.pb")):
        return model
    newest = layout.newest_version(tf.io.gfile.listdir(model)) if tf.io.gfile.isdir(model) else None
    if newest is None:
        raise FileNotFoundError(f"{model} is neither a SavedModel nor a directory of numbered versions")
    return os.path.join(model, newest)


def submission_rows(sample_submission: str) -> list[str]:
    """The fnames of sample_submission.csv in order; any row that cannot be used fails, by name."""
    rows, bad = kaggle_layout.parse_rows(fileio.read_text(sample_submission), None)
    if bad:
        listed = "; ".join(f"line {b.line} {b.fname!r}: {b.reason} ({b.detail})" for b in bad[:10])
        raise ValueError(f"{sample_submission}: {len(bad)} rows cannot be used, so the submission would miss "
                         f"them: {listed}{' ...' if len(bad) > 10 else ''}")
    return [r.fname for r in rows]


def _model_asset(model_dir: str, asset: str, message_cls):
    """A config the export wrote beside the graph, or None for a model exported without it (any
    filesystem TensorFlow reads: local, gs://, ...)."""
    import tensorflow as tf

    path = os.path.join(model_dir, asset)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return config_lib.from_text(f.read(), message_cls)


def model_features(model_dir: str):
    """The FeatureConfig the model was trained on (assets/feature_config.pbtxt), or None for a model
    exported without it."""
    return _model_asset(model_dir, layout.FEATURES_ASSET, config_lib.FeatureConfig)


def model_max_batch(model_dir: str) -> int:
    """The most clips the model takes in one call (its ServingConfig.max_batch, refused above that
    inside the graph): the batch limit of every caller that batches for it: BulkInferrer, the
    Evaluator, batch_predict. A model exported before the limit was recorded (no
    assets/serving_config.pbtxt) enforces the default, which is what it gets."""
    cfg = _model_asset(model_dir, layout.SERVING_ASSET, config_lib.ServingConfig)
    return (cfg or config_lib.ServingConfig()).max_batch


def check_features(model_dir: str, theirs, what: str) -> None:
    """Refuse features `theirs` (a FeatureConfig) that are not the model's; `limits` (input checks,
    not features) may differ. `what` names where they come from, for the message."""
    ours = model_features(model_dir)
    if ours is None:
        return
    theirs = type(theirs).FromString(theirs.SerializeToString())
    ours.ClearField("limits"), theirs.ClearField("limits")
    if ours != theirs:
        raise ValueError(f"{what} was made with other features than the model's "
                         f"({os.path.join(model_dir, layout.FEATURES_ASSET)}): {config_lib.to_text(theirs)!r} "
                         f"vs model {config_lib.to_text(ours)!r}")


def score_examples(model_dir: str, files: list[str], batch_size: int = 64) -> tuple[list[str], np.ndarray, list[str]]:
    """(fnames, scores [n, labels], model label order) for every example in `files`."""
    import tensorflow as tf

    from pipeline.data import example_schema as examples

    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures[layout.SERVING_DEFAULT]
    labels = kaggle_layout.load_vocabulary(os.path.join(model_dir, layout.LABELS_ASSET))
    fnames, scores = [], []
    from pipeline.data.tfrecord import compression_type

    names = tf.constant(list(files), tf.string, shape=[len(files)])        # GZIP or plain shards, by name
    kinds = tf.constant([compression_type(f) for f in files], tf.string, shape=[len(files)])
    records = tf.data.Dataset.from_tensor_slices((names, kinds)).flat_map(
        lambda f, compression: tf.data.TFRecordDataset(f, compression_type=compression))
    for batch in records.batch(batch_size):
        parsed = tf.io.parse_example(batch, {examples.FNAME: tf.io.FixedLenFeature([], tf.string)})
        fnames += [f.decode("utf-8") for f in parsed[examples.FNAME].numpy()]
        scores.append(serve(examples=batch)[layout.SCORES].numpy())
    return fnames, np.concatenate(scores) if scores else np.zeros((0, len(labels))), labels


def write_submission(path: str, order: list[str], columns: list[str], by_fname: dict[str, np.ndarray]) -> None:
    fileio.write_text(path, submission.header(columns) + "".join(submission.csv_line(f, by_fname[f]) for f in order))


def finish_submission(order: list[str], columns: list[str], model_labels: list[str], by_fname: dict, out_path: str,
            allow_missing: bool, source: str, why_missing: str) -> dict:
    """Reorder columns by label name, check for missing clips, write the CSV; the summary. (In
    memory, for one process's clips; a Beam job writes through submission.WriteSubmission.)"""
    reorder = submission.column_order(columns, model_labels)
    by_fname = {f: np.asarray(s)[reorder] for f, s in by_fname.items()}
    missing = [f for f in order if f not in by_fname]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} clips have no scores ({why_missing}): {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}; pass --allow_missing to write zeros for them")
    for f in missing:
        by_fname[f] = np.zeros(len(columns))
    write_submission(out_path, order, columns, by_fname)
    summary = {"model": source, "rows": len(order), "scored": len(order) - len(missing), "missing": missing,
               "extra": len(set(by_fname) - set(order))}
    log.info("wrote %s: %d rows, %d scored by %s, %d missing (zeros)", out_path, len(order), summary["scored"],
             source, len(missing))
    return summary


def predict(model: str, examples_dir: str, sample_submission: str, out_path: str, allow_missing: bool) -> dict:
    model_dir = resolve_version(model)
    manifest = output.require_complete(examples_dir)
    check_features(model_dir, config_lib.from_text(manifest["feature_config_text"]), examples_dir)
    files, _ = dataset.split_files(examples_dir, "test", manifest)
    fnames, scores, model_labels = score_examples(model_dir, files)
    order = submission_rows(sample_submission)
    return finish_submission(order, kaggle_layout.load_vocabulary(sample_submission), model_labels, dict(zip(fnames, scores)),
                   out_path, allow_missing, model_dir, "see the Beam job's dead_letters.jsonl")


# --------------------------------------------------------------------------------------------- server mode

def _audio_files(audio: list[str], sample_submission: str | None) -> tuple[list[str], dict[str, str]]:
    """(row order, {fname: path}): a folder's files as sample_submission.csv lists them, or files."""
    if len(audio) == 1 and os.path.isdir(audio[0]):
        if not sample_submission:
            raise ValueError("--audio is a folder: give --sample_submission for the clips to score and their order")
        order = submission_rows(sample_submission)
        return order, {f: os.path.join(audio[0], f) for f in order}
    missing = [a for a in audio if not os.path.isfile(a)]
    if missing:
        raise ValueError(f"--audio: not files or a folder: {missing[:5]}")
    order = [os.path.basename(a) for a in audio]
    dupes = sorted({f for f in order if order.count(f) > 1})
    if dupes:
        raise ValueError(f"--audio: several files are called {dupes}; a submission row needs one name per clip")
    return order, dict(zip(order, audio))


def _decode(path: str, cfg) -> np.ndarray:
    from pipeline.features import audio

    with open(path, "rb") as f:
        return audio.decode(f.read(), cfg.sample_rate, cfg.limits)[0]


SIGNATURES = {name: layout.SIGNATURE_INPUTS[name] for name in (layout.SERVING_WAVEFORM, layout.SERVING_AUDIO)}


def _read(path: str, cfg) -> bytes:
    from pipeline.features import audio

    size = os.path.getsize(path)
    if size == 0:
        raise audio.AudioError("empty_file", "file has 0 bytes")
    audio.check_file_size(size, cfg.limits)
    with open(path, "rb") as f:
        return f.read()


PROBE_SAMPLES = 160


def model_sample_rate(client) -> int | None:
    """The rate serving_waveform expects, from the model itself (one request of silence); None for
    a model exported before serving_waveform returned it."""
    waveform = np.zeros((1, PROBE_SAMPLES), np.float32)
    out = client.predict(layout.SERVING_WAVEFORM, {"waveform": waveform, "length": np.array([PROBE_SAMPLES], np.int32)})
    return int(out[layout.SAMPLE_RATE][0]) if layout.SAMPLE_RATE in out else None


def waveform_config(client, feature_cfg):
    """The feature config to decode and resample with for serving_waveform: the model's rate over
    `feature_cfg` (the flags' config, None when none was given); a flag naming another rate than
    the model's is refused rather than scored wrongly."""
    rate = model_sample_rate(client)
    if rate is None:
        if feature_cfg is None:
            raise ValueError(f"model {client.model} does not state its sample rate (exported before serving_waveform "
                             f"returned it): pass --feature_config with its assets/feature_config.pbtxt")
        log.warning("model %s does not state its sample rate; resampling to %d Hz as the flags say",
                    client.model, feature_cfg.sample_rate)
        return feature_cfg
    if feature_cfg is not None and feature_cfg.sample_rate != rate:
        raise ValueError(f"model {client.model} takes audio at {rate} Hz, but the feature config given says "
                         f"{feature_cfg.sample_rate} Hz: drop --feature_preset/--feature_config (the rate comes "
                         f"from the model) or pass the model's own")
    cfg = config_lib.FeatureConfig() if feature_cfg is None else type(feature_cfg).FromString(feature_cfg.SerializeToString())
    cfg.sample_rate = rate
    return cfg


def predict_server(client, audio_paths: list[str], sample_submission: str | None, out_path: str,
                   allow_missing: bool, feature_cfg, batch_size: int = 8, labels: str | None = None,
                   signature: str = layout.SERVING_WAVEFORM) -> dict:
    """Score audio files through TF Serving (serving_waveform: decoded and resampled here, to the
    rate the model states; serving_audio: the files' bytes, decoded in the model's graph); write the
    submission and errors. `feature_cfg`: the flags' FeatureConfig, or None."""
    from tqdm import tqdm

    from pipeline.features import audio
    from pipeline.features import feature_fn as features
    from pipeline.serving.client import ServingError

    if signature not in SIGNATURES:
        raise ValueError(f"--signature must be one of {sorted(SIGNATURES)}, got {signature!r}")
    client.check_signature(signature, SIGNATURES[signature])
    if signature == layout.SERVING_WAVEFORM:
        feature_cfg = waveform_config(client, feature_cfg)
    elif feature_cfg is None:
        feature_cfg = config_lib.FeatureConfig()      # serving_audio: only the file size limit is used here
    load = _read if signature == layout.SERVING_AUDIO else _decode
    order, paths = _audio_files(audio_paths, sample_submission)
    columns = kaggle_layout.load_vocabulary(labels or sample_submission) if (labels or sample_submission) else None
    errors, by_fname, model_labels = [], {}, None

    def send(batch: list[tuple[str, np.ndarray | bytes]]):
        nonlocal model_labels
        if signature == layout.SERVING_AUDIO:
            out = client.predict(signature, {"audio": np.array([b for _, b in batch], dtype=object)})
        else:
            waveform, length = features.pad_batch([w for _, w in batch])
            out = client.predict(signature, {"waveform": waveform, "length": length})
        model_labels = [x.decode() if isinstance(x, bytes) else str(x) for x in out["labels"][0]]
        for (fname, _), s in zip(batch, out[layout.SCORES]):
            by_fname[fname] = s

    def flush(batch):
        try:
            send(batch)
        except ServingError as e:
            if not e.refused:                   # the server or the connection: nothing more to do
                raise
            if len(batch) == 1:
                errors.append({"fname": batch[0][0], "reason": "refused_by_model", "detail": str(e)})
                return
            for item in batch:                  # one clip the model refuses must not take the batch with it
                flush([item])

    batch = []
    for fname in tqdm(order, desc="scoring", unit="clip", file=sys.stderr, disable=None):
        try:
            batch.append((fname, load(paths[fname], feature_cfg)))
        except audio.AudioError as e:
            errors.append({"fname": fname, "reason": e.reason, "detail": e.detail})
        except OSError as e:
            errors.append({"fname": fname, "reason": "read_error", "detail": f"{type(e).__name__}: {e}"})
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    report = out_path + ".errors.jsonl"
    fileio.write_text(report, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
    if errors:
        log.warning("%d files could not be scored; see %s", len(errors), report)
    if model_labels is None:
        raise ValueError(f"no clip could be scored; see {report}")
    return finish_submission(order, columns or model_labels, model_labels, by_fname, out_path, allow_missing,
                   f"{client.address} ({client.model})", f"see {report}")


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fatp-predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    local = ap.add_argument_group("local mode")
    local.add_argument("--model", help="SavedModel version directory, or the export base (newest)")
    local.add_argument("--examples", help="Beam job output in --mode test")
    server = ap.add_argument_group("server mode")
    server.add_argument("--server", help="a running TF Serving: grpc://HOST:8500 or http://HOST:8501")
    server.add_argument("--model_name", default=layout.MODEL_NAME)
    server.add_argument("--model_version", type=int, help="a version number (default: the one TF Serving serves)")
    server.add_argument("--audio", nargs="+", help="a folder (with --sample_submission) or audio files")
    server.add_argument("--signature", choices=sorted(SIGNATURES), default=layout.SERVING_WAVEFORM,
                        help="serving_waveform: files decoded and resampled here (any format the Beam job "
                             "reads); serving_audio: 16-bit PCM WAV files sent as they are, decoded and "
                             "resampled by the model")
    server.add_argument("--feature_preset", choices=sorted(config_lib.PRESETS),
                        help="not needed: the rate audio is resampled to comes from the model; only for a model "
                             "exported before it says so (refused if the model states another rate)")
    server.add_argument("--feature_config", help="a FeatureConfig text proto (e.g. the model's "
                                                 "assets/feature_config.pbtxt): decode limits, and the rate for "
                                                 "older models")
    server.add_argument("--batch_size", type=int, default=8, help="clips per request")
    server.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    server.add_argument("--retries", type=int, default=4, help="retries of a request when the server is UNAVAILABLE")
    ap.add_argument("--sample_submission", help="row order and label columns (required in local mode)")
    ap.add_argument("--output", default="submission.csv")
    ap.add_argument("--allow_missing", action="store_true",
                    help="write zeros for clips without scores instead of failing")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = arg_parser()
    args = ap.parse_args(argv)
    logs.setup("INFO")
    from pipeline.serving.client import ServingError, connect

    try:
        if args.server:
            if not args.audio:
                ap.error("server mode needs --audio")
            cfg = (config_lib.load_text(args.feature_config, args.feature_preset or "seed") if args.feature_config
                   else config_lib.feature_config(args.feature_preset) if args.feature_preset else None)
            client = connect(args.server, args.model_name, args.model_version, timeout_s=args.timeout,
                             retries=args.retries)
            try:
                predict_server(client, args.audio, args.sample_submission, args.output, args.allow_missing, cfg,
                               args.batch_size, signature=args.signature)
            finally:
                client.close()
        else:
            if not (args.model and args.examples and args.sample_submission):
                ap.error("local mode needs --model, --examples and --sample_submission (or use --server)")
            predict(args.model, args.examples, args.sample_submission, args.output, args.allow_missing)
    except (ValueError, FileNotFoundError, output.OutputError, ServingError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
