"""MobileNetV2 inverted-residual stack without its stem (the remote NN, and the reference NN)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agilenn_jax.models.layers import DepthwiseConv, pointwise_conv, relu6

# (expansion t, output channels c, repeats n, first stride s), Sandler et al. 2018, Table 2.
MOBILENETV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def block_specs(stages: Sequence[Sequence[int]], width: float) -> list[tuple[int, int, int]]:
    """(expansion, output channels, stride) of every inverted-residual block, in order."""
    specs = []
    for t, c, n, s in stages:
        out = _make_divisible(c * width)
        specs += [(int(t), out, int(s) if i == 0 else 1) for i in range(int(n))]
    return specs


class InvertedResidual(nn.Module):
    expansion: int
    out_channels: int
    stride: int
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda: nn.BatchNorm(  # noqa: E731
            use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
        )
        conv = lambda c: pointwise_conv(c, self.depthwise_impl, self.dtype)  # noqa: E731
        in_ch = x.shape[-1]
        h = x
        if self.expansion != 1:
            h = relu6(bn()(conv(in_ch * self.expansion)(h)))
        h = DepthwiseConv(3, self.stride, self.depthwise_impl, dtype=self.dtype)(h)
        h = relu6(bn()(h))
        h = bn()(conv(self.out_channels)(h))
        if self.stride == 1 and in_ch == self.out_channels:
            h = h + x
        return h


class MobileNetV2Stack(nn.Module):
    """MobileNetV2 from its first inverted-residual block on: the stem conv is replaced by the
    device's feature extractor, so the input is a feature map (e.g. 32x32x19), not an image.

    Computes in ``dtype`` (parameters and BN statistics stay float32); the logits are float32
    whatever it is, so losses, IG and metrics never see bfloat16.

    ``blocks`` = (first, stop) runs only those inverted-residual blocks (counted over all
    stages; stop -1 = to the end) and ``head=False`` returns the last block's output instead of
    logits: the two halves of a network split between device and server (SPINN-style).
    """

    num_classes: int
    width: float = 1.0
    stages: Sequence[Sequence[int]] = MOBILENETV2_STAGES
    head_channels: int = 1280
    dropout: float = 0.2
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32
    blocks: tuple[int, int] = (0, -1)
    head: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, self.dtype)  # else a float32 input would promote the residual sums
        specs = block_specs(self.stages, self.width)
        first, stop = self.blocks
        stop = len(specs) if stop < 0 else stop
        if not 0 <= first <= stop <= len(specs):
            raise ValueError(f"blocks {self.blocks} outside the {len(specs)} blocks of the stack")
        for t, out, s in specs[first:stop]:
            x = InvertedResidual(t, out, s, self.depthwise_impl, dtype=self.dtype)(x, train)
        if not self.head:
            return x
        head = _make_divisible(self.head_channels * max(1.0, self.width))
        x = pointwise_conv(head, self.depthwise_impl, self.dtype)(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
        )(x)
        x = jnp.mean(relu6(x), axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype)(x), jnp.float32)
