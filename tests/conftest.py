import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """One complete smoke-config run (reference + AgileNN + results) shared across test files."""
    from agilenn_jax import train
    from tests.helpers import smoke_config

    wd = str(tmp_path_factory.mktemp("trained"))
    train.run(smoke_config(), wd, "all")
    return wd
