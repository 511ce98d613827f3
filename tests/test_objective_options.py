"""The loss and combiner options issue 8 and 11's ablations need: fixed alpha, unit CE, lam = 1."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agilenn_jax import losses
from agilenn_jax.models import build_agilenn
from agilenn_jax.models.agilenn import alpha_from_logit, alpha_logit_for
from agilenn_jax.models.extractor import output_layer_names
from agilenn_jax.training import experiment, stages, steps
from agilenn_jax.training.sharding import jit_train_step, make_mesh, shard_batch
from tests.helpers import fake_data_and_batch, smoke_config


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_alpha_logit_for_inverts_the_combiner(alpha):
    for t in (1.0, 5.0, 8.0):
        assert float(alpha_from_logit(alpha_logit_for(alpha, t), t)) == pytest.approx(alpha)


def test_fixed_alpha_stays_fixed_through_training_steps():
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    c = smoke_config()
    c.model.fixed_alpha = 0.3
    experiment.validate_config(c)
    state = stages.agilenn_state_template(c, data, mesh)
    step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
    batch = shard_batch(host_batch, mesh)
    logit0 = float(state.params["alpha_logit"])
    for i in range(3):
        state, metrics = step(state, batch, jax.random.key(i))
    # the parameter every reader (export, server) uses holds the fixed alpha exactly
    assert float(state.params["alpha_logit"]) == logit0
    assert float(alpha_from_logit(logit0, c.model.temperature)) == pytest.approx(0.3)
    assert float(metrics.compute()["alpha"]) == pytest.approx(0.3, abs=1e-6)


def test_trained_alpha_moves():
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    c = smoke_config()
    state = stages.agilenn_state_template(c, data, mesh)
    step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
    state, _ = step(state, shard_batch(host_batch, mesh), jax.random.key(0))
    assert float(state.params["alpha_logit"]) != 0.0


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.5])
def test_bad_fixed_alpha_is_a_clear_error(bad):
    c = smoke_config()
    c.model.fixed_alpha = bad
    with pytest.raises(ValueError, match=r"model\.fixed_alpha must be -1 .* got"):
        experiment.validate_config(c)
    if bad >= 0:  # the factory reads a negative value as "trained"; the module refuses the rest
        with pytest.raises(ValueError, match="strictly inside"):
            build_agilenn(c).init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))


def test_unit_ce_is_the_paper_loss_divided_by_lam():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 8))
    imp = jax.nn.softmax(jnp.asarray(rng.normal(size=(8, 6)), jnp.float32))
    trust = jnp.asarray(rng.integers(0, 2, 8), jnp.float32)
    for lam in (0.2, 0.5, 0.8):
        paper, parts = losses.agilenn_loss(logits, labels, imp, trust, 2, 0.8, lam)
        unit, parts_u = losses.agilenn_loss(logits, labels, imp, trust, 2, 0.8, lam, unit_ce=True)
        np.testing.assert_allclose(float(unit), float(paper) / lam, rtol=1e-6)
        assert parts == parts_u
    c = smoke_config()
    c.loss.unit_ce, c.loss.lam = True, 0.0
    with pytest.raises(ValueError, match="unit_ce .* needs lam > 0"):
        experiment.validate_config(c)


def test_lam_one_trains_plain_ce_like_the_xai_step_with_zero_weight():
    """lam = 1 runs the IG-free step; it must be the same update as the IG step at lam = 1."""
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    c = smoke_config()
    c.loss.lam = 1.0
    batch = shard_batch(host_batch, mesh)
    out = {}
    for use_xai in (True, False):
        state = stages.agilenn_state_template(c, data, mesh)
        step = jit_train_step(steps.make_agilenn_train_step(c, use_xai=use_xai), mesh)
        state, _ = step(state, batch, jax.random.key(0))
        out[use_xai] = _flat(state.params)
    np.testing.assert_allclose(out[False], out[True], rtol=0, atol=1e-6)


def test_tracking_reference_takes_its_own_sgd_step_and_leaves_agilenn_alone():
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    c = smoke_config()
    batch = shard_batch(host_batch, mesh)
    state0 = stages.agilenn_state_template(c, data, mesh)
    frozen_step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
    a, _ = frozen_step(state0, batch, jax.random.key(0))
    state0 = stages.agilenn_state_template(c, data, mesh)  # the step donates its input
    c.xai.reference_lr = 0.05
    tracked_step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
    b, _ = tracked_step(state0, batch, jax.random.key(0))
    # AgileNN's update does not see the reference's own step (it happens after the gradient)
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    np.testing.assert_array_equal(_flat(a.frozen["batch_stats"]), _flat(b.frozen["batch_stats"]))
    # the frozen step leaves the reference untouched; the tracking one moves it by -lr * grad
    fresh = stages.agilenn_state_template(c, data, mesh)
    ref0 = fresh.frozen
    np.testing.assert_array_equal(_flat(a.frozen["params"]), _flat(ref0["params"]))
    out = build_agilenn(c).apply(
        {"params": fresh.params, "batch_stats": fresh.batch_stats},
        host_batch["image"],
        train=True,
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats"],
    )[0]
    expected = steps.track_reference(
        steps.build_reference_nn(c), ref0, out["features"], host_batch["label"], c.xai
    )
    np.testing.assert_allclose(
        _flat(b.frozen["params"]), _flat(expected["params"]), rtol=1e-4, atol=1e-6
    )
    assert np.abs(_flat(b.frozen["params"]) - _flat(ref0["params"])).max() > 0
    c.xai.reference_lr = -0.1
    with pytest.raises(ValueError, match=r"xai\.reference_lr must be >= 0"):
        experiment.validate_config(c)


def test_log_disorder_is_zero_exactly_where_the_channel_one_is_and_scale_free():
    rng = np.random.default_rng(1)
    imp = jax.nn.softmax(jnp.asarray(rng.normal(size=(64, 8)), jnp.float32))
    lin = losses.disorder_loss(imp, 3, "channel")
    log = losses.disorder_loss(imp, 3, "log")
    np.testing.assert_array_equal(np.asarray(lin) > 0, np.asarray(log) > 0)
    assert 0 < int(np.sum(np.asarray(lin) > 0)) < 64  # both cases occur
    # the log hinge depends on ratios only (up to its epsilon), the linear one on the scale
    np.testing.assert_allclose(losses.disorder_loss(imp * 0.5, 3, "log"), log, rtol=1e-3, atol=1e-4)
    # and pulls a weak local channel harder: d/dI1min = -1 / I1min
    row = jnp.asarray([[0.5, 0.3, 0.02, 0.1, 0.08]], jnp.float32)
    g = jax.grad(lambda x: losses.disorder_loss(x, 3, "log")[0])(row)
    np.testing.assert_allclose(float(g[0, 2]), -1 / (0.02 + losses.LOG_EPS), rtol=1e-5)
    np.testing.assert_allclose(float(g[0, 3]), 1 / (0.1 + losses.LOG_EPS), rtol=1e-5)


def test_violation_anatomy_names_the_weakest_local_channel():
    imp = jnp.asarray(
        [
            [0.40, 0.30, 0.05, 0.10, 0.15],  # violates: channel 2 is the weakest, and 0.15 < 0.30
            [0.40, 0.10, 0.20, 0.25, 0.05],  # violates: channel 1 weakest, 0.25 > 0.20 too
            [0.50, 0.30, 0.15, 0.03, 0.02],  # ordered
        ],
        jnp.float32,
    )
    weakest, but_weakest = losses.violation_anatomy(imp, 3)
    np.testing.assert_array_equal(np.asarray(weakest), [[0, 0, 1], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(but_weakest), [0, 1, 0])


@pytest.mark.parametrize("mode", losses.DISORDER_MODES)
def test_disorder_margin_also_penalises_ordered_samples_closer_than_the_margin(mode):
    # ordered (0.20 > 0.15) but closer than 0.1: zero without a margin, positive with one
    near = jnp.asarray([[0.40, 0.20, 0.15, 0.12]], jnp.float32)
    far = jnp.asarray([[0.45, 0.40, 0.10, 0.05]], jnp.float32)
    assert float(losses.disorder_loss(near, 2, mode)[0]) == 0.0
    margin = 0.1 if mode != "log" else 0.5
    assert float(losses.disorder_loss(near, 2, mode, margin)[0]) > 0.0
    assert float(losses.disorder_loss(far, 2, mode, margin)[0]) == 0.0
    if mode == "channel":
        np.testing.assert_allclose(losses.disorder_loss(near, 2, mode, 0.1), [0.05], atol=1e-6)


def test_disorder_weight_scales_the_ordering_term_alone():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16))
    imp = jax.nn.softmax(jnp.asarray(rng.normal(size=(16, 8)), jnp.float32))
    trust = jnp.ones(16)
    base, parts = losses.agilenn_loss(logits, labels, imp, trust, 3, 0.8, 0.3)
    heavy, parts_h = losses.agilenn_loss(
        logits, labels, imp, trust, 3, 0.8, 0.3, disorder_weight=10.0
    )
    assert float(parts["disorder_loss"]) > 0
    np.testing.assert_allclose(float(parts_h["disorder_loss"]), float(parts["disorder_loss"]))
    np.testing.assert_allclose(
        float(heavy - base), 0.7 * 9.0 * float(parts["disorder_loss"]), rtol=1e-5
    )


@pytest.mark.parametrize("field", ["disorder_margin", "disorder_weight"])
def test_negative_disorder_margin_or_weight_is_a_clear_error(field):
    c = smoke_config()
    c.loss[field] = -0.1
    with pytest.raises(ValueError, match=rf"loss\.{field} must be >= 0"):
        experiment.validate_config(c)


def test_reference_ce_anchor_joins_the_xai_terms():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    ref_logits = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16))
    imp = jax.nn.softmax(jnp.asarray(rng.normal(size=(16, 8)), jnp.float32))
    trust = jnp.asarray(rng.integers(0, 2, 16), jnp.float32)
    base, parts = losses.agilenn_loss(logits, labels, imp, trust, 3, 0.8, 0.3)
    off, parts_off = losses.agilenn_loss(
        logits, labels, imp, trust, 3, 0.8, 0.3, reference_logits=ref_logits
    )
    on, _ = losses.agilenn_loss(
        logits,
        labels,
        imp,
        trust,
        3,
        0.8,
        0.3,
        unit_ce=True,
        reference_logits=ref_logits,
        reference_ce_weight=2.0,
    )
    ref_ce = float(jnp.mean(losses.cross_entropy(ref_logits, labels)))
    assert "reference_ce" not in parts
    np.testing.assert_allclose(float(parts_off["reference_ce"]), ref_ce, rtol=1e-6)
    np.testing.assert_allclose(float(off), float(base), rtol=1e-6)  # logged, not weighted
    # on every sample, not only trusted ones; scaled by (1 - lam) and, with unit CE, by 1 / lam
    np.testing.assert_allclose(float(on), (float(base) + 0.7 * 2.0 * ref_ce) / 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="needs reference_logits"):
        losses.agilenn_loss(logits, labels, imp, trust, 3, 0.8, 0.3, reference_ce_weight=1.0)


def test_reference_ce_anchor_pulls_the_extractor_towards_the_reference():
    """One step with the anchor lowers the frozen reference's CE on the batch more than without."""
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    ref_ce = {}
    for mu in (0.0, 50.0):
        c = smoke_config()
        c.loss.reference_ce_weight = mu
        template = stages.agilenn_state_template(c, data, mesh)
        step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
        batch = shard_batch(host_batch, mesh)
        state, m0 = step(template, batch, jax.random.key(0))
        _, m1 = step(state, batch, jax.random.key(0))
        ref_ce[mu] = (float(m0.compute()["reference_ce"]), float(m1.compute()["reference_ce"]))
        assert 0.0 <= float(m1.compute()["reference_accuracy"]) <= 1.0
    assert ref_ce[0.0][0] == pytest.approx(ref_ce[50.0][0])  # same start
    assert ref_ce[50.0][1] < ref_ce[0.0][1]


