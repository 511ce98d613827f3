"""``data.on_device``: batches made on the mesh from the uint8 split (agilenn_jax/device_data.py).

Fast except the 2-process check (``slow``: ``python3 -m pytest -q -m slow
tests/test_on_device_data.py``).
"""

import math
import os
import socket
import subprocess
import sys
import textwrap
import types

import chex
import jax
import ml_collections
import numpy as np
import pytest

from agilenn_jax import device_data, input_pipeline
from agilenn_jax.training import experiment
from agilenn_jax.training.sharding import DATA_AXIS, make_mesh
from tests.conftest import ROOT
from tests.helpers import run_on_8_devices, smoke_config

# Device vs host preprocessing of the same images (no augmentation): float32 rounding of the
# resize (JAX: weight-matrix products, TF: per-pixel interpolation), divided by std ~0.25.
HOST_ATOL = 1e-5


def _cfg(**kw) -> ml_collections.ConfigDict:
    c = smoke_config().data
    with c.unlocked():
        c.update(kw)
    return c


def _split(n=256, size=8, seed=0) -> input_pipeline.Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), np.uint8)
    return input_pipeline.Split(images, np.arange(n, dtype=np.int32))  # label = sample index


def test_batch_shapes_dtypes_and_sharding():
    cfg = _cfg()  # digits-like: 8x8 stored, resized to 12x12, pad 1, no flip
    data = device_data.DeviceData(cfg, 0, _split(), make_mesh())
    batch = data.batch(64, epoch=0, index=2)
    assert set(batch) == {"image", "label"}
    chex.assert_shape(batch["image"], (64, 12, 12, 3))
    chex.assert_shape(batch["label"], (64,))
    chex.assert_type([batch["image"], batch["label"]], [np.float32, np.int32])
    chex.assert_tree_all_finite(batch)
    for x in batch.values():
        assert x.sharding.spec == jax.sharding.PartitionSpec(DATA_AXIS)
    assert data.images.sharding.is_fully_replicated and data.images.dtype == np.uint8


def test_each_epoch_is_a_permutation_and_resume_is_exact():
    cfg = _cfg(flip=True, pad=2)
    split = _split(n=200)
    mesh = make_mesh()
    data = device_data.DeviceData(cfg, 3, split, mesh)
    full = list(data.train_batches(32, epoch=1))
    assert len(full) == 200 // 32
    labels = np.concatenate([np.asarray(b["label"]) for b in full])
    assert len(set(labels.tolist())) == len(labels)  # no sample twice in an epoch
    # A fresh DeviceData (a new process after an interruption) resuming at batch 4.
    resumed = list(device_data.DeviceData(cfg, 3, split, mesh).train_batches(32, 1, 4))
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed, strict=True):
        chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))
    other_epoch = next(data.train_batches(32, epoch=2))
    other_seed = next(device_data.DeviceData(cfg, 4, split, mesh).train_batches(32, 1))
    for other in (other_epoch, other_seed):
        assert not np.array_equal(np.asarray(other["label"]), np.asarray(full[0]["label"]))


