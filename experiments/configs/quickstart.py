"""Quick start: AgileNN end to end on scikit-learn's bundled handwritten digits (no network).

Command: python -m launch.main --config=experiments/configs/quickstart.py --workdir=/tmp/agilenn_qs
Expected runtime: ~8-10 min on 2 CPU cores (reference pre-training, Algorithm 1, AgileNN training
with inline IG, evaluation on a seeded 28% hold-out (503) of the 1,797 images).
Expected result (measured, seed 0): 0.982 combined accuracy (chance is 0.10), remote-only 0.978,
local-only 0.165 (k=2 of 8 channels), achieved skewness 0.879 (rho=0.8), violation rate 0.044.
"""

from experiments.configs import cifar10, common

SMALL_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 1, 2))


def get_config():
    c = cifar10.get_config()
    c.data.source = "digits"
    c.data.name = "digits"
    c.data.eval_split = "val"
    c.data.val_fraction = 0.28  # 503 held-out images: the runtime check uses 500 of them
    c.data.image_size = 24  # 8x8 digits upsampled; extractor keeps 24x24
    c.data.pad = 1
    c.data.flip = False
    c.data.mean = (0.3, 0.3, 0.3)
    c.data.std = (0.4, 0.4, 0.4)
    c.model.extractor_channels = (16, 8)
    c.model.extractor_strides = (1, 1)
    c.model.k = 2
    common.set_networks(c, SMALL_STAGES, 128, remote_width=0.5, reference_width=0.75)
    c.preselect.num_samples = 1000
    c.reference_train.epochs = 15
    c.train.epochs = 30
    common.set_optimisation(c, batch_size=64, lr=0.05, log_every_steps=10, eval_every_epochs=5)
    c.eval_batch_size = 128
    return c
