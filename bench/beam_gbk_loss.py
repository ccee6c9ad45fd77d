"""Does Beam's local runner lose elements? read TFRecords -> GroupByKey -> count, repeated per
running mode, against the records the files hold (counted with tf.data).

    .ci/inenv python bench/beam_gbk_loss.py --files 'PIPELINE_ROOT/TestExampleGen/examples/*/Split-test/*' --runs 8

Found on the ¼-size FAT2019 run (issue 29): BulkInferrer wrote 839 predictions for 840 test
Examples; traced to Beam 2.77's FnApiRunner with --direct_running_mode=multi_threading (2 workers),
where a GroupByKey fed by a TFRecord read of large elements (Examples of ~280 KB) sometimes comes
back short. pipeline.beam.runners.ONE_WORKER is the consequence.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile

import apache_beam as beam

MODES = {"multi_threading x2": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
         "multi_processing x2": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
         "in_memory x1": ["--direct_num_workers=1", "--direct_running_mode=in_memory"]}


def once(pattern: str, flags: list[str]) -> int:
    out = os.path.join(tempfile.mkdtemp(), "count")
    with beam.Pipeline(argv=["--runner=FnApiRunner", *flags]) as p:
        _ = (p | beam.io.ReadFromTFRecord(pattern) | beam.Map(lambda r: (0, r)) | beam.GroupByKey()
             | beam.FlatMap(lambda kv: kv[1]) | beam.combiners.Count.Globally() | beam.io.WriteToText(out))
    with open(glob.glob(out + "*")[0]) as f:
        return int(f.read())


def main() -> None:
    import tensorflow as tf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", required=True, help="a glob of TFRecord files (GZIP by their .gz suffix)")
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    files = sorted(glob.glob(args.files))
    want = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP" if files[0].endswith(".gz") else ""))
    result = {"records": want}
    for name, flags in MODES.items():
        counts = [once(args.files, flags) for _ in range(args.runs)]
        result[name] = {"runs": args.runs, "short_runs": sum(c != want for c in counts), "counts": counts}
        print(name, result[name], flush=True)
    os.makedirs(os.path.join(os.path.dirname(__file__), "out"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "out", "beam_gbk_loss.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
