import json
import os
import shutil
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agilenn_jax import host_tuning, inference, input_pipeline, layout
from agilenn_jax.checkpoint import Checkpointer, CheckpointError
from agilenn_jax.models import build_agilenn, build_reference, build_reference_nn
from agilenn_jax.training import experiment, stages, steps
from agilenn_jax.training import state as state_lib
from agilenn_jax.training.loop import Context
from agilenn_jax.training.sharding import jit_train_step, make_mesh, shard_batch
from tests.conftest import ROOT
from tests.helpers import fake_data_and_batch, run_on_8_devices, smoke_config

RESULT_KEYS = {
    "test_accuracy",
    "local_only_accuracy",
    "remote_only_accuracy",
    "achieved_skewness",
    "disorder_violation_rate",
    "alpha",
    "remote_symbols_per_sample",
    "remote_entropy_bits_per_sample",
    "num_params",
    "train_seconds",
}


@pytest.fixture(scope="module")
def reference_workdir(trained_workdir):
    """The pre-trained reference stage of the shared smoke run."""
    return trained_workdir


def _copy_reference(src, dst):
    shutil.copytree(
        os.path.join(src, layout.REFERENCE_DIR), os.path.join(dst, layout.REFERENCE_DIR)
    )


def _final_params(workdir):
    run = inference.load_run(workdir)  # the variables only: no data, no optimiser
    return run.variables["params"], run.step


def _context(config, data):
    return Context(
        data=data,
        pipeline=input_pipeline.Pipeline(config.data, config.seed),
        mesh=make_mesh(),
        writer=None,
        seed=config.seed,
        eval_batch_size=config.eval_batch_size,
    )


def test_resume_after_interruption_matches_uninterrupted(reference_workdir, tmp_path):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    for wd in (full, cut):
        _copy_reference(reference_workdir, wd)
    # A periodic checkpoint on an epoch boundary (14 steps/epoch) must not save a step twice.
    config = smoke_config(epochs=2)
    data = input_pipeline.load(config.data, config.seed)
    per_epoch = len(data.train) // config.train.batch_size
    res_full = experiment.run(
        smoke_config(epochs=2, checkpoint_every_steps=per_epoch), full, "train"
    )

    out = experiment.run(smoke_config(epochs=2, stop_after_steps=5), cut, "train")
    assert out == {"stage": "agilenn", "complete": False}
    assert Checkpointer(os.path.join(cut, layout.AGILENN_DIR)).latest_step() == 5
    res_cut = experiment.run(config, cut, "train")  # the same command again

    p_full, step_full = _final_params(full)
    p_cut, step_cut = _final_params(cut)
    assert step_full == step_cut == 2 * per_epoch
    chex.assert_trees_all_close(p_full, p_cut, rtol=1e-5, atol=1e-6)
    assert res_full["test_accuracy"] == pytest.approx(res_cut["test_accuracy"])
    assert RESULT_KEYS <= set(res_full)
    assert res_full["channel_perm"] == res_cut["channel_perm"]


def test_preselection_permutation_is_exact(reference_workdir):
    config = smoke_config()
    data = input_pipeline.load(config.data, config.seed)
    ctx = _context(config, data)
    ref = stages.load_reference(config, data, reference_workdir, ctx.mesh)
    perm, freq = stages.preselect_channels(config, ref, ctx)
    assert sorted(perm.tolist()) == list(range(8))
    k = 2
    assert np.all(freq[perm[:k]][:, None] >= freq[perm[k:]][None, :])
    assert freq.sum() == pytest.approx(k)  # each sample contributes exactly k top-k hits

    template = stages.agilenn_state_template(config, data, ctx.mesh)
    state = stages.init_agilenn_from_reference(config, ref, perm, template)
    x = jnp.asarray(next(ctx.pipeline.eval_batches(data.eval, 16))["image"])
    module = build_reference(config)
    f_old = module.apply(ref.variables(), x, method="features")
    f_new = build_agilenn(config).apply(state.variables(), x)["features"]
    np.testing.assert_allclose(f_new, f_old[..., perm], rtol=1e-5, atol=1e-5)
    # The frozen reference sees its original channel order: same logits as before.
    ref_fn = steps.reference_logits_fn(build_reference_nn(config), state.frozen)
    np.testing.assert_allclose(
        ref_fn(f_new), module.apply(ref.variables(), x), rtol=1e-4, atol=1e-4
    )

    # preselect.exclude moves the named channels behind every other, keeping the rest's order
    config.preselect.exclude = (int(perm[0]), int(perm[-1]))
    perm_x, freq_x = stages.preselect_channels(config, ref, ctx)
    np.testing.assert_array_equal(freq_x, freq)
    np.testing.assert_array_equal(perm_x[:-2], [ch for ch in perm if ch not in (perm[0], perm[-1])])
    assert sorted(perm_x[-2:].tolist()) == sorted([int(perm[0]), int(perm[-1])])


