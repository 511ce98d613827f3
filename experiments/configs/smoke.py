"""Smoke test: the quick start shrunk to seconds (used by the test suite's CLI and sweep runs).

Command: python -m launch.main --config=experiments/configs/smoke.py --workdir=/tmp/agilenn_smoke
Expected runtime: ~30-60 s on 2 CPU cores (mostly compilation). Expected result: a results.json;
accuracy is not meaningful after so few steps.

Sweep ``test`` (tests/test_sweep.py): loss.rho {0.8, 0.9} x seeds {0, 1}, 4 points of ~20 s
(rho=0.8 is the default: those points reuse the suite's compiled programs):
    python -m launch.sweep --config=experiments/configs/smoke.py:sweep=test --root=/tmp/smoke_sweep
"""

import ml_collections

from agilenn_jax import sweep
from experiments.configs import common, paper, quickstart

TINY_STAGES = ((1, 8, 1, 1), (2, 16, 1, 2))
ARGS = dict(sweep=("", "test"))  # get_sweep's grid; get_config ignores it


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The smoke config: quick-start data and method, tiny networks, one epoch per stage."""
    common.parse_arg(arg, **ARGS)
    c = paper.base()
    quickstart.digits(c)
    c.data.image_size = 12
    c.data.val_fraction = 0.5
    common.set_networks(c, TINY_STAGES, 32, c.model.remote_width, c.model.reference_width)
    c.preselect.num_samples = 128
    common.set_optimisation(c, epochs=1, batch_size=64, log_every_steps=4, eval_every_epochs=1)
    c.lock()
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """``sweep=test``: 2 rho x 2 seeds, what tests/test_sweep.py runs end to end."""
    if common.parse_arg(arg, **ARGS).sweep != "test":
        raise ValueError("name a sweep: sweep=test")
    return sweep.with_seeds(sweep.product(**{"loss.rho": (0.8, 0.9)}), (0, 1))
