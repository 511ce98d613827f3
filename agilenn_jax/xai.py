"""Feature attributions of the frozen reference NN: Integrated Gradients and gradient saliency.

Everything here is a pure function of ``apply_fn(features) -> logits`` and is meant to run inside
a jitted loss that is itself differentiated (the AgileNN step takes gradients *through* the
attribution). ``apply_fn`` must treat samples independently (BN in inference mode), which lets one
backward pass over the batch give every sample's own gradient.

With a zero baseline the trapezoid rule's first point is the gradient at ``0``. That point does
not depend on the features nor on any trainable parameter, so it is computed once per step from a
single all-zero input (one vector-Jacobian product per class) under ``stop_gradient``; the
expensive second-order term is then only paid for the remaining ``m - 1`` points.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[[jax.Array], jax.Array]

RULES = ("riemann", "trapezoid", "gauss_legendre")
TARGETS = ("loss", "logit")
METHODS = ("ig", "saliency")
# How a channel's attributions over H, W become one importance: ``l1`` sums their magnitudes
# (the authors' code: reduce_sum(|IG|) over H, W); ``net`` takes the magnitude of their sum.
AGGREGATES = ("l1", "net")


def _check(rule: str, target: str, steps: int) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown IG rule {rule!r}; expected one of {RULES}")
    if target not in TARGETS:
        raise ValueError(f"unknown attribution target {target!r}; expected one of {TARGETS}")
    if steps < (2 if rule == "trapezoid" else 1):
        raise ValueError(f"IG with the {rule} rule needs more steps, got steps={steps}")


def _check_chunk(chunk: int) -> None:
    if chunk < 0:
        raise ValueError(f"IG chunk size must be >= 0 (0 = all points at once), got {chunk}")


def path_points(steps: int, rule: str) -> tuple[jax.Array, jax.Array]:
    """Interpolation coefficients alpha_j in [0, 1] and quadrature weights (sum to 1).

    ``riemann``: right Riemann sum, alpha_j = j/m for j = 1..m.
    ``trapezoid``: alpha_j = j/(m-1) for j = 0..m-1, half weight on both ends; m = 2 is the
    authors' (grad(baseline) + grad(x)) / 2.
    ``gauss_legendre``: the m-point Gauss-Legendre nodes and weights mapped to [0, 1]: exact
    for path integrands of degree 2m - 1, so m = 3-4 matches a much longer trapezoid. It has no
    point at the baseline, so the zero-baseline saving does not apply; worth it for m > 2.
    """
    _check(rule, "loss", steps)
    if rule == "gauss_legendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return jnp.asarray((nodes + 1.0) / 2.0, jnp.float32), jnp.asarray(w / 2.0, jnp.float32)
    if rule == "riemann":
        alphas = jnp.arange(1, steps + 1, dtype=jnp.float32) / steps
        weights = jnp.full((steps,), 1.0 / steps, jnp.float32)
    else:
        alphas = jnp.linspace(0.0, 1.0, steps, dtype=jnp.float32)
        weights = jnp.full((steps,), 1.0 / (steps - 1), jnp.float32)
        weights = weights.at[0].mul(0.5).at[-1].mul(0.5)
    return alphas, weights


def _target_cotangent(logits: jax.Array, labels: jax.Array, target: str) -> jax.Array:
    """d target / d logits for each sample: CE loss on the true label, or the true-class logit."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if target == "loss":
        return jax.nn.softmax(logits) - onehot
    return onehot


