"""Data parallelism: a 1-D ``Mesh`` over all devices, state replicated, batches sharded.

Multi-host (JAX's multi-controller runtime): every process runs the same program over the
global mesh; each reads only its own rows of every global batch (``process_shard``) and
``shard_batch`` assembles the global array from the processes' local rows.
"""

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


def process_shard() -> tuple[int, int]:
    """(this process, number of processes): which rows of a global batch this process reads."""
    return jax.process_index(), jax.process_count()


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows of a global batch -> the global batch, sharded over ``mesh``."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))
