"""Smoke test: the quick start shrunk to seconds (used by the test suite's CLI run).

Command: python -m launch.main --config=experiments/configs/smoke.py --workdir=/tmp/agilenn_smoke
Expected runtime: ~30-60 s on 2 CPU cores (mostly compilation). Expected result: a results.json;
accuracy is not meaningful after so few steps.
"""

from experiments.configs import quickstart

TINY_STAGES = ((1, 8, 1, 1), (2, 16, 1, 2))


def get_config():
    c = quickstart.get_config()
    c.data.image_size = 12
    c.data.val_fraction = 0.5
    c.model.remote_stages = TINY_STAGES
    c.model.remote_head_channels = 32
    c.model.reference_stages = TINY_STAGES
    c.model.reference_head_channels = 32
    c.preselect.num_samples = 128
    for stage in (c.reference_train, c.train):
        stage.epochs = 1
        stage.batch_size = 64
        stage.log_every_steps = 4
        stage.eval_every_epochs = 1
    return c
