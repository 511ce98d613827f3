"""Smoke test: the quick start shrunk to seconds (used by the test suite's CLI run).

Command: python -m launch.main --config=experiments/configs/smoke.py --workdir=/tmp/agilenn_smoke
Expected runtime: ~30-60 s on 2 CPU cores (mostly compilation). Expected result: a results.json;
accuracy is not meaningful after so few steps.
"""

from experiments.configs import common, quickstart

TINY_STAGES = ((1, 8, 1, 1), (2, 16, 1, 2))


def get_config():
    c = quickstart.get_config()
    c.data.image_size = 12
    c.data.val_fraction = 0.5
    common.set_networks(c, TINY_STAGES, 32, c.model.remote_width, c.model.reference_width)
    c.preselect.num_samples = 128
    common.set_optimisation(c, epochs=1, batch_size=64, log_every_steps=4, eval_every_epochs=1)
    return c
