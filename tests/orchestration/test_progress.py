"""pipeline/orchestration/progress.py: the start and end line of each component, from the records
LocalDagRunner and TFX's launcher write through absl (the same calls, made here directly), while
absl.logging.set_verbosity is called in between, as Keras does while training."""
import logging

from absl import logging as absl_logging

from pipeline.orchestration import progress


def test_one_line_per_start_and_end_and_other_records_only_at_the_asked_level(caplog):
    caplog.set_level(logging.INFO, logger="fatp.pipeline")
    absl_logger = logging.getLogger("absl")
    before = absl_logger.level
    with progress.following(["AudioExampleGen", "Trainer", "Pusher"], logging.ERROR):
        absl_logging.info(progress.RUNNING, "AudioExampleGen")
        absl_logging.info(progress.CACHED, 3)
        absl_logging.info(progress.FINISHED, "AudioExampleGen")
        absl_logging.set_verbosity(absl_logging.WARNING)      # Keras, mid-run: must not stop the lines
        absl_logging.info(progress.RUNNING, "Trainer")
        absl_logging.info(progress.EXECUTING, 4)
        absl_logging.info("Publishing output artifacts for execution 4")   # chatter: not shown at ERROR
        absl_logging.info(progress.FINISHED, "Trainer")
    lines = [r.getMessage() for r in caplog.records if r.name == "fatp.pipeline"]
    assert lines[0] == "[1/3] AudioExampleGen: running" and lines[1].startswith("[1/3] AudioExampleGen: cached, ")
    assert lines[2] == "[2/3] Trainer: running" and lines[3].startswith("[2/3] Trainer: executed in ")
    assert not [r for r in caplog.records if "Publishing" in r.getMessage()]
    assert absl_logger.level == logging.WARNING and "setLevel" not in vars(absl_logger)   # what absl asked for, after
    absl_logger.setLevel(before)


def test_a_component_that_fails_is_named(caplog):
    caplog.set_level(logging.INFO, logger="fatp.pipeline")
    try:
        with progress.following(["AudioExampleGen", "Trainer"], logging.ERROR):
            absl_logging.info(progress.RUNNING, "Trainer")
            raise RuntimeError("the Trainer's executor failed")
    except RuntimeError:
        pass
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "fatp.pipeline"]
    assert len(errors) == 1 and errors[0].startswith("[2/2] Trainer: FAILED after ")
