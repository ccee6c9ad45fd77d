"""Shared test setup: quiet TensorFlow's C++ logging before anything imports it.

tests/ is a package (tests/__init__.py), so `from tests import seed_reference` works when pytest
runs from the repository root.

`train_examples` (session scope) runs the Beam job once on generated data for the training tests;
`trained` (session scope) trains and exports the small model on them once.
"""
import csv
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MEL_SHAPE = (101, 40)   # the "small" feature preset
# fixtures that run the Beam job or train a model: a test using one is end to end, so slow
END_TO_END_FIXTURES = {"train_examples", "trained"}


def pytest_collection_modifyitems(config, items):
    """`make test-fast` (-m "not slow") promises unit tests: mark every test that needs the Beam
    job's output or a trained model as slow, whatever its module."""
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
NUM_CLASSES = 80
# .ci/run sets it: there a test that cannot run for want of a program (MariaDB, Chromium) fails
REQUIRE_ALL = "FATP_REQUIRE_ALL_TESTS"
_MISSING = "missing program: "


def missing_program(why: str):
    """Skip a test that needs a program this environment lacks, saying which, or fail it where
    every test must run ($FATP_REQUIRE_ALL_TESTS=1, as in CI)."""
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{why} (${REQUIRE_ALL}=1: every test must run here)", pytrace=False)
    pytest.skip(_MISSING + why)


def pytest_terminal_summary(terminalreporter):
    """End with how many tests could not run here for want of a program, and why."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = {}
    for report in skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if _MISSING in reason:
            why = reason.split(_MISSING, 1)[1]
            reasons[why] = reasons.get(why, 0) + 1
    if reasons:
        terminalreporter.write_line(f"{sum(reasons.values())} tests could not run here for want of a program:",
                                    yellow=True)
        for why, n in sorted(reasons.items()):
            terminalreporter.write_line(f"  {n}: {why}", yellow=True)


def _read_examples(out_dir, manifest):
    """{split: [SimpleNamespace(fname, labels, mel, source, serialized)]} in file order, parsed with
    the tf.train.Example protobuf itself (independent of pipeline.data.example_schema.parse_spec);
    source None where an Example has none (a one-source job's)."""
    import numpy as np
    import tensorflow as tf

    from pipeline.data import tfrecord

    splits = {}
    for split, info in manifest["splits"].items():
        rows = []
        for f in info["files"]:
            for rec in tf.data.TFRecordDataset(os.path.join(out_dir, f["path"]),
                                              compression_type=tfrecord.compression_type(f["path"])):
                raw = rec.numpy()
                feat = tf.train.Example.FromString(raw).features.feature
                rows.append(SimpleNamespace(
                    fname=feat["fname"].bytes_list.value[0].decode(),
                    labels=sorted(int(i) for i in feat["labels"].int64_list.value),
                    mel=np.asarray(feat["mel"].float_list.value, np.float32).reshape(MEL_SHAPE),
                    source=feat["source"].bytes_list.value[0].decode() if "source" in feat else None,
                    serialized=raw))
        splits[split] = rows
    return splits


@pytest.fixture(scope="session")
def train_examples(tmp_path_factory):
    """Demo data (64 labelled clips, no broken ones) through the Beam job with the small preset
    and a 25% eval split: a finished examples directory with a complete manifest.

    Fields: root, data (the Kaggle layout), out (the examples dir), manifest, labels (labels.txt),
    csv_labels ({fname: sorted label indices} from train_curated.csv), records (_read_examples)."""
    from pipeline.data import demo_data
    from pipeline.beam import cli
    from pipeline.data import job_output as output

    root = tmp_path_factory.mktemp("train_examples")
    data, out = root / "data", root / "examples"
    demo_data.generate(str(data), train=64, test=8, seed=0, broken=False)
    rc = cli.run(["--data_dir", str(data), "--output_dir", str(out), "--preset", "small", "--eval_ratio", "0.25",
                  "--log_level", "WARNING"])
    assert rc == 0
    manifest = output.require_complete(str(out))
    labels = (out / "labels.txt").read_text().splitlines()
    with open(data / "train_curated.csv", newline="") as f:
        csv_labels = {row["fname"]: sorted(labels.index(x) for x in row["labels"].split(","))
                      for row in csv.DictReader(f)}
    return SimpleNamespace(root=root, data=data, out=out, manifest=manifest, labels=labels, csv_labels=csv_labels,
                           records=_read_examples(str(out), manifest))


@pytest.fixture(scope="session")
def trained(train_examples, tmp_path_factory):
    """train() with the small preset (2 epochs) on the fixture's examples, with an export:
    (root, job, results)."""
    from pipeline import config
    from pipeline.training import train

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TF_CONFIG", raising=False)
        job = train.job_from_examples(str(train_examples.out), config.trainer_config("small"), str(root / "work"),
                                      str(root / "export"))
        results = train.train(job)
    return root, job, results
