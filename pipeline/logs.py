"""How the project's commands start logging: one format, and TensorFlow's C++ start-up lines kept
off the terminal unless asked for (TF_CPP_MIN_LOG_LEVEL must be set before TensorFlow loads)."""
from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_tensorflow() -> None:
    """TensorFlow's C++ INFO and WARNING lines (oneDNN notices, CUDA probing) stay hidden; errors show.
    A TF_CPP_MIN_LOG_LEVEL the user set wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def setup(level: str | int = "INFO") -> None:
    """A command's logging: `level` for the root logger, on stderr, in FORMAT."""
    quiet_tensorflow()
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=FORMAT, stream=sys.stderr)
