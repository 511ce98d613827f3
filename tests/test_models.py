import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from agilenn_jax.models import (
    AgileNN,
    ExtractorWithReference,
    FeatureExtractor,
    LocalNN,
    MobileNetV2Stack,
    SoftHardQuantizer,
    alpha_from_logit,
    combine,
    split_channels,
)
from agilenn_jax.models.agilenn import feature_shape
from agilenn_jax.models.layers import DepthwiseConv, pointwise_conv, same_output_size
from agilenn_jax.models.quantizer import centroid_init, soft_to_hard

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def test_extractor_default_shape_and_range():
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    m = FeatureExtractor()
    v = m.init(RNGS, x)
    f = m.apply(v, x)
    chex.assert_shape(f, (2, 32, 32, 24))
    assert float(f.min()) >= 0.0 and float(f.max()) <= 6.0


class DepthwiseTest(parameterized.TestCase):
    @parameterized.parameters((1, 9), (2, 9), (2, 10), (3, 96))
    def test_taps_equal_grouped_conv(self, stride, size):
        x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
        v = DepthwiseConv(3, stride, "conv").init(RNGS, x)
        a = DepthwiseConv(3, stride, "conv").apply(v, x)
        b = DepthwiseConv(3, stride, "taps").apply(v, x)
        chex.assert_trees_all_close(a, b, atol=1e-5)
        ga = jax.grad(lambda v: jnp.sum(DepthwiseConv(3, stride, "conv").apply(v, x) ** 2))(v)
        gb = jax.grad(lambda v: jnp.sum(DepthwiseConv(3, stride, "taps").apply(v, x) ** 2))(v)
        chex.assert_trees_all_close(ga, gb, rtol=1e-4, atol=1e-4)


