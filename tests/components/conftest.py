import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_tfx_copy_per_executor():
    """These tests construct Beam executors themselves, as LocalDagRunner does under fatp-pipeline,
    which installs beam_staging first (else each executor leaves a 52 MB copy of TFX in /tmp)."""
    from pipeline.orchestration import beam_staging

    beam_staging.install()
