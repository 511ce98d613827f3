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
    split_channels,
)
from agilenn_jax.models.layers import DepthwiseConv

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


def test_quantizer_rejects_one_centroid():
    with pytest.raises(ValueError, match="centroids"):
        SoftHardQuantizer(num_centroids=1).init(RNGS, jnp.ones((1, 2, 2, 1)))
