import importlib

import pytest

from agilenn_jax.training import experiment

NAMES = [
    "cifar10",
    "cifar100",
    "cifar10_cpu",
    "svhn",
    "tiny_imagenet",
    "quickstart",
    "smoke",
]


@pytest.mark.parametrize("name", NAMES)
def test_config_is_locked_and_valid(name):
    c = importlib.import_module(f"experiments.configs.{name}").get_config()
    experiment.validate_config(c)
    with pytest.raises(AttributeError):
        c.not_a_field = 1  # locked: typos in overrides fail loudly


def test_paper_defaults():
    c = importlib.import_module("experiments.configs.cifar10").get_config()
    assert (c.loss.rho, c.model.k, c.model.extractor_channels[-1], c.model.num_centroids) == (
        0.8,
        5,
        24,
        8,
    )
    assert (c.train.lr, c.train.weight_decay, c.train.epochs, c.train.batch_size) == (
        0.1,
        5e-4,
        200,
        128,
    )
