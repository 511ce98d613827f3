"""The train state: trainable params, BN statistics, optimiser state and frozen variables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """``frozen`` holds what the optimiser never updates: the reference NN during AgileNN
    training (frozen unless ``xai.reference_lr > 0``, when the step moves it by its own SGD
    rule); it is saved with the state so a resumed run needs no other checkpoint."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    frozen: Any
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}

    def apply_gradients(self, grads: Any, batch_stats: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )


@functools.cache
def _jitted_init(module: nn.Module) -> Callable:
    # One compiled init per (equal) module and input shape for the whole process: a run builds
    # the same reference three times (stage 1, the stage-2 template, the reload) and each XLA
    # compile of an init costs ~4 s on 2 cores. The seed is an argument, not baked in.
    return jax.jit(functools.partial(module.init, train=False))


def init_variables(module: nn.Module, image_size: int, seed: int) -> dict[str, Any]:
    """Variables of ``module`` for a square RGB input, a pure function of ``seed``."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
    return _jitted_init(module)(rngs, x)


def new_state(
    module: nn.Module, variables: dict[str, Any], tx: optax.GradientTransformation, frozen: Any
) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        frozen=frozen,
        apply_fn=module.apply,
        tx=tx,
    )