def test_crop_offsets_cover_the_pad_range_and_flip_rate_is_half():
    # Channel 0 holds row + 1, channel 1 column + 1 (0 only in the zero padding); identity
    # normalisation and no resize, so each sample's crop shift and flip can be read back.
    p, s, n = 2, 8, 4096
    cfg = _cfg(pad=p, flip=True, image_size=s, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    r = np.arange(1, s + 1, dtype=np.uint8)
    img = np.stack(np.broadcast_arrays(r[:, None], r[None, :], np.zeros((1, 1), np.uint8)), -1)
    split = input_pipeline.Split(np.repeat(img[None], n, 0), np.zeros(n, np.int32))
    data = device_data.DeviceData(cfg, 0, split, make_mesh())
    x = np.concatenate([np.round(np.asarray(b["image"]) * 255) for b in data.train_batches(256, 0)])
    c = s // 2  # always inside the original image for p <= s / 2
    dy = x[:, c, c, 0] - (c + 1)
    flipped = x[:, c, c + 1, 1] < x[:, c, c, 1]
    dx = np.where(flipped, x[:, c, c, 1] - (s - c), x[:, c, c, 1] - (c + 1))
    for shift in (dy, dx):
        counts = np.bincount((shift + p).astype(int), minlength=2 * p + 1)
        assert len(counts) == 2 * p + 1 and counts.min() > n / (2 * p + 1) / 2, counts
    assert 0.45 < flipped.mean() < 0.55, flipped.mean()
    assert np.any(x == 0)  # the zero padding shows up at the borders


@pytest.mark.parametrize("stored,size", [(8, 12), (32, 96), (16, 10), (8, 8)])
def test_without_augmentation_equals_the_host_pipeline(stored, size):
    cfg = _cfg(augment=False, image_size=size, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    split = _split(n=64, size=stored)
    data = device_data.DeviceData(cfg, 0, split, make_mesh())
    batch = jax.device_get(data.batch(32, epoch=0, index=1))
    idx = batch["label"]  # label = sample index
    host = input_pipeline.Pipeline(cfg, 0).eval_batches(
        input_pipeline.Split(split.images[idx], split.labels[idx]), 32
    )
    want = next(host)
    np.testing.assert_array_equal(batch["label"], want["label"])
    np.testing.assert_allclose(batch["image"], want["image"], rtol=0, atol=HOST_ATOL)


def test_memory_check_refuses_a_split_too_large_for_the_device():
    dev = types.SimpleNamespace(memory_stats=lambda: {"bytes_limit": 1000})
    mesh = types.SimpleNamespace(local_devices=[dev])
    device_data.check_memory(500, mesh)  # exactly MAX_MEMORY_FRACTION: accepted
    with pytest.raises(input_pipeline.DatasetError, match="on_device=False"):
        device_data.check_memory(501, mesh)
    cpu = types.SimpleNamespace(memory_stats=lambda: None)  # CPU: nothing to check against
    device_data.check_memory(10**12, types.SimpleNamespace(local_devices=[cpu]))


def test_batch_larger_than_the_split_is_a_clear_error():
    data = device_data.DeviceData(_cfg(), 0, _split(n=32), make_mesh())
    with pytest.raises(input_pipeline.DatasetError, match="exceeds"):
        next(data.train_batches(64, 0))


def test_smoke_run_on_device(tmp_path, monkeypatch):
    def host_train_batches(*args, **kwargs):
        raise AssertionError("data.on_device=True read training batches on the host")

    monkeypatch.setattr(input_pipeline.Pipeline, "train_batches", host_train_batches)
    c = smoke_config()
    with c.unlocked():
        c.data.on_device = True
    res = experiment.run(c, str(tmp_path), "all")
    assert 0.0 <= res["test_accuracy"] <= 1.0
    floats = [v for v in res.values() if isinstance(v, float)]
    assert floats and all(math.isfinite(v) for v in floats), res


def test_eight_fake_devices():
    code = textwrap.dedent(
        """
        import jax, numpy as np, chex
        from jax.sharding import Mesh
        from agilenn_jax import device_data, input_pipeline
        from agilenn_jax.training import sharding, stages, steps
        from tests.helpers import smoke_config
        assert jax.device_count() == 8
        c = smoke_config()
        with c.data.unlocked():
            c.data.flip = True
        rng = np.random.default_rng(0)
        split = input_pipeline.Split(rng.integers(0, 256, (192, 8, 8, 3), np.uint8),
                                     rng.integers(0, 10, 192).astype(np.int32))
        mesh = sharding.make_mesh()
        data8 = device_data.DeviceData(c.data, 0, split, mesh)
        one = Mesh(np.asarray(jax.devices()[:1]), ("data",))
        data1 = device_data.DeviceData(c.data, 0, split, one)
        b8, b1 = next(data8.train_batches(64, 1, 2)), next(data1.train_batches(64, 1, 2))
        assert len(b8["image"].sharding.device_set) == 8
        chex.assert_shape(b8["image"].addressable_shards[0].data, (8, 12, 12, 3))
        chex.assert_shape(b8["label"].addressable_shards[0].data, (8,))
        np.testing.assert_array_equal(np.asarray(b8["label"]), np.asarray(b1["label"]))
        np.testing.assert_allclose(np.asarray(b8["image"]), np.asarray(b1["image"]), atol=1e-6)
        data = input_pipeline.Data(split, split, "val", 10)
        state = stages.agilenn_state_template(c, data, mesh)
        step = sharding.jit_train_step(steps.make_agilenn_train_step(c), mesh)
        state, m = step(state, b8, jax.random.key(0))
        loss = float(m.compute()["loss"])
        assert np.isfinite(loss), loss
        print("OK", loss)
        """
    )
    r = run_on_8_devices(code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


_TWO_PROCESS = textwrap.dedent(
    """
    import sys, jax, numpy as np
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh
    from agilenn_jax import device_data, input_pipeline
    from agilenn_jax.training import sharding
    from tests.helpers import smoke_config
    c = smoke_config()
    rng = np.random.default_rng(0)
    split = input_pipeline.Split(rng.integers(0, 256, (128, 8, 8, 3), np.uint8),
                                 np.arange(128, dtype=np.int32))
    mesh = sharding.make_mesh()
    assert mesh.size == 2 and jax.process_count() == 2
    glob = next(device_data.DeviceData(c.data, 0, split, mesh).train_batches(64, 1, 1))
    glob = multihost_utils.process_allgather(glob, tiled=True)
    local = Mesh(np.asarray(jax.local_devices()), ("data",))
    want = next(device_data.DeviceData(c.data, 0, split, local).train_batches(64, 1, 1))
    np.testing.assert_array_equal(glob["label"], np.asarray(want["label"]))
    np.testing.assert_allclose(glob["image"], np.asarray(want["image"]), atol=1e-6)
    print("OK")
    """
)


@pytest.mark.slow
def test_two_processes_make_the_one_process_batches():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESS, f"127.0.0.1:{port}", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "OK" in out, err[-3000:]