def test_importance_aggregate_is_validated_and_old_configs_read_as_net():
    c = smoke_config()
    assert steps.importance_aggregate(c.xai) == c.xai.aggregate
    c.xai.aggregate = "sum"
    with pytest.raises(ValueError, match=r"xai\.aggregate must be one of"):
        experiment.validate_config(c)
    old = ml_collections.ConfigDict({k: v for k, v in c.xai.items() if k != "aggregate"})
    assert steps.importance_aggregate(old) == "net"  # what configs before the option measured


def test_codebook_loss_is_the_kmeans_distortion_with_gradients_to_centroids_only():
    """Equal to mean((v - c[nearest])^2); d/dc_l = 2 n_l (c_l - mean of its cell) / N; none to v."""
    v = jax.random.uniform(jax.random.key(0), (3, 4, 4, 5), maxval=3.0)
    c = jnp.array([0.1, 1.0, 2.5, 5.5])  # 5.5 codes nothing: no gradient
    idx = jnp.argmin(jnp.square(v[..., None] - c), -1)
    got = losses.codebook_loss(v, idx, c)
    np.testing.assert_allclose(got, jnp.mean(jnp.square(v - c[idx])), rtol=1e-5)
    gc = jax.grad(lambda c: losses.codebook_loss(v, idx, c))(c)
    for i in range(4):
        cell = np.asarray(idx == i)
        mean = np.asarray(v)[cell].mean() if cell.any() else 0.0
        want = 2.0 * cell.sum() * (c[i] - mean) / v.size
        np.testing.assert_allclose(gc[i], want, rtol=1e-4, atol=1e-7)
    assert float(gc[3]) == 0.0
    gv = jax.grad(lambda v: losses.codebook_loss(v, idx, c))(v)
    assert float(jnp.max(jnp.abs(gv))) == 0.0