def test_pointwise_matmul_equals_the_conv_and_keeps_its_parameters():
    """The CPU path's 1x1 conv is a matrix product: same parameters (names and shapes), same
    values and gradients as the conv the export lowers."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 7))
    conv, mm = pointwise_conv(4, "conv"), pointwise_conv(4, "taps")
    v = conv.init(RNGS, x)
    chex.assert_trees_all_equal_shapes(v, mm.init(RNGS, x))
    chex.assert_trees_all_close(mm.apply(v, x), conv.apply(v, x), atol=1e-5)
    ga = jax.grad(lambda v, x: jnp.sum(jnp.sin(conv.apply(v, x))), (0, 1))(v, x)
    gb = jax.grad(lambda v, x: jnp.sum(jnp.sin(mm.apply(v, x))), (0, 1))(v, x)
    chex.assert_trees_all_close(ga, gb, rtol=1e-5, atol=1e-5)


def test_local_and_remote_shapes():
    f = jnp.ones((3, 32, 32, 5))
    local = LocalNN(10)
    chex.assert_shape(local.apply(local.init(RNGS, f), f), (3, 10))
    remote = MobileNetV2Stack(10, width=0.35, head_channels=64)
    q = jnp.ones((3, 32, 32, 19))
    chex.assert_shape(remote.apply(remote.init(RNGS, q), q), (3, 10))


def test_agilenn_outputs_and_combiner():
    m = AgileNN(10, k=5, remote_width=0.35, remote_head_channels=64)
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    v = m.init(RNGS, x)
    out = m.apply(v, x)
    chex.assert_shape(out["features"], (2, 32, 32, 24))
    chex.assert_shape(out["quantized"], (2, 32, 32, 19))
    chex.assert_shape(out["indices"], (2, 32, 32, 19))
    chex.assert_shape(out["local_logits"], (2, 10))
    a = float(out["alpha"])
    assert a == pytest.approx(0.5)  # w = 0 at init
    np.testing.assert_allclose(
        out["logits"], a * out["local_logits"] + (1 - a) * out["remote_logits"], rtol=1e-5
    )
    # Remote logits depend only on the dequantized remote channels (what the server receives).
    np.testing.assert_allclose(
        m.apply(v, out["quantized"], method="server"), out["remote_logits"], rtol=1e-5
    )


def test_reference_takes_all_channels():
    m = ExtractorWithReference(
        10, width=0.35, stages=((1, 16, 1, 1), (6, 24, 1, 2)), head_channels=32
    )
    x = jnp.ones((2, 96, 96, 3))
    v = m.init(RNGS, x)
    chex.assert_shape(m.apply(v, x), (2, 10))
    assert v["params"]["extractor"]["pw1"]["kernel"].shape[-1] == 24


def test_split_channels():
    assert split_channels(24, k=5) == 5
    assert split_channels(24, k=-1, split_ratio=0.2) == 5
    with pytest.raises(ValueError, match="k must be"):
        split_channels(24, k=24)
    with pytest.raises(ValueError, match="split_ratio"):
        split_channels(24, k=0, split_ratio=1.5)


def test_quantizer_hard_forward_soft_backward():
    q = SoftHardQuantizer(num_centroids=8)
    x = jax.random.uniform(jax.random.key(0), (4, 6, 6, 3), minval=0.0, maxval=6.0)
    v = q.init(RNGS, x)
    out, idx = q.apply(v, x)
    c = q.apply(v, method="centroids")
    assert bool(jnp.all((c > 0) & (c < 6)))
    assert idx.dtype == jnp.int32 and int(idx.min()) >= 0 and int(idx.max()) < 8
    np.testing.assert_array_equal(np.asarray(out), np.asarray(c[idx]))  # exactly hard
    np.testing.assert_array_equal(np.asarray(idx), np.argmin(np.abs(x[..., None] - c), -1))

    def loss(params, x):
        return jnp.sum(q.apply({"params": params}, x)[0] * jnp.arange(3.0))

    gp, gx = jax.grad(loss, argnums=(0, 1))(v["params"], x)
    assert float(jnp.abs(gp["centroid_logits"]).sum()) > 0  # centroids learn
    assert float(jnp.abs(gx).sum()) > 0  # features get a (soft) gradient
    assert bool(jnp.all(jnp.isfinite(gx)))


def _soft_quantized(x, c, softness):
    """The soft-to-hard rule as plain autodiff sees it: soft + stop_gradient(hard - soft)."""
    d2 = jnp.square(x[..., None] - c)
    hard = c[jnp.argmin(d2, -1)]
    soft = jnp.sum(jax.nn.softmax(-softness * d2, -1) * c, -1)
    return soft + jax.lax.stop_gradient(hard - soft)


class QuantizerGradientTest(parameterized.TestCase):
    # 13 samples: the CPU backward's pieces (CPU_CHUNK) do not divide the batch; 1-D: no pieces.
    @parameterized.parameters(((16, 5, 5, 7), 1.0), ((13, 3, 4, 2), 4.0), ((40,), 0.5))
    def test_closed_form_vjp_equals_autodiff_of_the_soft_value(self, shape, softness):
        x = jax.random.uniform(jax.random.key(0), shape, minval=-0.5, maxval=6.5)
        c = 6.0 * jax.nn.sigmoid(
            centroid_init(8) + 0.3 * jax.random.normal(jax.random.key(1), (8,))
        )
        g = jax.random.normal(jax.random.key(2), shape)
        hard, idx = soft_to_hard(x, c, softness)
        np.testing.assert_array_equal(np.asarray(hard), np.asarray(c[idx]))
        got = jax.jit(jax.grad(lambda x, c: jnp.sum(g * soft_to_hard(x, c, softness)[0]), (0, 1)))(
            x, c
        )
        want = jax.grad(lambda x, c: jnp.sum(g * _soft_quantized(x, c, softness)), (0, 1))(x, c)
        chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-5 * float(jnp.abs(want[1]).max()))


def test_quantizer_rejects_one_centroid():
    with pytest.raises(ValueError, match="centroids"):
        SoftHardQuantizer(num_centroids=1).init(RNGS, jnp.ones((1, 2, 2, 1)))


def test_permute_output_channels_is_exact_and_touches_every_leaf():
    m = FeatureExtractor(channels=(8, 6), strides=(2, 1))
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 3))
    v = m.init(RNGS, x)
    v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), v)
    perm = np.array([3, 0, 5, 1, 4, 2])
    pv = m.permute_output_channels(v, perm)
    np.testing.assert_allclose(m.apply(pv, x), m.apply(v, x)[..., perm], rtol=1e-5, atol=1e-6)
    conv, bn = m.output_layer_names()
    assert set(v["params"][conv]) == {"kernel"}  # the coupling this method relies on
    # A bias (or any other per-channel leaf) on the output layers is permuted too.
    with_bias = {
        "params": dict(v["params"], **{conv: dict(v["params"][conv], bias=jnp.arange(6.0))})
    }
    out = m.permute_output_channels(with_bias, perm)
    np.testing.assert_array_equal(out["params"][conv]["bias"], perm.astype(np.float32))
    np.testing.assert_array_equal(v["params"][conv]["kernel"], with_bias["params"][conv]["kernel"])
    with pytest.raises(ValueError, match="permutation"):
        m.permute_output_channels(v, np.array([0, 0, 1, 2, 3, 4]))


def test_combine_is_one_rule_for_jax_and_numpy():
    m = AgileNN(10, k=2, extractor_channels=(8, 6), remote_width=0.35, remote_head_channels=16)
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    v = m.init(RNGS, x)
    v["params"]["alpha_logit"] = jnp.asarray(1.7)
    out = m.apply(v, x)
    a = float(alpha_from_logit(1.7, m.temperature))
    assert float(out["alpha"]) == pytest.approx(a)
    host = combine(np.asarray(out["local_logits"]), np.asarray(out["remote_logits"]), a)
    np.testing.assert_allclose(out["logits"], host, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,stride", [(96, 3), (32, 1), (25, 2), (7, 3), (12, 2)])
def test_same_output_size_matches_the_layers(size, stride):
    x = jnp.ones((1, size, size, 4))
    layer = DepthwiseConv(3, stride, "conv")
    y = layer.apply(layer.init(RNGS, x), x)
    assert y.shape[1] == same_output_size(size, stride)
    chans, strides = (8, 5), (stride, 1)
    f = FeatureExtractor(chans, strides)
    assert f.apply(f.init(RNGS, x[..., :3]), x[..., :3]).shape[1:] == feature_shape(
        size, chans, strides
    )
