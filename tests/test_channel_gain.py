"""The per-channel gain before the quantizer (model.channel_gain_max): its statistic, its clip,
its fold into the extractor for export, and a real export of a gained checkpoint."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agilenn_jax import inference, layout
from agilenn_jax.deploy import export, int8
from agilenn_jax.models import num_local_channels
from agilenn_jax.models.agilenn import AgileNN
from agilenn_jax.models.extractor import output_layer_names
from agilenn_jax.models.quantizer import (
    FEATURE_MAX,
    GAIN_MOMENTUM,
    ChannelGain,
    channel_gain,
)
from agilenn_jax.training import experiment, stages, steps
from agilenn_jax.training.sharding import jit_train_step, make_mesh, shard_batch
from tests.helpers import assert_int8_verified, fake_data_and_batch, smoke_config


def test_gain_follows_the_running_mean_and_is_capped():
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 5, 5, 3)), jnp.float32)
    x = x * jnp.asarray([0.05, 0.5, 4.0])  # channel means ~0.025, 0.25, 2
    mod = ChannelGain(max_gain=8.0)
    v = mod.init(jax.random.key(0), x)
    np.testing.assert_array_equal(v["batch_stats"]["mean"], np.ones(3))
    _, upd = mod.apply(v, x, train=True, mutable=["batch_stats"])
    batch_mean = np.asarray(x).mean((0, 1, 2))
    want = GAIN_MOMENTUM + (1 - GAIN_MOMENTUM) * batch_mean
    np.testing.assert_allclose(upd["batch_stats"]["mean"], want, rtol=1e-6)
    # evaluation: the stored mean only; 1/0.025 = 40 is capped at 8, a wide channel keeps 1
    stats = {"batch_stats": {"mean": jnp.asarray(batch_mean, jnp.float32)}}
    g = np.asarray(channel_gain(jnp.asarray(batch_mean), 8.0))
    np.testing.assert_allclose(g, [8.0, 1.0 / batch_mean[1], 1.0], rtol=1e-6)
    y = mod.apply(stats, x)
    np.testing.assert_allclose(y, np.minimum(np.asarray(x) * g, FEATURE_MAX), rtol=1e-6)
    with pytest.raises(ValueError, match="max must be >= 1"):
        ChannelGain(max_gain=0.5).init(jax.random.key(0), x)


def test_the_clip_at_six_changes_no_index():
    """Every centroid is below 6, so min(g x, 6) and g x have the same nearest centroid."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = np.sort(rng.uniform(0, FEATURE_MAX, 8))
        v = rng.uniform(0, 40, 1000)
        a = np.argmin(np.abs(v[:, None] - c), -1)
        b = np.argmin(np.abs(np.minimum(v, FEATURE_MAX)[:, None] - c), -1)
        np.testing.assert_array_equal(a, b)


def _gained_model_and_variables(seed: int = 0):
    model = AgileNN(
        num_classes=10,
        k=3,
        extractor_channels=(8, 12),
        extractor_strides=(1, 1),
        remote_width=0.25,
        remote_stages=((1, 8, 1, 1),),
        remote_head_channels=16,
        channel_gain_max=6.0,
    )
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(4, 10, 10, 3)), jnp.float32)
    v = model.init(jax.random.key(seed), x)
    rng = np.random.default_rng(seed + 1)
    bn = output_layer_names(2)[1]
    params = jax.tree.map(np.asarray, v["params"])
    stats = jax.tree.map(np.asarray, v["batch_stats"])
    params["extractor"][bn]["scale"] = rng.uniform(0.2, 1.5, 12).astype(np.float32)
    params["extractor"][bn]["bias"] = rng.uniform(-0.5, 1.0, 12).astype(np.float32)
    stats["gain"]["mean"] = rng.uniform(0.05, 2.0, 9).astype(np.float32)  # gains 1 .. 6
    return model, {"params": params, "batch_stats": stats}, x


