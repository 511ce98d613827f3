"""The device-side local NN: global average pooling + one dense layer on the top-k channels."""

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-3  # the export folds this BN into the dense layer with the same epsilon


class LocalNN(nn.Module):
    """GAP -> (optional BN, as in the authors' code) -> Dense(num_classes)."""

    num_classes: int
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.mean(x, axis=(1, 2))
        if self.use_bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON)(x)
        return nn.Dense(self.num_classes)(x)
