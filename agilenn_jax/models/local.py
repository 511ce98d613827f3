"""The device-side local NN: global average pooling + one dense layer on the top-k channels."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-3  # the export folds this BN into the dense layer with the same epsilon


class LocalNN(nn.Module):
    """GAP -> (optional BN, as in the authors' code) -> Dense(num_classes).

    Computes in ``dtype``; the logits are float32 whatever it is (losses and the combiner read
    them).
    """

    num_classes: int
    use_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.mean(x, axis=(1, 2))
        if self.use_bn:
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON, dtype=self.dtype
            )(x)
        return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype)(x), jnp.float32)
