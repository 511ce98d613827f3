"""Soft-to-hard vector quantizer (Agustsson et al. 2017) for the offloaded channels."""

import flax.linen as nn
import jax
import jax.numpy as jnp

FEATURE_MAX = 6.0  # ReLU6 upper bound: centroids live in (0, 6) like the features they code.


def centroid_init(num_centroids: int) -> jax.Array:
    """Evenly spaced centroids in (0, 6), stored as logits so they stay inside the range.

    Strongly typed float32: a weak-typed initial value becomes strong after the first optimiser
    update, which changes the jitted train step's signature and recompiles it (twice).
    """
    c = (jnp.arange(num_centroids, dtype=jnp.float32) + 0.5) * FEATURE_MAX / num_centroids
    return jnp.log(c / (FEATURE_MAX - c))


class SoftHardQuantizer(nn.Module):
    """Hard nearest-centroid forward, soft (softmax-weighted) backward.

    Returns ``(quantized, indices)``: the forward value equals the hard centroid exactly, so the
    remote NN at training time sees exactly what the server decodes; the gradient flows to both
    the features and the centroids through the soft assignment.
    """

    num_centroids: int = 8
    softness: float = 1.0

    def setup(self) -> None:
        if self.num_centroids < 2:
            raise ValueError(f"quantizer needs >= 2 centroids, got {self.num_centroids}")
        self.centroid_logits = self.param(
            "centroid_logits", lambda _, n: centroid_init(n), self.num_centroids
        )

    def centroids(self) -> jax.Array:
        return FEATURE_MAX * jax.nn.sigmoid(self.centroid_logits)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.centroids()
        d2 = jnp.square(x[..., None] - c)
        indices = jnp.argmin(d2, axis=-1)
        hard = c[indices]
        soft = jnp.sum(jax.nn.softmax(-self.softness * d2, axis=-1) * c, axis=-1)
        return soft + jax.lax.stop_gradient(hard - soft), indices.astype(jnp.int32)
