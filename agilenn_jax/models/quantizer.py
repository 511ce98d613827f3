"""Soft-to-hard vector quantizer (Agustsson et al. 2017) for the offloaded channels."""

import functools

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


def _soft_grads(x: jax.Array, c: jax.Array, g: jax.Array, softness: float):
    """(dx, dc) of ``sum(g * soft(x))``, written per centroid (L static terms on arrays of x's
    shape, never an [..., L] tensor): with p the soft assignment and E its mean,
    d soft / dx = 2 s Var_p(c) and d soft / dc_l = p_l (1 + 2 s (x - c_l)(c_l - E[c]))."""
    s, num = softness, c.shape[0]
    d = [x - c[i] for i in range(num)]
    z = [-s * jnp.square(di) for di in d]
    top = functools.reduce(jnp.maximum, z)
    e = [jnp.exp(zi - top) for zi in z]
    inv = 1.0 / sum(e[1:], e[0])
    p = [ei * inv for ei in e]
    mean = sum((p[i] * c[i] for i in range(1, num)), p[0] * c[0])
    var = sum(
        (p[i] * jnp.square(c[i] - mean) for i in range(1, num)), p[0] * jnp.square(c[0] - mean)
    )
    terms = [g * p[i] * (1.0 + 2.0 * s * d[i] * (c[i] - mean)) for i in range(num)]
    zero = [jnp.zeros((), x.dtype)] * num
    # one variadic reduction: a single pass over the L terms, not L passes
    sums = jax.lax.reduce(
        terms, zero, lambda a, b: [u + v for u, v in zip(a, b, strict=True)], tuple(range(x.ndim))
    )
    dc = jnp.stack(sums)
    return g * (2.0 * s) * var, dc


# Samples per piece of the CPU backward: ~0.6 MB per array at 32x32x19, so the pieces' L terms
# stay in cache instead of streaming L arrays of the whole batch through memory.
CPU_CHUNK = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def soft_to_hard(x: jax.Array, c: jax.Array, softness: float) -> tuple[jax.Array, jax.Array]:
    """(nearest centroid of every value, its index); gradients are those of the soft value
    ``sum_l softmax(-softness (x - c)^2)_l c_l`` (the straight-through soft-to-hard rule).

    A custom VJP because autodiff of ``soft + stop_gradient(hard - soft)`` streamed several
    [..., L] tensors through memory: a fifth of the CPU AgileNN step on CIFAR-10. The backward
    is closed-form (``_soft_grads``) and, on CPU, runs a few samples at a time (5-6x faster).
    """
    indices = jnp.argmin(jnp.square(x[..., None] - c), axis=-1)
    return c[indices], indices.astype(jnp.int32)


def _soft_to_hard_fwd(x, c, softness):
    return soft_to_hard(x, c, softness), (x, c)


def _soft_to_hard_bwd(softness, res, cts):
    x, c = res
    g = cts[0]
    if jax.default_backend() != "cpu" or x.ndim < 2:
        return _soft_grads(x, c, g, softness)
    n = x.shape[0]
    chunk = max(d for d in range(1, CPU_CHUNK + 1) if n % d == 0)
    pieces = (x.reshape(n // chunk, -1), g.reshape(n // chunk, -1))
    dx, dc = jax.lax.map(lambda xg: _soft_grads(xg[0], c, xg[1], softness), pieces)
    return dx.reshape(x.shape), jnp.sum(dc, axis=0)


soft_to_hard.defvjp(_soft_to_hard_fwd, _soft_to_hard_bwd)


class SoftHardQuantizer(nn.Module):
    """Hard nearest-centroid forward, soft (softmax-weighted) backward.

    Returns ``(quantized, indices)``: the forward value is the hard centroid exactly, so the
    remote NN at training time sees exactly what the server decodes; the gradient flows to both
    the features and the centroids through the soft assignment (``soft_to_hard``).

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
        return soft_to_hard(jnp.asarray(x, jnp.float32), self.centroids(), float(self.softness))


GAIN_TARGET = 1.0  # the mean a gained channel is brought to (plain CE's offloaded mean ~0.9)
GAIN_MOMENTUM = 0.99  # running mean per step: ~100 steps to follow the extractor


def channel_gain(mean: jax.Array, max_gain: float) -> jax.Array:
    """clip(GAIN_TARGET / mean, 1, max_gain): what each channel is multiplied by before the
    quantizer. Never below 1 (a wide channel keeps its scale) and capped, so a channel the
    device's int8 features resolve in only a few steps is not blown up to many codes."""
    return jnp.clip(GAIN_TARGET / jnp.maximum(mean, 1e-6), 1.0, max_gain)


class ChannelGain(nn.Module):
    """A per-channel gain before the shared-codebook quantizer, from a running channel mean.

    Why: the XAI terms meet rho by shrinking the offloaded channels (with zero-baseline IG a
    channel's importance scales with its magnitude): on CIFAR-10 at the CPU budget their means
    fell to 0.002-0.8 while the 8 shared centroids span (0, 6), so most channels used 1-3 codes.
    The gain lets each channel fill the codebook again while the reference still sees the
    shrunk features. A statistic (batch_stats, updated in training like BatchNorm's), not a
    parameter: no gradient flows into it. The export folds it into the extractor's output BN
    (``inference.fold_channel_gain``), so the device graph and its thresholds are unchanged.
    """

    max_gain: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.max_gain < 1.0:
            raise ValueError(f"channel gain's max must be >= 1, got {self.max_gain}")
        mean = self.variable(
            "batch_stats", "mean", lambda: jnp.full((x.shape[-1],), GAIN_TARGET, jnp.float32)
        )
        x = jnp.asarray(x, jnp.float32)
        if train and not self.is_initializing():
            batch = jnp.mean(jax.lax.stop_gradient(x), axis=tuple(range(x.ndim - 1)))
            mean.value = GAIN_MOMENTUM * mean.value + (1.0 - GAIN_MOMENTUM) * batch
        # min(., 6): the centroids lie below 6, so no index changes, and the device computes
        # exactly this as ReLU6 of its output BN scaled by the gain (inference.fold_channel_gain)
        return jnp.minimum(x * channel_gain(mean.value, self.max_gain), FEATURE_MAX)
