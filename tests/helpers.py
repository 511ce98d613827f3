"""Shared test fixtures: the smoke config, shrunk further where a test needs it."""

from experiments.configs import smoke


def smoke_config(**train_overrides):
    c = smoke.get_config()
    for key, value in train_overrides.items():
        c.train[key] = value
    return c