def _one_step(lam: float, field: str, w: float, edit=None) -> tuple[dict, dict]:
    """Parameters and metrics after one step of the smoke config with ``loss.<field> = w``, from
    the same start, batch and rng whatever w is; ``edit(params, config)`` changes the start."""
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    c = smoke_config()
    c.loss.lam = lam
    c.loss[field] = w
    experiment.validate_config(c)
    state = stages.agilenn_state_template(c, data, mesh)
    if edit is not None:
        params = edit(jax.device_get(state.params), c)
        state = state.replace(
            params=jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params))
        )
    step = jit_train_step(steps.make_agilenn_train_step(c, use_xai=lam < 1.0), mesh)
    state, metrics = step(state, shard_batch(host_batch, mesh), jax.random.key(0))
    return jax.device_get(state.params), metrics.compute()


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_codebook_weight_moves_only_the_centroids_in_one_step(lam):
    """With every other gradient the same (same start, batch, rng), the codebook term changes the
    centroids' update and no other parameter's, on the XAI step and on the plain CE step."""
    after = {w: _one_step(lam, "codebook_weight", w)[0] for w in (0.0, 1.0)}
    q0, q1 = (after[w].pop("quantizer") for w in (0.0, 1.0))
    assert not np.allclose(q0["centroid_logits"], q1["centroid_logits"])
    np.testing.assert_allclose(_flat(after[0.0]), _flat(after[1.0]), rtol=1e-6, atol=1e-8)