def test_fold_into_the_extractor_reproduces_the_device():
    model, v, x = _gained_model_and_variables()
    folded_model, folded = inference.fold_channel_gain(model, v)
    assert folded_model.channel_gain_max == 0.0 and "gain" not in folded["batch_stats"]
    assert "gain" in v["batch_stats"]  # the caller's variables are left alone
    out = model.apply(v, x, method="device")
    got = folded_model.apply(folded, x, method="device")
    assert float(jnp.max(out["quantizer_input"] - out["features"][..., 3:])) > 0.5  # gain works
    np.testing.assert_allclose(got["features"][..., 3:], out["quantizer_input"], atol=1e-5)
    np.testing.assert_array_equal(got["features"][..., :3], out["features"][..., :3])
    np.testing.assert_array_equal(got["local_logits"], out["local_logits"])
    assert float(jnp.mean(got["indices"] == out["indices"])) > 0.999
    # a model without a gain is returned as it is
    plain = model.clone(channel_gain_max=0.0)
    assert inference.fold_channel_gain(plain, folded) == (plain, folded)


def test_train_step_updates_the_gain_and_the_codebook_reads_its_output():
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    c = smoke_config()
    c.model.channel_gain_max = 4.0
    c.loss.codebook_weight = 1.0
    experiment.validate_config(c)
    state = stages.agilenn_state_template(c, data, mesh)
    step = jit_train_step(steps.make_agilenn_train_step(c), mesh)
    before = np.asarray(state.batch_stats["gain"]["mean"])
    for i in range(2):
        state, metrics = step(state, shard_batch(host_batch, mesh), jax.random.key(i))
    after = np.asarray(state.batch_stats["gain"]["mean"])
    assert not np.allclose(before, after)
    m = metrics.compute()
    assert np.isfinite(float(m["loss"])) and float(m["codebook_loss"]) > 0


@pytest.mark.parametrize("bad", [0.5, -1.0])
def test_bad_gain_is_a_clear_error(bad):
    c = smoke_config()
    c.model.channel_gain_max = bad
    with pytest.raises(ValueError, match=r"model\.channel_gain_max must be 0 \(off\) or >= 1"):
        experiment.validate_config(c)


def test_export_of_a_gained_checkpoint_agrees_on_tflm(trained_workdir, tmp_path):
    """A checkpoint with a gain exports through the same graph (the gain folded into the output
    BN) and TFLM's int8 indices agree with the float model's, gain applied."""
    from agilenn_jax.checkpoint import Checkpointer

    wd = str(tmp_path / "wd")
    shutil.copytree(trained_workdir, wd)
    config = layout.read_config(wd)
    raw = layout.config_to_dict(config)
    raw["model"]["channel_gain_max"] = 4.0
    layout.write_json(os.path.join(wd, layout.CONFIG_FILE), raw)
    ckpt = Checkpointer(os.path.join(wd, layout.AGILENN_DIR))
    saved, meta = ckpt.restore_subtree(("step", "params", "batch_stats"))
    n_off = int(config.model.extractor_channels[-1]) - num_local_channels(config)
    saved["batch_stats"]["gain"] = {"mean": np.linspace(0.25, 1.5, n_off).astype(np.float32)}
    saved["step"] = np.asarray(int(saved["step"]) + 1)
    ckpt.save(int(saved["step"]), saved, meta)
    ckpt.close()

    run = inference.load_run(wd)
    assert run.model.channel_gain_max == 4.0
    report = export.export(wd, str(tmp_path / "o"), 32, 32, allow_over_budget=True)
    # the gain (here up to 4) amplifies the int8 error of the layers before the output BN: the
    # worst element may exceed test_deploy's 0.3 bound, the mean stays within one step
    assert_int8_verified(report, max_abs_err=0.6)
    # what the device sends is the gained channel's index: the same threshold rule as before
    t = np.asarray(report["device"]["int8_thresholds"])
    assert t.shape == (len(report["device"]["centroids"]) - 1,)
    assert int8.indices_from_int8(np.array([127], np.int8), t)[0] == len(t)
