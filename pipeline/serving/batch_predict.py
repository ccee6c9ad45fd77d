"""Tag a whole archive: batch prediction as a Beam job, on any runner the feature job runs on.

    python -m pipeline.serving.batch_predict --model EXPORT_BASE_OR_VERSION --audio_dir FOLDER \\
        [--sample_submission DATA/sample_submission.csv] --output_dir OUT [--top_k 5] \\
        [--runner=DaskRunner --dask_local_workers=2 | --dask_client_address=HOST:8786]
    (console script: fatp-batch-predict; --data_dir DATA means --audio_dir DATA/test and
    --sample_submission DATA/sample_submission.csv)

The clips (every file under the folder, or the rows of sample_submission.csv) are decoded and
turned into features by the feature job's own transforms (pipeline.beam.transforms: ReadRows,
ComputeFeatures, the same dead letters), serialized as the feature job's tf.Examples, and scored by
Beam's RunInference with a KeyedModelHandler over SavedModelHandler: the SavedModel loaded with
tf.saved_model.load once per worker process, its serving_default signature called on batches
(Beam's TensorFlow handler cannot be used here: it does not import with TF 2.21, loads with Keras,
which refuses a SavedModel, and cannot pick a signature). The features are the model's
(assets/feature_config.pbtxt); --feature_config may change only the decode `limits`, any other
field is refused, as local fatp-predict refuses examples made with other features.

    OUT/scores-SSSSS-of-NNNNN.csv  fname,label_1,score_1,...,label_K,score_K: the top K labels of each clip
    OUT/submission.csv             with --sample_submission: its rows and columns, joined by file name
                                   without gathering every clip's scores (pipeline.serving.submission)
    OUT/dead_letters.jsonl         clips that could not be scored: fname, line, stage, reason, detail
    OUT/manifest.json              written last: status complete/failed, counts, shards, model

A row of sample_submission.csv without scores fails the run naming the clips (status failed, no
submission.csv, exit 1) unless --allow_missing writes zeros for it. Files are written under
temporary names and renamed; readers trust only a manifest whose status is complete.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from pipeline import config as config_lib
from pipeline import fileio
from pipeline import logs
from pipeline import saved_model_layout as layout
from pipeline.beam import runners
from pipeline.beam import transforms as bt
from pipeline.data import example_schema as examples
from pipeline.data import job_output as output
from pipeline.data import kaggle_layout
from pipeline.serving import predict
from pipeline.serving import submission as submission_lib

log = logging.getLogger("fatp.batch_predict")

SCORES_PREFIX = "scores"
SUBMISSION = "submission.csv"
# what a run writes (the only files --overwrite deletes): WriteToText's shards and temp folder,
# the report files, the submission and fileio.write_text's temporary names
_OURS = re.compile(r"^(?:scores-\d{5}-of-\d{5}\.csv|beam-temp-scores-[0-9a-f]+/.+"
                   r"|(?:manifest\.json|dead_letters\.jsonl|submission\.csv)(?:\.tmp)?)$")


class SavedModelHandler(ModelHandler):
    """Serialized tf.Examples -> scores [labels], through a SavedModel's signature (tf.saved_model.load:
    the graph TF Serving runs, no Keras). Loaded once per worker process by RunInference."""

    def __init__(self, model_dir: str, signature: str = layout.SERVING_DEFAULT, max_batch_size: int = 64):
        super().__init__()
        self._model_dir, self._signature, self._max_batch = model_dir, signature, max_batch_size

    def load_model(self):
        import tensorflow as tf

        return tf.saved_model.load(self._model_dir)

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf

        scores = model.signatures[self._signature](examples=tf.constant(list(batch)))[layout.SCORES].numpy()
        return [PredictionResult(x, s) for x, s in zip(batch, scores)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._max_batch}

    def get_metrics_namespace(self) -> str:
        return "fatp_batch_predict"


class _ListFolder(beam.DoFn):
    """A folder -> a Row for every file under it (fname relative to it, line = rank in sorted order)."""

    def process(self, folder: str):
        from apache_beam.io.filesystems import FileSystems

        prefix = folder.rstrip("/") + "/"
        paths = sorted(m.path for m in FileSystems.match([fileio.join(folder, "**")])[0].metadata_list)
        log.info("%s: %d files", folder, len(paths))
        for line, path in enumerate(paths, 1):
            yield kaggle_layout.Row(fname=path[len(prefix):] if path.startswith(prefix) else path, line=line,
                                    source=kaggle_layout.TEST)


def _example(clip_mel) -> tuple[str, bytes]:
    clip, mel = clip_mel
    return clip.row.fname, examples.serialize(clip.row.fname, (), mel, clip.source_seconds)


def _scores(keyed: tuple[str, PredictionResult]) -> tuple[str, np.ndarray]:
    fname, result = keyed
    return fname, np.asarray(result.inference, np.float32)


def top_k_line(fname_scores, labels: list[str], k: int) -> str:
    """fname,label_1,score_1,...: the k best labels of one clip, best first (a CSV line)."""
    import csv
    import io

    fname, scores = fname_scores
    best = np.argsort(-scores, kind="stable")[:k]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([fname, *(x for i in best for x in (labels[i], f"{scores[i]:.6g}"))])
    return buf.getvalue()


def _write_manifest(_, scored: int, dead: dict, shards: list, submission: dict | None, static: dict,
                    output_dir: str) -> dict:
    status, reason = output.STATUS_COMPLETE, ""
    if submission and "error" in submission:
        status, reason = "failed", submission["error"]
    elif scored == 0:
        status, reason = "failed", f"no clip could be scored; see {output.DEAD_LETTERS}"
    manifest = dict(static)
    manifest.update({
        "status": status, "status_reason": reason,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "counts": {"input_rows": scored + dead["failed"], "scored": scored, "failed": dead["failed"],
                   "failed_by_reason": dead["by_reason"]},
        "scores": sorted(os.path.basename(s) for s in shards),
        "submission": (None if not submission or "error" in submission else
                       {"path": SUBMISSION, **{k: submission[k] for k in ("rows", "scored", "missing", "missing_named")}}),
    })
    fileio.write_json(fileio.join(output_dir, output.MANIFEST), manifest)
    return manifest


def build(p: beam.Pipeline, *, model_dir: str, audio_dir: str, output_dir: str, cfg, labels: list[str],
          sample_submission: str | None = None, columns: list[str] | None = None,
          top_k: int = 5, batch_size: int = 8, inference_batch_size: int = 64, allow_missing: bool = False) -> None:
    """Add the job to `p`: clips -> features -> RunInference -> score shards, submission, dead letters, manifest."""
    if sample_submission:
        rows = p | "ReadRows" >> bt.ReadRows(sample_submission, None)
        clips, bad_rows = rows["rows"], rows[bt.DEAD]
    else:
        clips = (p | "Folder" >> beam.Create([audio_dir]) | "List" >> beam.ParDo(_ListFolder())
                 | "Spread" >> beam.Reshuffle())
        bad_rows = p | "NoBadRows" >> beam.Create([])
    feats = clips | "ComputeFeatures" >> bt.ComputeFeatures(audio_dir, cfg, batch_size)
    scored = (feats["mels"] | "Serialize" >> beam.Map(_example)
              | "RunInference" >> RunInference(KeyedModelHandler(SavedModelHandler(model_dir,
                                                                                   max_batch_size=inference_batch_size)))
              | "Scores" >> beam.Map(_scores))
    header = ",".join(["fname", *(f"{x}_{i}" for i in range(1, top_k + 1) for x in ("label", "score"))])
    shards = (scored | "TopK" >> beam.Map(top_k_line, labels, top_k)
              | "WriteScores" >> beam.io.WriteToText(fileio.join(output_dir, SCORES_PREFIX), file_name_suffix=".csv",
                                                     header=header))
    dead = ((bad_rows, feats[bt.DEAD]) | "AllDead" >> beam.Flatten()
            | "WriteDeadLetters" >> bt.WriteDeadLetters(fileio.join(output_dir, output.DEAD_LETTERS)))
    count = scored | "Count" >> beam.combiners.Count.Globally()
    trigger = p | "Trigger" >> beam.Create([None])
    submission = None
    if sample_submission:
        submission = beam.pvalue.AsSingleton(
            scored | "WriteSubmission" >> submission_lib.WriteSubmission(
                sample_submission, columns, labels, fileio.join(output_dir, SUBMISSION), allow_missing, model_dir,
                f"see {output.DEAD_LETTERS}"))
    static = {"mode": "batch_predict", "model": model_dir, "audio_dir": audio_dir,
              "sample_submission": sample_submission, "top_k": top_k, "allow_missing": allow_missing,
              "feature_config_text": config_lib.to_text(cfg), "dead_letters": output.DEAD_LETTERS}
    trigger | "WriteManifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(count), beam.pvalue.AsSingleton(dead),
                                          beam.pvalue.AsList(shards), submission, static, output_dir)


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fatp-batch-predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Flags not listed here go to Beam's PipelineOptions, as for the feature job "
                                        "(--runner, --direct_num_workers, --dask_client_address, --dask_local_workers).")
    ap.add_argument("--model", required=True, help="SavedModel version directory, or the export base (newest)")
    ap.add_argument("--data_dir", help="a Kaggle layout: its test/ and sample_submission.csv")
    ap.add_argument("--audio_dir", help="the folder of clips (every file under it, unless --sample_submission lists them)")
    ap.add_argument("--sample_submission", help="clips to score, row order and label columns of submission.csv")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--top_k", type=int, default=5, help="labels per clip in the score shards")
    ap.add_argument("--feature_config", help="a FeatureConfig text proto over the model's: only `limits` may differ")
    ap.add_argument("--batch_size", type=int, default=8, help="clips per call of the feature function")
    ap.add_argument("--inference_batch_size", type=int,
                    help="largest batch RunInference sends the model (default and most: the model's own "
                         "ServingConfig.max_batch, assets/serving_config.pbtxt)")
    ap.add_argument("--allow_missing", action="store_true",
                    help="write zeros for rows of sample_submission.csv without scores instead of failing")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous run's output in --output_dir")
    ap.add_argument("--log_level", default="INFO")
    return ap


def _features(model_dir: str, feature_config: str | None):
    cfg = predict.model_features(model_dir)
    if cfg is None:
        raise ValueError(f"{model_dir} has no {layout.FEATURES_ASSET}: the features to compute are unknown")
    if feature_config:
        from google.protobuf import text_format

        theirs = type(cfg).FromString(cfg.SerializeToString())
        try:
            text_format.Merge(fileio.read_text(feature_config), theirs)
        except text_format.ParseError as e:
            raise ValueError(f"--feature_config {feature_config}: {e}") from None
        predict.check_features(model_dir, theirs, f"--feature_config {feature_config} (merged over the model's)")
        cfg = theirs
    config_lib.validate(cfg)
    return cfg


def run(argv: list[str] | None = None) -> int:
    """0 done, 1 the run failed (manifest says why), 2 refused to start."""
    args, beam_args = arg_parser().parse_known_args(argv)
    logs.setup(args.log_level)
    try:
        audio_dir = args.audio_dir or (fileio.join(args.data_dir, "test") if args.data_dir else None)
        sample = args.sample_submission or (fileio.join(args.data_dir, "sample_submission.csv") if args.data_dir else None)
        if not audio_dir:
            raise ValueError("give --audio_dir (a folder of clips) or --data_dir (a Kaggle layout)")
        if args.top_k < 1:
            raise ValueError("--top_k must be >= 1")
        model_dir = predict.resolve_version(args.model)
        cfg = _features(model_dir, args.feature_config)
        limit = predict.model_max_batch(model_dir)
        inference_batch = args.inference_batch_size or limit
        if not 1 <= inference_batch <= limit:
            raise ValueError(f"--inference_batch_size {inference_batch}: the model takes 1 to {limit} examples "
                             "a call (its ServingConfig.max_batch)")
        labels = kaggle_layout.load_vocabulary(os.path.join(model_dir, layout.LABELS_ASSET))
        if args.top_k > len(labels):
            raise ValueError(f"--top_k {args.top_k}: the model has {len(labels)} labels")
        columns = None
        if sample:
            predict.submission_rows(sample)       # refuses a sample with rows that cannot be used, before the job
            columns = kaggle_layout.load_vocabulary(sample)
            if sorted(columns) != sorted(labels):
                raise ValueError(f"{sample}'s label columns differ from the model's labels "
                                 f"({len(set(columns) ^ set(labels))} labels differ)")
        from apache_beam.io.filesystems import FileSystems
        if not FileSystems.exists(audio_dir):
            raise ValueError(f"--audio_dir {audio_dir} does not exist")
        output.prepare(args.output_dir, args.overwrite, inputs=[p for p in (audio_dir, sample, model_dir) if p],
                       is_ours=lambda rel: bool(_OURS.match(rel)))
    except (ValueError, FileNotFoundError, output.OutputError) as e:
        log.error("%s", e)
        return 2
    log.info("scoring %s with %s (%s features), %s -> %s", sample or f"every file under {audio_dir}", model_dir,
             "x".join(map(str, config_lib.mel_shape(cfg))), audio_dir, args.output_dir)
    t0 = time.time()
    with beam.Pipeline(options=runners.pipeline_options(beam_args)) as p:
        build(p, model_dir=model_dir, audio_dir=audio_dir, output_dir=args.output_dir, cfg=cfg, labels=labels,
              sample_submission=sample, columns=columns, top_k=args.top_k, batch_size=args.batch_size,
              inference_batch_size=inference_batch, allow_missing=args.allow_missing)
    seconds = time.time() - t0
    manifest = output.read_manifest(args.output_dir)
    if manifest is None:
        log.error("the pipeline finished without writing %s", output.MANIFEST)
        return 1
    c = manifest["counts"]
    log.info("%d clips -> %d scored, %d dead letters %s in %.1f s (%.1f clips/s); %s", c["input_rows"], c["scored"],
             c["failed"], c["failed_by_reason"] or "", seconds, c["input_rows"] / max(seconds, 1e-9),
             fileio.join(args.output_dir, output.MANIFEST))
    if manifest["status"] != output.STATUS_COMPLETE:
        log.error("batch prediction failed: %s", manifest["status_reason"])
        return 1
    return 0


def main() -> None:
    from pipeline.beam import cli

    logs.quiet_tensorflow()
    cli.exit_without_teardown(run())


if __name__ == "__main__":
    main()
