"""Soft-to-hard vector quantizer (Agustsson et al. 2017) for the offloaded channels."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURE_MAX = 6.0  # ReLU6 upper bound: centroids live in (0, 6) like the features they code.
COLLAPSE_ATOL = 1e-3  # centroids closer than this code one level (features are int8 on device)


def centroid_init(num_centroids: int) -> jax.Array:
    """Evenly spaced centroids in (0, 6), stored as logits so they stay inside the range.

    Strongly typed float32: a weak-typed initial value becomes strong after the first optimiser
    update, which changes the jitted train step's signature and recompiles it (twice).
    """
    c = (jnp.arange(num_centroids, dtype=jnp.float32) + 0.5) * FEATURE_MAX / num_centroids
    return jnp.log(c / (FEATURE_MAX - c))


def tied_centroids(centroids: np.ndarray) -> list[list[int]]:
    """Groups (of >= 2 indices) of centroids with exactly equal values: the index rule sends
    only the lowest index of a group, so the others are unused code space."""
    return _groups(np.asarray(centroids, np.float64), 0.0)


def collapsed_centroids(centroids: np.ndarray, atol: float = COLLAPSE_ATOL) -> list[list[int]]:
    """Groups of neighbouring centroids closer than ``atol`` (sorted order): training pulled
    them together, so they code (almost) one level and waste code space. Reported by training
    and export; not an error."""
    return _groups(np.asarray(centroids, np.float64), atol)


def _groups(c: np.ndarray, atol: float) -> list[list[int]]:
    order = np.argsort(c, kind="stable")
    groups, cur = [], [int(order[0])]
    for a, b in zip(order[:-1], order[1:], strict=True):
        if abs(c[b] - c[a]) <= atol:
            cur.append(int(b))
        else:
            if len(cur) > 1:
                groups.append(cur)
            cur = [int(b)]
    if len(cur) > 1:
        groups.append(cur)
    return groups


class SoftHardQuantizer(nn.Module):
    """Hard nearest-centroid forward, soft (softmax-weighted) backward.

    Returns ``(quantized, indices)``: the forward value equals the hard centroid exactly, so the
    remote NN at training time sees exactly what the server decodes; the gradient flows to both
    the features and the centroids through the soft assignment.

    Always float32, whatever the model's compute dtype: bfloat16's 8-bit mantissa would move
    distances between nearby centroids (hence indices) and flatten the softmax.
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

    def assignment(self, x: jax.Array) -> jax.Array:
        """Soft assignment probabilities [..., L] of each value to each centroid: what a
        differentiable rate estimate (``losses.rate_bits``) reads."""
        d2 = jnp.square(jnp.asarray(x, jnp.float32)[..., None] - self.centroids())
        return jax.nn.softmax(-self.softness * d2, axis=-1)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.centroids()
        d2 = jnp.square(jnp.asarray(x, jnp.float32)[..., None] - c)
        indices = jnp.argmin(d2, axis=-1)
        hard = c[indices]
        soft = jnp.sum(jax.nn.softmax(-self.softness * d2, axis=-1) * c, axis=-1)
        return soft + jax.lax.stop_gradient(hard - soft), indices.astype(jnp.int32)
