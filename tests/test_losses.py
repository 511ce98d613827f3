import jax.numpy as jnp
import numpy as np
import pytest

from agilenn_jax import losses

IMP = jnp.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.4, 0.3]])


def test_skewness_loss():
    np.testing.assert_allclose(losses.skewness_loss(IMP, k=2, rho=0.8), [0.0, 0.5], atol=1e-6)


def test_channel_disorder_loss():
    # sample 0: max(I2)=0.1 < min(I1)=0.3 -> 0; sample 1: 0.4 - 0.1 = 0.3
    np.testing.assert_allclose(losses.disorder_loss(IMP, 2, "channel"), [0.0, 0.3], atol=1e-6)
    np.testing.assert_array_equal(losses.disorder_violations(IMP, 2), [0.0, 1.0])


def test_element_disorder_loss():
    # sample 1 pairs (I1_i, I2_j): (0.1,0.4) .3, (0.1,0.3) .2, (0.2,0.4) .2, (0.2,0.3) .1 -> 0.2
    np.testing.assert_allclose(losses.disorder_loss(IMP, 2, "element"), [0.0, 0.2], atol=1e-6)
    with pytest.raises(ValueError, match="disorder"):
        losses.disorder_loss(IMP, 2, "global")


def test_agilenn_loss_weights_and_trust_mask():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    labels = jnp.array([0, 0])
    ce = float(jnp.mean(losses.cross_entropy(logits, labels)))
    # Only sample 1 trusted: skew 0.5 + disorder 0.3.
    loss, parts = losses.agilenn_loss(logits, labels, IMP, jnp.array([0.0, 1.0]), 2, 0.8, 0.25)
    assert float(parts["skew_loss"]) == pytest.approx(0.5)
    assert float(parts["disorder_loss"]) == pytest.approx(0.3)
    assert float(loss) == pytest.approx(0.25 * ce + 0.75 * 0.8, rel=1e-5)
    # No trusted sample: XAI terms vanish instead of dividing by zero.
    loss, parts = losses.agilenn_loss(logits, labels, IMP, jnp.zeros(2), 2, 0.8, 0.25)
    assert float(parts["skew_loss"]) == 0.0 and float(loss) == pytest.approx(0.25 * ce, rel=1e-5)
