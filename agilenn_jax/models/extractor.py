"""The device-side feature extractor: depthwise-separable conv blocks (MCU friendly)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from agilenn_jax.models.layers import DepthwiseConv, relu6


class FeatureExtractor(nn.Module):
    """Depthwise 3x3 (stride s) -> BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6, per block.

    Defaults give 96x96x3 -> 32x32x24: the first block subsamples by 3 (96/32), the second keeps
    resolution. Both ops lower to TFLite DEPTHWISE_CONV_2D / CONV_2D with BN folded and ReLU6
    fused, which is what makes the MCU export cheap. The output is in [0, 6], the range of the
    quantizer centroids.
    """

    channels: Sequence[int] = (32, 24)
    strides: Sequence[int] = (3, 1)
    kernel_size: int = 3
    depthwise_impl: str = "auto"

    @property
    def out_channels(self) -> int:
        return int(self.channels[-1])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.channels) != len(self.strides):
            raise ValueError(
                f"extractor channels {tuple(self.channels)} and strides {tuple(self.strides)} "
                "must have the same length"
            )
        bn = lambda name: nn.BatchNorm(  # noqa: E731
            use_running_average=not train, momentum=0.9, epsilon=1e-3, name=name
        )
        for i, (c, s) in enumerate(zip(self.channels, self.strides, strict=True)):
            x = DepthwiseConv(self.kernel_size, s, self.depthwise_impl, name=f"dw{i}")(x)
            x = relu6(bn(f"dw{i}_bn")(x))
            x = nn.Conv(int(c), (1, 1), use_bias=False, name=f"pw{i}")(x)
            x = relu6(bn(f"pw{i}_bn")(x))
        return x
