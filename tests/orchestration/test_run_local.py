"""fatp-pipeline's flags for the ExampleGen's noisy source (issue 22 §2)."""
from pipeline import config
from pipeline.orchestration import run_local


def test_the_noisy_flags_set_the_example_gen_config():
    ap = run_local.arg_parser()
    cfg = lambda *flags: run_local._example_gen_config(ap.parse_args(["--data_dir", "d", *flags]))  # noqa: E731
    assert cfg().noisy == config.AudioExampleGenConfig.AUTO
    assert cfg("--noisy").noisy == config.AudioExampleGenConfig.ON
    assert cfg("--no_noisy").noisy == config.AudioExampleGenConfig.OFF
