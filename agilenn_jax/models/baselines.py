"""The paper's baselines as first-class models, built from AgileNN's own parts.

- ``MobileNetV2``: a stem conv + ``MobileNetV2Stack``, i.e. a whole network on images. It is the
  Edge-only server NN (the device only codes the image) and the MCUNet-style local-only network
  (everything on the device, nothing sent).
- ``Offloaded``: a device encoder -> the soft-to-hard quantizer -> (entropy coding) -> a server
  NN, with an optional early-exit head on the device. DeepCOD-style: the encoder is AgileNN's
  extractor and *all* its channels are sent (AgileNN with nothing kept local, no XAI).
  SPINN-style: MobileNetV2 split after block b; its first blocks run on the device.

Every model returns a dict with ``logits`` (the method's prediction), so one train and eval step
serves all of them; offloading models also have AgileNN's ``device`` / ``server`` / ``serve`` /
``centroids`` / ``alpha`` methods, so export, server and client treat them like AgileNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agilenn_jax.models.extractor import FeatureExtractor
from agilenn_jax.models.layers import relu6
from agilenn_jax.models.local import LocalNN
from agilenn_jax.models.mobilenet import MOBILENETV2_STAGES, MobileNetV2Stack, block_specs
from agilenn_jax.models.quantizer import SoftHardQuantizer

METHODS = ("agilenn", "edge_only", "local_only", "deepcod", "spinn")
BASELINES = METHODS[1:]


class Stem(nn.Module):
    """MobileNetV2's first layer: 3x3 conv (stride ``stride``) -> BN -> ReLU6."""

    channels: int = 32
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.channels, (3, 3), (self.stride,) * 2, use_bias=False, dtype=self.dtype)(
            jnp.asarray(x, self.dtype)
        )
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
        )(x)
        return relu6(x)


class MobileNetV2(nn.Module):
    """A whole MobileNetV2 on images (stem included): Edge-only's server NN, and the
    local-only network that runs entirely on the MCU. ``mean``/``std`` let ``serve`` take the
    uint8 image the device sends."""

    num_classes: int
    width: float = 1.0
    stages: Sequence[Sequence[int]] = MOBILENETV2_STAGES
    head_channels: int = 1280
    stem_channels: int = 32
    stem_stride: int = 1
    dropout: float = 0.2
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.stem = Stem(self.stem_channels, self.stem_stride, dtype=self.dtype)
        self.net = MobileNetV2Stack(
            self.num_classes,
            width=self.width,
            stages=self.stages,
            head_channels=self.head_channels,
            dropout=self.dropout,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
        )

    def logits(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.net(self.stem(x, train), train)

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        return {"logits": self.logits(x, train)}

    def serve(self, image: jax.Array) -> jax.Array:
        """uint8 images [B, H, W, 3] as the device sent them -> logits (Edge-only's server)."""
        x = jnp.asarray(image, jnp.float32) / 255.0
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return self.logits(x, False)

    def alpha(self) -> jax.Array:
        return jnp.zeros((), jnp.float32)


class Offloaded(nn.Module):
    """Device encoder -> soft-to-hard quantizer -> server NN (+ optional device exit head).

    ``encoder="extractor"`` (DeepCOD-style): AgileNN's depthwise-separable extractor, all of its
    ``extractor_channels[-1]`` channels quantized and sent; the server is a MobileNetV2 stack
    without stem (AgileNN's remote NN on all C channels).
    ``encoder="mobilenetv2"`` (SPINN-style): stem + the first ``split_block`` inverted-residual
    blocks on the device, the rest on the server. A block ends in a linear bottleneck; the split
    activation is clipped to ReLU6's range so the quantizer's centroids (in (0, 6)) cover it.
    ``exit_head``: GAP + dense on the split activation, the device's early-exit classifier.
    """

    num_classes: int
    encoder: str = "extractor"  # extractor | mobilenetv2
    extractor_channels: Sequence[int] = (32, 24)
    extractor_strides: Sequence[int] = (3, 1)
    split_block: int = 2
    stem_channels: int = 32
    stem_stride: int = 1
    width: float = 1.0
    stages: Sequence[Sequence[int]] = MOBILENETV2_STAGES
    head_channels: int = 1280
    dropout: float = 0.2
    num_centroids: int = 8
    quantizer_softness: float = 1.0
    exit_head: bool = False
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        stack = dict(
            width=self.width,
            stages=self.stages,
            head_channels=self.head_channels,
            dropout=self.dropout,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
        )
        if self.encoder == "extractor":
            self.extractor = FeatureExtractor(
                self.extractor_channels,
                self.extractor_strides,
                depthwise_impl=self.depthwise_impl,
                dtype=self.dtype,
            )
            self.remote = MobileNetV2Stack(self.num_classes, **stack)
        elif self.encoder == "mobilenetv2":
            n = len(block_specs(self.stages, self.width))
            if not 1 <= self.split_block < n:
                raise ValueError(f"split_block must be in [1, {n - 1}], got {self.split_block}")
            self.stem = Stem(self.stem_channels, self.stem_stride, dtype=self.dtype)
            self.front = MobileNetV2Stack(
                self.num_classes, blocks=(0, self.split_block), head=False, **stack
            )
            self.remote = MobileNetV2Stack(self.num_classes, blocks=(self.split_block, -1), **stack)
        else:
            raise ValueError(f"encoder must be extractor or mobilenetv2, got {self.encoder!r}")
        if self.exit_head:
            self.local = LocalNN(self.num_classes, use_bn=True, dtype=self.dtype)
        self.quantizer = SoftHardQuantizer(self.num_centroids, self.quantizer_softness)

    def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The device's float activation before quantization, in [0, 6]."""
        if self.encoder == "extractor":
            return self.extractor(x, train)
        return relu6(self.front(self.stem(x, train), train))

    def device(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """What runs on the MCU: the sent activation, its indices, the exit head's logits."""
        f = self.encode(x, train)
        q, idx = self.quantizer(f)
        out = {"features": jnp.asarray(f, jnp.float32), "quantized": q, "indices": idx}
        if self.exit_head:
            out["local_logits"] = self.local(f, train)
        return out

    def server(self, quantized: jax.Array, train: bool = False) -> jax.Array:
        return self.remote(quantized, train)

    def serve(self, indices: jax.Array) -> jax.Array:
        """What the server computes from the received indices: centroid lookup, server NN."""
        return self.server(self.centroids()[indices.astype(jnp.int32)], False)

    def centroids(self) -> jax.Array:
        return self.quantizer.centroids()

    def alpha(self) -> jax.Array:
        """No combiner: the prediction is the server's (the exit head decides, not mixes)."""
        return jnp.zeros((), jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        out = self.device(x, train)
        out["remote_logits"] = self.server(out["quantized"], train)
        out["logits"] = out["remote_logits"]
        if train:
            out["assignment"] = self.quantizer.assignment(out["features"])
        return out
