"""Fixtures of the Beam tests."""
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The demo's Kaggle layout with its deliberately broken rows and clips (40 train rows, 9 of
    them bad, and 10 test clips): SimpleNamespace(root, **demo_data.generate()'s fields), made once
    for the feature job's tests and DaskRunner's."""
    from pipeline.data import demo_data

    root = tmp_path_factory.mktemp("data")
    return SimpleNamespace(root=root, **demo_data.generate(str(root), train=40, test=10, seed=0, broken=True))
