import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agilenn_jax import xai


class SmoothNet(nn.Module):
    """A small smooth (tanh) conv net: IG completeness holds exactly in the limit m -> inf."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(8, (3, 3))(x))
        x = jnp.tanh(nn.Conv(8, (3, 3))(x))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


def _net(seed=0, shape=(3, 6, 6, 4)):
    net = SmoothNet()
    x = jax.random.uniform(jax.random.key(seed + 1), shape, minval=0.0, maxval=3.0)
    v = net.init(jax.random.key(seed), x)
    labels = jnp.arange(shape[0]) % 5
    return (lambda f: net.apply(v, f)), x, labels


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    rule=st.sampled_from(xai.RULES),
    target=st.sampled_from(xai.TARGETS),
)
def test_ig_completeness_converges(seed, rule, target):
    """sum(attributions) -> F(x) - F(0): error O(1/m) for Riemann, O(1/m^2) for trapezoid."""
    fn, x, y = _net(seed)
    gap = xai.target_value(fn(x), y, target) - xai.target_value(fn(jnp.zeros_like(x)), y, target)
    errors = []
    for m in (4, 16, 64):
        attr, _ = xai.integrated_gradients(fn, x, y, steps=m, rule=rule, target=target)
        total = jnp.sum(attr, axis=(1, 2, 3))
        errors.append(float(jnp.max(jnp.abs(total - gap))))
    scale = float(jnp.max(jnp.abs(gap)))
    # 16x more steps: >= 4x smaller error (Riemann ~16x, trapezoid ~256x), up to float noise.
    assert errors[-1] <= errors[0] / 4 + 1e-4 * scale + 1e-5, errors
    tol = 0.05 if rule == "riemann" else 0.005
    assert errors[-1] < tol * scale + 1e-4, (errors, scale)


def test_trapezoid_zero_baseline_shortcut_matches_direct():
    fn, x, y = _net()
    attr, logits = xai.integrated_gradients(fn, x, y, steps=2, rule="trapezoid")
    g = lambda z: jax.grad(lambda z: jnp.sum(xai.target_value(fn(z), y, "loss")))(z)  # noqa
    direct = x * 0.5 * (g(jnp.zeros_like(x)) + g(x))
    np.testing.assert_allclose(attr, direct, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits, fn(x), rtol=1e-5)


def test_path_points():
    a, w = xai.path_points(2, "trapezoid")
    np.testing.assert_allclose(a, [0.0, 1.0])
    np.testing.assert_allclose(w, [0.5, 0.5])
    a, w = xai.path_points(4, "riemann")
    np.testing.assert_allclose(a, [0.25, 0.5, 0.75, 1.0])
    assert float(w.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rule"):
        xai.path_points(2, "simpson")


def test_saliency_and_importance():
    fn, x, y = _net()
    sal, _ = xai.attribute(fn, x, y, method="saliency")
    assert bool(jnp.all(sal >= 0))
    imp = xai.channel_importance(sal)
    np.testing.assert_allclose(imp.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="method"):
        xai.attribute(fn, x, y, method="shap")


def test_ig_is_differentiable_inside_jit():
    """Second-order: the importance of the first channel w.r.t. a scale on the features."""
    fn, x, y = _net()

    @jax.jit
    def skew(scale):
        attr, _ = xai.integrated_gradients(fn, x * scale, y, steps=2)
        return jnp.mean(xai.channel_importance(attr)[:, 0])

    g = jax.grad(skew)(jnp.ones((4,)))
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("rule", xai.RULES)
@pytest.mark.parametrize("chunk,remat", [(1, False), (2, False), (0, True), (3, True)])
def test_ig_memory_options_agree_with_vmap_including_second_order(rule, chunk, remat):
    """lax.map chunks and jax.checkpoint change memory, not the attribution or its gradient."""
    fn, x, y = _net()

    def skew(scale, **kw):
        attr, logits = xai.integrated_gradients(fn, x * scale, y, steps=5, rule=rule, **kw)
        return jnp.mean(xai.channel_importance(attr)[:, 0]), (attr, logits)

    (v0, (a0, l0)), g0 = jax.value_and_grad(skew, has_aux=True)(jnp.ones((4,)))
    (v1, (a1, l1)), g1 = jax.jit(
        jax.value_and_grad(lambda s: skew(s, chunk=chunk, remat=remat), has_aux=True)
    )(jnp.ones((4,)))
    np.testing.assert_allclose(a1, a0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="chunk"):
        xai.integrated_gradients(fn, x, y, steps=2, chunk=-1)


def test_gauss_legendre_beats_trapezoid_at_equal_points():
    """Same number of gradient evaluations (4), far smaller completeness error."""
    fn, x, y = _net(3)
    gap = xai.target_value(fn(x), y, "loss") - xai.target_value(fn(jnp.zeros_like(x)), y, "loss")

    def err(rule, m):
        attr, _ = xai.integrated_gradients(fn, x, y, steps=m, rule=rule)
        return float(jnp.max(jnp.abs(jnp.sum(attr, axis=(1, 2, 3)) - gap)))

    assert err("gauss_legendre", 4) < err("trapezoid", 4) / 10
    a, w = xai.path_points(3, "gauss_legendre")
    assert float(w.sum()) == pytest.approx(1.0) and 0 < float(a.min()) < float(a.max()) < 1


def test_importance_aggregates_differ_exactly_where_a_channel_cancels():
    """``net`` = |sum over H, W|, ``l1`` = sum of |.|: a channel whose attributions cancel is
    unimportant to ``net`` and the largest to ``l1``; with one sign they agree."""
    attr = np.zeros((1, 2, 2, 3), np.float32)
    attr[0, :, :, 0] = [[3.0, -3.0], [2.0, -2.0]]  # cancels: net 0, l1 10
    attr[0, :, :, 1] = [[1.0, 1.0], [1.0, 1.0]]  # 4 either way
    attr[0, :, :, 2] = [[-1.0, 0.0], [0.0, 0.0]]  # 1 either way
    np.testing.assert_allclose(xai.channel_importance(attr, "net")[0], [0.0, 0.8, 0.2], atol=1e-6)
    np.testing.assert_allclose(
        xai.channel_importance(attr, "l1")[0], [10 / 15, 4 / 15, 1 / 15], atol=1e-6
    )
    same_sign = np.abs(attr)
    np.testing.assert_allclose(
        xai.channel_importance(same_sign, "net"), xai.channel_importance(same_sign, "l1")
    )
    with pytest.raises(ValueError, match="aggregate"):
        xai.channel_importance(attr, "max")


def test_l1_importance_is_differentiable_through_ig():
    fn, x, y = _net()

    def skew(scale):
        attr, _ = xai.integrated_gradients(fn, x * scale, y, steps=2)
        return jnp.mean(xai.channel_importance(attr, "l1")[:, 0])

    g = jax.jit(jax.grad(skew))(jnp.ones((4,)))
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
