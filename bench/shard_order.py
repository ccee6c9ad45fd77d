"""Is the order of the training shards independent of the CSVs' order? (issue 29: shuffle quality)

    .ci/inenv python bench/shard_order.py --examples PIPELINE_ROOT/AudioExampleGen/examples/ID --data DATA [--records 3000]

The Trainer shuffles with a buffer of 2,048 records after interleaving the shards; that mixes
well only if the shards are not in the CSV's order (sorted file names: one label run, or one
source, for thousands of records). For the first --records of each train shard: the Spearman
rank correlation between a record's position and its row's line in its CSV, and the share of
noisy-source records in each tenth (the split is ~80% noisy at FAT2019's shape).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os

import numpy as np


def main() -> None:
    import tensorflow as tf
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--data", required=True, help="the Kaggle layout the Examples were made from")
    ap.add_argument("--records", type=int, default=3000)
    args = ap.parse_args()
    line = {}
    for name in ("train_curated.csv", "train_noisy.csv"):
        path = os.path.join(args.data, name)
        if os.path.exists(path):
            with open(path, newline="") as f:
                for i, row in enumerate(csv.reader(f)):
                    if i:
                        line[row[0]] = (name, i)
    out = {}
    for shard in sorted(glob.glob(os.path.join(args.examples, "Split-train", "*"))):
        fnames = []
        for raw in tf.data.TFRecordDataset(shard, compression_type="GZIP").take(args.records):
            ex = tf.train.Example.FromString(raw.numpy())
            fnames.append(ex.features.feature["fname"].bytes_list.value[0].decode())
        lines = [line[f][1] for f in fnames]
        noisy = np.array([line[f][0] == "train_noisy.csv" for f in fnames], float)
        tenths = [round(float(x.mean()), 2) for x in np.array_split(noisy, 10)]
        rho = float(spearmanr(np.arange(len(lines)), lines).statistic)
        out[os.path.basename(shard)] = {"records": len(fnames), "spearman_position_vs_csv_line": round(rho, 3),
                                        "noisy_share_per_tenth": tenths}
        print(os.path.basename(shard), out[os.path.basename(shard)], flush=True)
    os.makedirs(os.path.join(os.path.dirname(__file__), "out"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "out", "shard_order.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
