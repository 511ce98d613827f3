"""The device-side feature extractor: depthwise-separable conv blocks (MCU friendly)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agilenn_jax.models.layers import DepthwiseConv, pointwise_conv, relu6


def output_layer_names(num_blocks: int) -> tuple[str, str]:
    """The last pointwise conv and its BN of a ``FeatureExtractor`` with ``num_blocks`` blocks:
    for readers of its parameters that hold a config, not a module."""
    last = int(num_blocks) - 1
    return f"pw{last}", f"pw{last}_bn"


class FeatureExtractor(nn.Module):
    """Depthwise 3x3 (stride s) -> BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6, per block.

    Defaults give 96x96x3 -> 32x32x24: the first block subsamples by 3 (96/32), the second keeps
    resolution. Both ops lower to TFLite DEPTHWISE_CONV_2D / CONV_2D with BN folded and ReLU6
    fused, which is what makes the MCU export cheap. The output is in [0, 6], the range of the
    quantizer centroids. ``dtype`` is the compute (and output) dtype; parameters and BN
    statistics stay float32.
    """

    channels: Sequence[int] = (32, 24)
    strides: Sequence[int] = (3, 1)
    kernel_size: int = 3
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    @property
    def out_channels(self) -> int:
        return int(self.channels[-1])

    def output_layer_names(self) -> tuple[str, str]:
        """Names of the layers that produce the output channels: the last pointwise conv and
        its BN. ``permute_output_channels`` relies on these; ``__call__`` uses the same names."""
        return output_layer_names(len(self.channels))

    def permute_output_channels(
        self, variables: dict[str, Any], perm: np.ndarray
    ) -> dict[str, Any]:
        """The extractor's variables with output channel j taken from channel ``perm[j]``.

        Every leaf of the output conv and of its BN (params and statistics, whatever they hold:
        kernel, bias, scale, mean, ...) is permuted on its last axis, so the permuted extractor
        computes exactly ``features[..., perm]``. ``variables`` is left untouched.
        """
        perm = np.asarray(perm)
        if sorted(perm.tolist()) != list(range(self.out_channels)):
            raise ValueError(f"perm must be a permutation of {self.out_channels} channels")
        names = self.output_layer_names()
        out = {}
        for collection, tree in variables.items():
            tree = dict(tree)
            for name in names:
                if name in tree:
                    tree[name] = jax.tree.map(lambda v: v[..., perm], tree[name])
            out[collection] = tree
        missing = [n for n in names if n not in variables.get("params", {})]
        if missing:
            raise ValueError(f"extractor variables lack the output layers {missing}")
        return out

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.channels) != len(self.strides):
            raise ValueError(
                f"extractor channels {tuple(self.channels)} and strides {tuple(self.strides)} "
                "must have the same length"
            )
        bn = lambda name: nn.BatchNorm(  # noqa: E731
            use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype, name=name
        )
        last = len(self.channels) - 1
        for i, (c, s) in enumerate(zip(self.channels, self.strides, strict=True)):
            x = DepthwiseConv(
                self.kernel_size, s, self.depthwise_impl, dtype=self.dtype, name=f"dw{i}"
            )(x)
            x = relu6(bn(f"dw{i}_bn")(x))
            pw, pw_bn = self.output_layer_names() if i == last else (f"pw{i}", f"pw{i}_bn")
            x = pointwise_conv(int(c), self.depthwise_impl, self.dtype, name=pw)(x)
            x = relu6(bn(pw_bn)(x))
        return x
