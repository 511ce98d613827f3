"""Flax (linen) modules of AgileNN: device side, server side and the frozen reference NN."""

from agilenn_jax.models.agilenn import AgileNN, alpha_from_logit, combine, split_channels
from agilenn_jax.models.baselines import BASELINES, METHODS, MobileNetV2, Offloaded
from agilenn_jax.models.extractor import FeatureExtractor
from agilenn_jax.models.factory import (
    build_agilenn,
    build_model,
    build_reference,
    build_reference_nn,
    load_pretrained_reference,
    method_of,
    num_local_channels,
)
from agilenn_jax.models.local import LocalNN
from agilenn_jax.models.mobilenet import MobileNetV2Stack
from agilenn_jax.models.quantizer import SoftHardQuantizer
from agilenn_jax.models.reference import ExtractorWithReference, ReferenceNN

__all__ = [
    "BASELINES",
    "METHODS",
    "AgileNN",
    "MobileNetV2",
    "Offloaded",
    "build_model",
    "method_of",
    "ExtractorWithReference",
    "FeatureExtractor",
    "LocalNN",
    "MobileNetV2Stack",
    "ReferenceNN",
    "SoftHardQuantizer",
    "alpha_from_logit",
    "build_agilenn",
    "build_reference",
    "build_reference_nn",
    "combine",
    "load_pretrained_reference",
    "num_local_channels",
    "split_channels",
]
