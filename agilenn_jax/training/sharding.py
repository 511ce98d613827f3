"""Data parallelism: a 1-D ``Mesh`` over all devices, state replicated, batches sharded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """``step_fn(state, batch, rng) -> (state, metrics)`` jitted with the state donated."""
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(
        step_fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0
    )


def jit_eval_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """``step_fn(state, batch) -> metrics`` jitted; the state is read, not donated."""
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(step_fn, in_shardings=(rep, data), out_shardings=rep)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    return jax.device_put(batch, NamedSharding(mesh, P(DATA_AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))
