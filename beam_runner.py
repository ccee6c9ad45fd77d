#!/usr/bin/env python3
"""Run the feature job on any Beam runner:

    python beam_runner.py --runner=DirectRunner --data_dir DATA --output_dir OUT [--preset small]

Reads the Kaggle FAT2019 layout, writes TFRecords of tf.Example (train/eval; uncompressed unless
--compression says otherwise), labels.txt, dead_letters.jsonl and manifest.json. `--help` lists
the job's flags; every other flag is passed to Beam's PipelineOptions. Exit status: 0 finished,
1 failed (see the log and manifest.json), 2 refused to start (e.g. the output directory is not
empty).
"""
import sys

# This process runs only the feature job, which never uses Keras; but TensorFlow 2.21 imports Keras
# eagerly when it is installed (its __init__ loads keras.src.optimizers, and tolerates an
# ImportError there), 1.5-3.3 s of each start here (bench/README.md, issue 9). Hidden from this
# process only, as if not installed: TFX components and training import it as usual.
sys.modules.setdefault("keras", None)


def main():
    from pipeline import logs

    logs.quiet_tensorflow()
    logs.filter_native_stderr(sys.argv[1:])   # TensorFlow's start-up notices (pipeline/logs.py)
    from pipeline.beam.cli import main as job_main

    job_main()


if __name__ == "__main__":
    main()
