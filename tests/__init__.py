"""The test suite, a package so that shared helpers import as `tests.<module>`."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root