@pytest.mark.parametrize("exclude", [(8,), (-1,), (1, 1), (0, 1, 2, 3, 4, 5, 6)])
def test_bad_preselect_exclude_is_a_clear_error(exclude):
    config = smoke_config()  # 8 extractor channels, 2 local
    config.preselect.exclude = exclude
    with pytest.raises(ValueError, match=r"preselect\.exclude"):
        experiment.validate_config(config)


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no AgileNN checkpoint"):
        experiment.run(smoke_config(), str(tmp_path), "evaluate")
    with pytest.raises(CheckpointError, match="pretrain_reference"):
        experiment.run(smoke_config(), str(tmp_path), "train")
    with pytest.raises(CheckpointError, match="no AgileNN checkpoint"):
        inference.load_run(str(tmp_path))


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("loss.rho", 1.5, "rho"),
        ("model.k", 8, "k must be"),
        ("xai.rule", "simpson", "xai"),
        ("loss.disorder", "x", "disorder"),
        ("train.batch_size", 0, "batch_size"),
        ("eval_batch_size", 0, "eval_batch_size"),
        ("reference_train.max_to_keep", 0, "max_to_keep"),
        ("train.checkpoint_every_epochs", 0, "checkpoint_every_epochs"),
    ],
)
def test_bad_config_values(tmp_path, key, value, match):
    c = smoke_config()
    *sections, name = key.split(".")
    node = c
    for section in sections:
        node = node[section]
    node[name] = value
    with pytest.raises(ValueError, match=match):
        experiment.run(c, str(tmp_path), "all")


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ck"))
    state = {"w": jnp.arange(4.0)}
    ckpt.save(3, state, {"stage": "x"})
    restored, meta = ckpt.restore(state)
    np.testing.assert_array_equal(restored["w"], state["w"])
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "ck" / "3") for f in fs]
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpointer(str(tmp_path / "ck")).restore(state)
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpointer(str(tmp_path / "ck")).restore_subtree(("w",))
    assert all(os.path.exists(f) for f in files)  # nothing was deleted