def test_alive_loss_is_a_hinge_at_both_flat_ends_of_relu6_with_bounded_gradients():
    """max(0, z |gamma| - beta) + max(0, beta + z |gamma| - 6) averaged over channels,
    z = Phi^-1(rate); a channel far past either end (off, or stuck at 6) still gets
    d/d beta = -+1 / n, and one inside both floors gets nothing."""
    scale = jnp.array([1.0, 0.5, 2.0, -1.0, 1.0])
    bias = jnp.array([0.0, -3.0, -40.0, -0.5, 8.0])  # fine, off, off, fine (Phi(-0.5)), stuck
    z = -0.8416212  # Phi^-1(0.2)
    got = losses.alive_loss(scale, bias, 0.2)
    sp, b = z * np.abs(np.asarray(scale)), np.asarray(bias)
    want = np.mean(np.maximum(0.0, sp - b) + np.maximum(0.0, b + sp - 6.0))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    gb = jax.grad(lambda b: losses.alive_loss(scale, b, 0.2))(bias)
    np.testing.assert_allclose(gb, [0.0, -0.2, -0.2, 0.0, 0.2])
    gs = jax.grad(lambda s: losses.alive_loss(s, bias, 0.2))(scale)
    np.testing.assert_allclose(gs, [0.0, z / 5, z / 5, 0.0, z / 5], rtol=1e-5)
    # at the BN's initialisation (gamma 1, beta 0) the floors hold: the term starts at 0
    assert float(losses.alive_loss(jnp.ones(5), jnp.zeros(5), 0.2)) == 0.0
    with pytest.raises(ValueError, match="min_rate"):
        losses.alive_loss(scale, bias, 1.0)


