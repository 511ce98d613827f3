"""``model.dtype = "bfloat16"``: bfloat16 compute, float32 parameters, statistics and outputs.

Tolerances come from measurements on the smoke models at initialisation (random normal inputs,
several seeds), with a margin of about 3x over the worst value seen:

forward, bf16 vs fp32 on the same variables (relative L2 error ``|b - a| / |a|``):
    features <= 0.012 (tol 0.03), logits <= 0.034 (tol 0.1), local logits <= 0.018 (tol 0.05),
    remote logits <= 0.062 (tol 0.15), reference logits <= 0.011 (tol 0.03); quantizer indices
    differ on <= 0.5% of the elements (tol 2%: a feature within bf16 rounding of a decision
    boundary picks the neighbouring centroid).
AgileNN train step (IG + second-order gradient), one step from the same state and batch:
    loss 0.1% apart (tol 1%); all gradients relative error 0.16, cosine 0.987 (tols 0.35 and
    0.95); local NN gradients 0.7% (tol 3%). The whole-model gradient is inherently sensitive:
    fp32 itself moves by 0.07-0.08 when the images are perturbed by 2^-9 (half a bf16 ulp), as
    the hard quantizer's indices and the ReLU6 edges flip.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agilenn_jax.models import build_agilenn, build_reference
from agilenn_jax.training import experiment, stages, steps
from agilenn_jax.training.sharding import jit_train_step, make_mesh, replicate, shard_batch
from tests.helpers import fake_data_and_batch, smoke_config

FORWARD_RTOL = {
    "features": 0.03,
    "logits": 0.1,
    "local_logits": 0.05,
    "remote_logits": 0.15,
    "reference": 0.03,
}
INDEX_MISMATCH_TOL = 0.02


def _config(dtype: str):
    c = smoke_config()
    c.model.dtype = dtype
    return c


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _all_float32(tree) -> bool:
    return all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("train", [False, True])
def test_bf16_forward_matches_fp32_on_the_same_params(train):
    x = jax.random.normal(jax.random.key(100), (16, 12, 12, 3))
    kw = dict(train=train, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
    for build in (build_agilenn, build_reference):
        m32, m16 = build(_config("float32")), build(_config("bfloat16"))
        assert m16.dtype == jnp.bfloat16 and m32.dtype == jnp.float32
        v = m32.init(jax.random.key(0), x, train=False)
        v16 = m16.init(jax.random.key(0), x, train=False)
        assert _all_float32(v16)  # parameters and BN statistics stay float32 ...
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v, v16)
        assert all(jax.tree.leaves(same))  # ... and initialise exactly as in fp32
        a, stats32 = m32.apply(v, x, **kw)
        b, stats16 = m16.apply(v, x, **kw)
        assert _all_float32(stats16)
        jax.tree.map(
            lambda s, t: np.testing.assert_allclose(t, s, rtol=0.02, atol=1e-3), stats32, stats16
        )
        if build is build_reference:
            assert b.dtype == jnp.float32
            assert _rel(a, b) < FORWARD_RTOL["reference"]
            continue
        assert {k: v.dtype for k, v in a.items()} == {k: v.dtype for k, v in b.items()}
        for key in ("features", "logits", "local_logits", "remote_logits"):
            assert _rel(a[key], b[key]) < FORWARD_RTOL[key], key
        assert np.mean(np.asarray(a["indices"]) != np.asarray(b["indices"])) < INDEX_MISMATCH_TOL
        # the quantizer stays float32: its output is exactly a float32 centroid
        centroids = m16.apply(v, method="centroids")
        np.testing.assert_array_equal(b["quantized"], np.asarray(centroids)[b["indices"]])


def _capture_grads(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` that also keeps the last gradients in its state, to compare them across dtypes."""

    def init(params):
        return tx.init(params), jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        updates, inner = tx.update(grads, state[0], params)
        return updates, (inner, grads)

    return optax.GradientTransformation(init, update)


def test_bf16_agilenn_train_step_is_close_to_fp32_and_compiles_once():
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    batch = shard_batch(host_batch, mesh)
    results = {}
    for dtype in ("float32", "bfloat16"):
        c = _config(dtype)
        template = stages.agilenn_state_template(c, data, mesh)
        tx = _capture_grads(template.tx)
        state = template.replace(tx=tx, opt_state=replicate(tx.init(template.params), mesh))
        step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
        params0 = _flat(state.params)
        state, metrics = step(state, batch, jax.random.key(0))
        grads = jax.tree.map(np.asarray, state.opt_state[1])  # copied: the state is donated
        results[dtype] = params0, {k: float(v) for k, v in metrics.compute().items()}, grads
        if dtype == "bfloat16":
            compiled = step._cache_size()
            for i in range(1, 4):
                state, metrics = step(state, batch, jax.random.key(i))
            assert step._cache_size() == compiled
            assert _all_float32(state.params) and _all_float32(state.batch_stats)
            assert all(np.isfinite(v) for v in metrics.compute().values())
    (p32, m32, g32), (p16, m16, g16) = results["float32"], results["bfloat16"]
    np.testing.assert_array_equal(p32, p16)  # the same initial state
    assert all(np.isfinite(v) for v in m16.values())
    assert abs(m16["loss"] - m32["loss"]) < 0.01 * abs(m32["loss"])
    assert _all_float32(g16) and np.isfinite(_flat(g16)).all()
    a, b = _flat(g32), _flat(g16)
    assert _rel(a, b) < 0.35
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.95
    assert _rel(_flat(g32["local"]), _flat(g16["local"])) < 0.03


def test_invalid_dtype_is_a_clear_error():
    c = _config("float16")
    with pytest.raises(ValueError, match=r"model\.dtype must be one of .*'float16'"):
        experiment.validate_config(c)
    with pytest.raises(ValueError, match=r"model\.dtype must be one of"):
        build_agilenn(c)
    # the export's override: float32 whatever the run trained in
    assert build_agilenn(_config("bfloat16"), dtype="float32").dtype == jnp.float32
