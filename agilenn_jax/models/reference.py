"""The frozen reference NN whose Integrated Gradients define feature importance.

Why this architecture: the authors use an ImageNet-pretrained EfficientNet as the reference.
No pretrained weights can be downloaded here, so the reference is trained from scratch on the
extracted features (stage ``pretrain_reference``) together with the extractor. We use a
full-width MobileNetV2 inverted-residual stack over all C channels: it is the same MBConv family
as EfficientNet (minus squeeze-excitation), it is known to reach >90% on CIFAR-10 at 32x32
feature resolution, it shares code with the remote NN, and its cost is bounded so the
second-order IG step stays within ~2x of a plain step. Width and stages come from the config.
"""

import flax.linen as nn
import jax

from agilenn_jax.models.extractor import FeatureExtractor
from agilenn_jax.models.mobilenet import MobileNetV2Stack


class ReferenceNN(MobileNetV2Stack):
    """Full-channel MobileNetV2 stack used only offline, frozen during AgileNN training."""


class ExtractorWithReference(nn.Module):
    """Extractor + reference NN, trained jointly with CE in the ``pretrain_reference`` stage.

    Its ``extractor`` sub-tree initialises AgileNN's extractor; its ``reference`` sub-tree is then
    frozen and only used to attribute importance to the extracted channels.
    """

    num_classes: int
    extractor_channels: tuple = (32, 24)
    extractor_strides: tuple = (3, 1)
    width: float = 1.0
    stages: tuple = ()
    head_channels: int = 1280
    dropout: float = 0.2
    depthwise_impl: str = "auto"

    def setup(self) -> None:
        self.extractor = FeatureExtractor(
            self.extractor_channels, self.extractor_strides, depthwise_impl=self.depthwise_impl
        )
        self.reference = ReferenceNN(
            self.num_classes,
            width=self.width,
            stages=self.stages,
            head_channels=self.head_channels,
            dropout=self.dropout,
            depthwise_impl=self.depthwise_impl,
        )

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.extractor(x, train)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.reference(self.extractor(x, train), train)