def test_alive_floor_above_half_moves_beta_only():
    """At a rate over 50% the hinge's gradient on |gamma| would shrink it (a more constant
    channel, what the floor is against), so only beta gets one; the value is unchanged."""
    scale, bias = jnp.array([1.0, 2.0, 1.0]), jnp.array([0.0, 0.5, 3.0])
    z = 0.8416212  # Phi^-1(0.8)
    want = np.mean(
        np.maximum(0.0, z * np.abs(scale) - bias) + np.maximum(0.0, bias + z * scale - 6)
    )
    np.testing.assert_allclose(losses.alive_loss(scale, bias, 0.8), want, rtol=1e-5)
    gs = jax.grad(lambda s: losses.alive_loss(s, bias, 0.8))(scale)
    np.testing.assert_array_equal(gs, np.zeros(3))
    gb = jax.grad(lambda b: losses.alive_loss(scale, b, 0.8))(bias)
    np.testing.assert_allclose(gb, [-1 / 3, -1 / 3, 0.0])


@pytest.mark.parametrize("lam,scope", [(0.3, "offloaded"), (1.0, "offloaded"), (0.3, "all")])
def test_alive_weight_moves_only_the_stuck_channels_output_bn(lam, scope):
    """From the same start with offloaded channel k switched off (beta -10) and local channel 0
    stuck at 6 (beta 10), the term changes those channels' output BN gamma and beta (channel 0
    only with alive_channels=all) and nothing else, on the XAI and the plain CE step."""
    c = smoke_config()
    k, bn_name = c.model.k, output_layer_names(len(c.model.extractor_channels))[1]

    def stick(params, config):
        config.loss.alive_channels = scope
        bn = params["extractor"][bn_name]
        bn["bias"] = np.asarray(bn["bias"]).copy()
        bn["bias"][k] = -10.0
        bn["bias"][0] = 10.0
        return params

    after = {}
    for w in (0.0, 1.0):
        after[w], metrics = _one_step(lam, "alive_weight", w, stick)
        if lam < 1.0:
            assert (float(metrics["alive_loss"]) > 0.0) == (w > 0.0)
    b0, b1 = (after[w]["extractor"].pop(bn_name) for w in (0.0, 1.0))
    for name in ("scale", "bias"):
        diff = np.nonzero(~np.isclose(b0[name], b1[name], rtol=1e-6, atol=1e-8))[0]
        assert diff.tolist() == ([0, k] if scope == "all" else [k]), (name, diff)
    assert float(b1["bias"][k]) > float(b0["bias"][k])  # pushed back towards the floor
    if scope == "all":
        assert float(b1["bias"][0]) < float(b0["bias"][0])  # and down from the clip
    np.testing.assert_allclose(_flat(after[0.0]), _flat(after[1.0]), rtol=1e-6, atol=1e-8)


def test_local_top_is_a_ceiling_on_the_local_channels_only():
    """With alive_channels=all and loss.local_top=T, the floor's top end on the k local channels
    is T instead of the clip at 6, and the term is still the mean over every channel: from the
    same start (local channel 0 at beta 4.5, inside the clip, over a ceiling at 3), T=3 lowers
    that channel's beta and moves no other parameter; T=6 leaves it alone."""
    c = smoke_config()
    k, bn_name = c.model.k, output_layer_names(len(c.model.extractor_channels))[1]

    def high(top):
        def edit(params, config):
            config.loss.alive_channels = "all"
            config.loss.alive_rate = 0.8
            config.loss.local_top = top
            bn = params["extractor"][bn_name]
            bn["bias"] = np.asarray(bn["bias"]).copy()
            bn["bias"][:k] = 1.0  # every channel inside the 80% floor and under 6 ...
            bn["bias"][k:] = 1.0
            bn["bias"][0] = 4.5  # ... and local channel 0 over a ceiling at 3
            return params

        return edit

    after, loss = {}, {}
    for top in (6.0, 3.0):
        after[top], metrics = _one_step(0.3, "alive_weight", 1.0, high(top))
        loss[top] = float(metrics["alive_loss"])
    assert loss[6.0] == 0.0
    z, n = 0.8416212, c.model.extractor_channels[-1]
    np.testing.assert_allclose(loss[3.0], (4.5 + z * 1.0 - 3.0) / n, rtol=1e-4)
    b6, b3 = (after[t]["extractor"].pop(bn_name) for t in (6.0, 3.0))
    diff = np.nonzero(~np.isclose(b6["bias"], b3["bias"], rtol=1e-6, atol=1e-8))[0]
    assert diff.tolist() == [0]
    assert float(b3["bias"][0]) < float(b6["bias"][0])
    np.testing.assert_allclose(b6["scale"], b3["scale"], rtol=1e-6, atol=1e-8)  # beta only
    np.testing.assert_allclose(_flat(after[6.0]), _flat(after[3.0]), rtol=1e-6, atol=1e-8)


