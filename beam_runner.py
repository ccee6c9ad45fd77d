#!/usr/bin/env python3
"""Run the feature job on any Beam runner:

    python beam_runner.py --runner=DirectRunner --data_dir DATA --output_dir OUT [--preset small]

Reads the Kaggle FAT2019 layout, writes GZIP TFRecords of tf.Example (train/eval), labels.txt,
dead_letters.jsonl and manifest.json. `--help` lists the job's flags; every other flag is passed
to Beam's PipelineOptions. Exit status: 0 finished, 1 failed (see the log and manifest.json),
2 refused to start (e.g. the output directory is not empty).
"""
from pipeline.job import main

if __name__ == "__main__":
    main()
