"""One line when each component of a local run starts and ends, at the default log level.

LocalDagRunner and TFX's launcher say what they do only in INFO records of the absl logger
("Component Trainer is running.", "A cached execution 12 is used.", "Going to run a new execution
13", "Component Trainer is finished."), among hundreds of others. ComponentProgress sits on that
logger as a filter: it turns those four into

    [5/8] Trainer: running
    [5/8] Trainer: executed in 42 s          (or: cached, 0.4 s)

and lets every other record through only at the level the user asked for (--log_level).

The four records are INFO, and absl's set_verbosity (Keras calls it while training) would raise the
logger's level and stop them being made at all; `following` therefore keeps the logger at INFO
for the run and applies any level set meanwhile in the filter instead, so what others silence
stays silent.
"""
from __future__ import annotations

import contextlib
import logging
import time

RUNNING = "Component %s is running."
FINISHED = "Component %s is finished."
CACHED = "A cached execution %d is used."
EXECUTING = "Going to run a new execution %d"

log = logging.getLogger("fatp.pipeline")


class ComponentProgress(logging.Filter):
    def __init__(self, node_ids: list[str], level: int):
        super().__init__()
        self._ids, self._level = list(node_ids), level
        self.requested = logging.NOTSET          # a level set on the logger during the run
        self._node, self._t0, self._how = None, 0.0, None

    def _tag(self, node: str) -> str:
        n = self._ids.index(node) + 1 if node in self._ids else "?"
        return f"[{n}/{len(self._ids)}] {node}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == RUNNING and record.args:
            self._node, self._t0, self._how = record.args[0], time.time(), None
            log.info("%s: running", self._tag(self._node))
        elif record.msg == CACHED:
            self._how = "cached"
        elif record.msg == EXECUTING:
            self._how = "executed"
        elif record.msg == FINISHED and record.args:
            seconds = time.time() - self._t0
            how = {"cached": f"cached, {seconds:.1f} s", "executed": f"executed in {seconds:.0f} s"}.get(
                self._how, f"done in {seconds:.1f} s")
            log.info("%s: %s", self._tag(record.args[0]), how)
            self._node = None
        return record.levelno >= max(self._level, self.requested)

    def failed(self) -> None:
        """Say which component a failed run stopped in (LocalDagRunner raises before 'finished')."""
        if self._node is not None:
            log.error("%s: FAILED after %.0f s", self._tag(self._node), time.time() - self._t0)
            self._node = None


@contextlib.contextmanager
def following(node_ids: list[str], level: int, logger_name: str = "absl"):
    """Progress lines for the run inside the block (see the module's doc); the logger's level and
    filters are as before afterwards."""
    logger = logging.getLogger(logger_name)
    progress = ComponentProgress(node_ids, level)
    before = logger.level
    logger.setLevel(logging.INFO)
    logger.filters.insert(0, progress)       # before any other filter, which could drop its records first

    def set_level(value):                    # absl.logging.set_verbosity lands here during the run
        progress.requested = logging._checkLevel(value)

    logger.setLevel = set_level
    try:
        yield progress
    except BaseException:
        progress.failed()
        raise
    finally:
        del logger.setLevel                  # the class's method again
        logger.removeFilter(progress)
        logger.setLevel(progress.requested or before)