def test_ceiling_loss_is_a_hinge_on_beta_alone():
    """mean over channels of max(0, beta - T): 0 at or under T, linear over it (gradient 1/n on
    each channel over it, none on the others)."""
    bias = jnp.array([5.7, 5.0, 2.0, -1.0])
    np.testing.assert_allclose(losses.ceiling_loss(bias, 5.0), 0.7 / 4, rtol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda b: losses.ceiling_loss(b, 5.0))(bias), [0.25, 0, 0, 0]
    )
    assert float(losses.ceiling_loss(bias, 6.0)) == 0.0


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_ceiling_weight_lowers_only_the_local_channel_over_the_ceiling(lam):
    """From the same start with local channel 0 at beta 5.7 and offloaded channel k at 5.7 too,
    the term (T = 5) lowers channel 0's beta and changes no other parameter, its gamma included,
    on the XAI and the plain CE step; the metric reports it weighted."""
    c = smoke_config()
    k, bn_name = c.model.k, output_layer_names(len(c.model.extractor_channels))[1]

    def high(params, config):
        config.loss.local_ceiling = 5.0
        bn = params["extractor"][bn_name]
        bn["bias"] = np.asarray(bn["bias"]).copy()
        bn["bias"][0] = 5.7
        bn["bias"][k] = 5.7
        return params

    after = {}
    for w in (0.0, 2.0):
        after[w], metrics = _one_step(lam, "ceiling_weight", w, high)
        if lam < 1.0:
            np.testing.assert_allclose(float(metrics["ceiling_loss"]), w * 0.7 / k, rtol=1e-4)
    b0, b1 = (after[w]["extractor"].pop(bn_name) for w in (0.0, 2.0))
    diff = np.nonzero(~np.isclose(b0["bias"], b1["bias"], rtol=1e-6, atol=1e-8))[0]
    assert diff.tolist() == [0]
    assert float(b1["bias"][0]) < float(b0["bias"][0])
    np.testing.assert_allclose(b0["scale"], b1["scale"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(_flat(after[0.0]), _flat(after[2.0]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("reference_ce_weight", -1.0, r"loss\.reference_ce_weight must be >= 0"),
        ("codebook_weight", -0.5, r"loss\.codebook_weight must be >= 0"),
        ("alive_weight", -1.0, r"loss\.alive_weight must be >= 0"),
        ("alive_rate", 0.0, r"loss\.alive_rate must be in \(0, 1\)"),
        ("alive_rate", 1.0, r"loss\.alive_rate must be in \(0, 1\)"),
        ("alive_channels", "local", r"loss\.alive_channels must be one of"),
        ("ceiling_weight", -1.0, r"loss\.ceiling_weight must be >= 0"),
        ("local_ceiling", 0.0, r"loss\.local_ceiling must be in \(0, 6\]"),
        ("local_ceiling", 6.5, r"loss\.local_ceiling must be in \(0, 6\]"),
        ("local_top", 0.0, r"loss\.local_top must be in \(0, 6.0\]"),
        ("local_top", 7.0, r"loss\.local_top must be in \(0, 6.0\]"),
        ("local_top", 4.0, r"loss\.local_top=4.0 acts only with loss\.alive_channels='all'"),
    ],
)
def test_bad_loss_options_are_clear_errors(field, value, match):
    c = smoke_config()
    c.loss[field] = value
    with pytest.raises(ValueError, match=match):
        experiment.validate_config(c)
