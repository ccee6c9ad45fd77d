"""Shared test setup: quiet TensorFlow's C++ logging before anything imports it.

tests/ is a package (tests/__init__.py), so `from tests import seed_reference` works when pytest
runs from the repository root.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