def test_checkpoint_of_another_model_is_a_mismatch_not_damage(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(1, {"w": jnp.arange(4.0)}, {})
    ckpt.wait()
    with pytest.raises(CheckpointError, match="does not match the model"):
        Checkpointer(str(tmp_path / "ck")).restore({"w": jnp.arange(5.0)})


def test_reference_stage_keeps_its_own_max_to_keep(tmp_path):
    c = smoke_config()
    c.reference_train.max_to_keep = 3
    c.train.max_to_keep = 1
    c.reference_train.epochs = 3
    wd = str(tmp_path / "wd")
    experiment.run(c, wd, "pretrain_reference")
    steps_kept = Checkpointer(os.path.join(wd, layout.REFERENCE_DIR))._mgr.all_steps()
    assert len(steps_kept) == 3, steps_kept


def test_checkpoint_every_epochs_saves_those_epochs_and_the_last_step(tmp_path):
    c = smoke_config()
    c.reference_train.epochs = 5
    c.reference_train.max_to_keep = 10
    c.reference_train.checkpoint_every_epochs = 2
    c.reference_train.checkpoint_every_steps = 0
    wd = str(tmp_path / "wd")
    experiment.run(c, wd, "pretrain_reference")
    per_epoch = len(input_pipeline.load(c.data, c.seed).train) // c.reference_train.batch_size
    kept = sorted(Checkpointer(os.path.join(wd, layout.REFERENCE_DIR))._mgr.all_steps())
    assert kept == [2 * per_epoch, 4 * per_epoch, 5 * per_epoch]


def test_init_variables_compiles_once_per_module_and_keeps_the_seed():
    config = smoke_config()
    size = config.data.image_size
    first, again = build_reference(config), build_reference(config)  # equal, not identical
    a = state_lib.init_variables(first, size, 0)
    b = state_lib.init_variables(again, size, 0)
    c = state_lib.init_variables(again, size, 1)
    assert state_lib._jitted_init(first) is state_lib._jitted_init(again)
    assert state_lib._jitted_init(first)._cache_size() == 1  # one executable for both seeds
    chex.assert_trees_all_equal(a, b)
    kernel = lambda v: v["params"]["extractor"]["dw0"]["kernel"]  # noqa: E731
    assert not np.array_equal(kernel(a), kernel(c))


def test_data_parallel_step_on_8_fake_devices():
    code = textwrap.dedent(
        """
        import jax, numpy as np, chex
        from jax.sharding import Mesh
        from agilenn_jax.training import sharding, stages, steps
        from tests.helpers import fake_data_and_batch, smoke_config
        assert jax.device_count() == 8
        c = smoke_config()
        data, batch = fake_data_and_batch()
        outs = []
        for mesh in (sharding.make_mesh(), Mesh(np.asarray(jax.devices()[:1]), ("data",))):
            state = stages.agilenn_state_template(c, data, mesh)
            step = sharding.jit_train_step(steps.make_agilenn_train_step(c), mesh)
            b = sharding.shard_batch(batch, mesh)
            if mesh.size == 8:
                assert len(b["image"].sharding.device_set) == 8
                chex.assert_shape(b["image"].addressable_shards[0].data, (8, 12, 12, 3))
            state, m = step(state, b, jax.random.key(0))
            assert state.params["alpha_logit"].sharding.is_fully_replicated
            outs.append((jax.device_get(state.params), jax.device_get(m.compute())))
        chex.assert_trees_all_close(outs[0], outs[1], rtol=2e-4, atol=2e-5)
        from agilenn_jax.training import experiment
        c.eval_batch_size = 100  # evaluation is sharded too: must split over 8 devices
        try:
            experiment.validate_config(c)
            raise SystemExit("eval_batch_size=100 accepted on 8 devices")
        except ValueError as e:
            assert "eval_batch_size" in str(e), e
        print("OK", float(outs[0][1]["loss"]))
        """
    )
    r = run_on_8_devices(code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def _cli(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "launch.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_smoke_run(tmp_path):
    wd = str(tmp_path / "wd")
    r = _cli("--config=experiments/configs/smoke.py", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "AgileNN results" in r.stdout
    if host_tuning.wanted(dict(os.environ)):  # the launcher re-executed itself with the settings
        assert "host tuning applied" in r.stderr
    with open(os.path.join(wd, "results.json")) as f:
        res = json.load(f)
    assert RESULT_KEYS <= set(res)
    assert 0.0 <= res["test_accuracy"] <= 1.0 and 0.0 <= res["achieved_skewness"] <= 1.0
    assert res["remote_symbols_per_sample"] == 12 * 12 * 6
    # The objective under both importance definitions; the trained one is the headline.
    agg = res["importance_aggregate"]
    assert set(res["violation_rate_by_aggregate"]) == {"l1", "net"}
    assert res["violation_rate_by_aggregate"][agg] == pytest.approx(res["disorder_violation_rate"])
    assert res["skewness_by_aggregate"][agg] == pytest.approx(res["achieved_skewness"])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))  # TensorBoard
    # Rerunning evaluates from the checkpoint without retraining.
    r = _cli("--config=experiments/configs/smoke.py", f"--workdir={wd}", "--mode=evaluate")
    assert r.returncode == 0, r.stderr[-3000:]


def test_cli_bad_input_is_one_clear_line(tmp_path):
    r = _cli(
        "--config=experiments/configs/smoke.py",
        f"--workdir={tmp_path}",
        "--config.data.source=imagefolder",
        f"--config.data.path={tmp_path}/nope",
    )
    assert r.returncode != 0
    assert "error: ImageFolder path" in r.stderr and "--config.data.path" in r.stderr


def test_nan_fails_loudly(tmp_path):
    c = smoke_config()
    c.reference_train.lr = 1e30  # diverges within a few steps
    with pytest.raises(FloatingPointError, match="non-finite"):
        experiment.run(c, str(tmp_path), "pretrain_reference")


def test_each_jitted_step_compiles_once():
    """A weak-typed parameter (once: the quantizer's centroid init) turns strong after the first
    update and silently recompiles the step; every stage paid ~17 s per extra compile."""
    c = smoke_config()
    data, host_batch = fake_data_and_batch()
    mesh = make_mesh()
    batch = shard_batch(host_batch, mesh)
    for template, step_fn in (
        (stages.agilenn_state_template(c, data, mesh), steps.make_agilenn_train_step(c)),
        (stages.reference_state_template(c, data, mesh), steps.reference_train_step),
    ):
        state, step = template, jit_train_step(step_fn, mesh)
        state, _ = step(state, batch, jax.random.key(0))
        compiled = step._cache_size()  # the cache is per function: other tests' shapes count too
        for i in range(1, 4):
            state, _ = step(state, batch, jax.random.key(i))
        assert step._cache_size() == compiled


def test_unpermute_channels_is_the_gather_exactly_with_its_gradient():
    """The reference's channel un-permutation is a 0/1 matrix product (no gather in the
    second-order step): bit-equal to indexing, forward and backward, zeros included."""
    f = jax.random.uniform(jax.random.key(0), (3, 4, 4, 24), minval=0.0, maxval=6.0)
    f = f.at[0, 0, 0, :5].set(0.0)
    inv_perm = jnp.asarray(np.argsort(np.random.default_rng(0).permutation(24)), jnp.int32)
    np.testing.assert_array_equal(
        jax.jit(steps.unpermute_channels)(f, inv_perm), np.asarray(f)[..., np.asarray(inv_perm)]
    )
    g = jax.random.normal(jax.random.key(1), f.shape)
    want = jax.grad(lambda f: jnp.sum(g * f[..., inv_perm]))(f)
    got = jax.jit(jax.grad(lambda f: jnp.sum(g * steps.unpermute_channels(f, inv_perm))))(f)
    np.testing.assert_array_equal(got, want)
