"""AgileNN on CIFAR-100 (paper hyper-parameters; CIFAR-10 base with 100 classes).

Command: python -m launch.main --config=experiments/configs/cifar100.py --workdir=/tmp/agilenn_c100
Expected runtime: ~6-8 h on one A100/H100. Expected result: ~70-74% test accuracy (paper ~74%).
"""

from experiments.configs import cifar10


def get_config():
    c = cifar10.get_config()
    c.data.name = "cifar100"
    c.data.num_classes = 100
    c.data.mean = (0.5071, 0.4865, 0.4409)
    c.data.std = (0.2673, 0.2564, 0.2762)
    return c
