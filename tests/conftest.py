import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A persistent XLA compilation cache shared by this process and every subprocess a test starts:
# the suite compiles the same smoke-model programs many times (fixture, resume runs, CLI runs,
# 8-device run), and on 2 cores compilation, not execution, dominates. Same program -> same
# binary, so results are unchanged (the cache key covers the HLO, jax version and flags).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax_compilation_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """One complete smoke-config run (reference + AgileNN + results) shared across test files."""
    from agilenn_jax.training import experiment
    from tests.helpers import smoke_config

    wd = str(tmp_path_factory.mktemp("trained"))
    experiment.run(smoke_config(), wd, "all")
    return wd
