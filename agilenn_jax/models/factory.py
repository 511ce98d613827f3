"""Modules from an experiment config: the one place that maps config fields to constructors.

Training, inference, export and serving all build their models here, so a config field means
the same thing everywhere.
"""

from __future__ import annotations

import ml_collections

from agilenn_jax.models.agilenn import AgileNN, split_channels
from agilenn_jax.models.reference import ExtractorWithReference, ReferenceNN


def num_local_channels(config: ml_collections.ConfigDict) -> int:
    """k: channels kept on the device (``model.k``, or ``model.split_ratio`` of C)."""
    m = config.model
    return split_channels(int(m.extractor_channels[-1]), int(m.k), float(m.split_ratio))


def build_agilenn(config: ml_collections.ConfigDict, depthwise_impl: str | None = None) -> AgileNN:
    """AgileNN; ``depthwise_impl`` overrides the config's (the export needs the real conv)."""
    m = config.model
    return AgileNN(
        num_classes=config.data.num_classes,
        k=num_local_channels(config),
        extractor_channels=tuple(m.extractor_channels),
        extractor_strides=tuple(m.extractor_strides),
        local_bn=m.local_bn,
        num_centroids=m.num_centroids,
        quantizer_softness=m.quantizer_softness,
        remote_width=m.remote_width,
        remote_stages=tuple(tuple(s) for s in m.remote_stages),
        remote_head_channels=m.remote_head_channels,
        remote_dropout=m.remote_dropout,
        temperature=m.temperature,
        depthwise_impl=depthwise_impl or m.depthwise_impl,
    )


def build_reference(config: ml_collections.ConfigDict) -> ExtractorWithReference:
    """Extractor + reference NN, the model of the ``pretrain_reference`` stage."""
    m = config.model
    return ExtractorWithReference(
        num_classes=config.data.num_classes,
        extractor_channels=tuple(m.extractor_channels),
        extractor_strides=tuple(m.extractor_strides),
        width=m.reference_width,
        stages=tuple(tuple(s) for s in m.reference_stages),
        head_channels=m.reference_head_channels,
        dropout=m.remote_dropout,
        depthwise_impl=m.depthwise_impl,
    )


def build_reference_nn(config: ml_collections.ConfigDict) -> ReferenceNN:
    """The reference NN alone (same hyper-parameters as inside ``build_reference``)."""
    m = config.model
    return ReferenceNN(
        config.data.num_classes,
        width=m.reference_width,
        stages=tuple(tuple(s) for s in m.reference_stages),
        head_channels=m.reference_head_channels,
        dropout=m.remote_dropout,
        depthwise_impl=m.depthwise_impl,
    )
