"""Fixtures of the serving tests."""
import pytest


@pytest.fixture(scope="session")
def test_examples(train_examples, tmp_path_factory):
    """The fixture data's unlabelled test clips through the Beam job in test mode (what local
    fatp-predict scores)."""
    from pipeline.beam import cli

    out = tmp_path_factory.mktemp("test_examples") / "out"
    rc = cli.run(["--mode", "test", "--data_dir", str(train_examples.data), "--output_dir", str(out),
                  "--preset", "small", "--log_level", "WARNING"])
    assert rc == 0
    return out