def target_value(logits: jax.Array, labels: jax.Array, target: str) -> jax.Array:
    """The attributed scalar per sample, F(x): CE loss or the true-class logit."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if target == "loss":
        return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
    return jnp.sum(onehot * logits, axis=-1)


def _grad_at(
    apply_fn: ApplyFn, x: jax.Array, labels: jax.Array, target: str
) -> tuple[jax.Array, jax.Array]:
    """Per-sample gradient of the target w.r.t. ``x`` and the logits at ``x`` (one fwd + bwd)."""
    logits, vjp = jax.vjp(apply_fn, x)
    (g,) = vjp(_target_cotangent(logits, labels, target))
    return g, logits


def zero_baseline_grad(
    apply_fn: ApplyFn, feature_shape: tuple[int, ...], labels: jax.Array, target: str
) -> jax.Array:
    """Gradient of the target at the all-zero input for each label, without second order."""
    zero = jnp.zeros((1, *feature_shape), jnp.float32)
    logits0, vjp = jax.vjp(apply_fn, zero)
    num_classes = logits0.shape[-1]
    classes = jnp.arange(num_classes)
    cts = jax.vmap(lambda c: _target_cotangent(logits0, c[None], target))(classes)
    per_class = jax.vmap(lambda ct: vjp(ct)[0][0])(cts)  # [num_classes, *feature_shape]
    return jax.lax.stop_gradient(per_class[labels])


def integrated_gradients(
    apply_fn: ApplyFn,
    x: jax.Array,
    labels: jax.Array,
    steps: int = 2,
    rule: str = "trapezoid",
    target: str = "loss",
    chunk: int = 0,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """IG of ``target`` w.r.t. ``x`` (zero baseline): ``x * sum_j w_j grad F(alpha_j x)``.

    Returns ``(attributions [B, ...], logits at x [B, num_classes])``; the logits at x serve
    the "trust IG only where the reference is right" rule (free when the rule has the alpha = 1
    point, one extra forward pass for Gauss-Legendre).

    Memory: ``chunk = 0`` batches all gradient points with ``jax.vmap`` (fastest; activations of
    every point live at once, and the outer gradient keeps them all). ``chunk = c`` evaluates
    them ``c`` at a time with ``lax.map``: peak memory of c points, same result. ``remat``
    wraps each point in ``jax.checkpoint`` so the outer (second-order) gradient recomputes a
    point's forward pass instead of storing it.
    """
    _check(rule, target, steps)
    _check_chunk(chunk)
    alphas, weights = path_points(steps, rule)
    if rule == "trapezoid":  # alpha_0 = 0: closed-form, parameter-free point.
        g0 = zero_baseline_grad(apply_fn, x.shape[1:], labels, target)
        alphas, w_rest = alphas[1:], weights[1:]
        total = weights[0] * g0
    else:
        w_rest = weights
        total = jnp.zeros_like(x)

    def point(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _grad_at(apply_fn, a * x, labels, target)

    if remat:
        point = jax.checkpoint(point)
    if len(alphas) == 1:  # m = 2 trapezoid: no batching axis (XLA:CPU lays a size-1 one badly)
        grads, logits = jax.tree.map(lambda v: v[None], point(alphas[0]))
    elif chunk:
        grads, logits = jax.lax.map(point, alphas, batch_size=min(chunk, len(alphas)))
    else:
        grads, logits = jax.vmap(point)(alphas)  # [m', B, ...], [m', B, K]
    total = total + jnp.tensordot(w_rest, grads, axes=1)
    if rule == "gauss_legendre":  # no alpha = 1 node: the logits at x need their own pass
        return x * total, apply_fn(x)
    return x * total, logits[-1]


def saliency(
    apply_fn: ApplyFn, x: jax.Array, labels: jax.Array, target: str = "loss"
) -> tuple[jax.Array, jax.Array]:
    """Plain gradient saliency |dF/dx| (the paper's cheaper alternative to IG)."""
    _check("riemann", target, 1)
    g, logits = _grad_at(apply_fn, x, labels, target)
    return jnp.abs(g), logits


def attribute(
    apply_fn: ApplyFn,
    x: jax.Array,
    labels: jax.Array,
    method: str = "ig",
    steps: int = 2,
    rule: str = "trapezoid",
    target: str = "loss",
    chunk: int = 0,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Dispatch on ``method`` (``ig`` or ``saliency``)."""
    if method == "ig":
        return integrated_gradients(apply_fn, x, labels, steps, rule, target, chunk, remat)
    if method == "saliency":
        return saliency(apply_fn, x, labels, target)
    raise ValueError(f"unknown attribution method {method!r}; expected one of {METHODS}")


def channel_importance(
    attributions: jax.Array, aggregate: str = "net", eps: float = 1e-12
) -> jax.Array:
    """Per-channel importance [B, C] over H, W, normalised to sum to 1 over channels.

    ``net``: |sum over H, W|, so positive and negative attributions within a channel cancel.
    ``l1``: sum over H, W of |attribution|, as the authors' code computes it. Why both: on
    CIFAR-10 the weak local channel behind most ordering violations carried ~half of the
    attribution mass but with both signs, its net sum ~0 (README, "CIFAR-10 on CPU").

    Always float32 (the sum over H, W and the normalisation feed the losses), whatever dtype
    the attributions come in."""
    if aggregate not in AGGREGATES:
        raise ValueError(
            f"unknown importance aggregate {aggregate!r}; expected one of {AGGREGATES}"
        )
    attributions = jnp.asarray(attributions, jnp.float32)
    axes = tuple(range(1, attributions.ndim - 1))
    if aggregate == "l1":
        per_channel = jnp.sum(jnp.abs(attributions), axis=axes)
    else:
        per_channel = jnp.abs(jnp.sum(attributions, axis=axes))
    return per_channel / (jnp.sum(per_channel, axis=-1, keepdims=True) + eps)
