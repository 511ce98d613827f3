"""Modules from an experiment config: the one place that maps config fields to constructors.

Training, inference, export and serving all build their models here, so a config field means
the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from agilenn_jax.models.agilenn import AgileNN, split_channels
from agilenn_jax.models.baselines import METHODS, MobileNetV2, Offloaded
from agilenn_jax.models.efficientnet_lite import load_pretrained
from agilenn_jax.models.layers import compute_dtype
from agilenn_jax.models.reference import ExtractorWithReference, reference_nn


def num_local_channels(config: ml_collections.ConfigDict) -> int:
    """k: channels kept on the device (``model.k``, or ``model.split_ratio`` of C)."""
    m = config.model
    return split_channels(int(m.extractor_channels[-1]), int(m.k), float(m.split_ratio))


def model_dtype(config: ml_collections.ConfigDict, override: str | None = None) -> jnp.dtype:
    """The compute dtype (``model.dtype``, or ``override``); float32 for configs written before
    the field existed."""
    return compute_dtype(override or config.model.get("dtype", "float32"))


def build_agilenn(
    config: ml_collections.ConfigDict,
    depthwise_impl: str | None = None,
    dtype: str | None = None,
) -> AgileNN:
    """AgileNN; ``depthwise_impl`` and ``dtype`` override the config's (the export needs the
    real conv, and float32 whatever the run trained in)."""
    m = config.model
    return AgileNN(
        num_classes=config.data.num_classes,
        k=num_local_channels(config),
        extractor_channels=tuple(m.extractor_channels),
        extractor_strides=tuple(m.extractor_strides),
        local_bn=m.local_bn,
        num_centroids=m.num_centroids,
        quantizer_softness=m.quantizer_softness,
        channel_gain_max=m.get("channel_gain_max", 0.0),
        remote_width=m.remote_width,
        remote_stages=tuple(tuple(s) for s in m.remote_stages),
        remote_head_channels=m.remote_head_channels,
        remote_dropout=m.remote_dropout,
        temperature=m.temperature,
        fixed_alpha=m.fixed_alpha if m.get("fixed_alpha", -1.0) >= 0 else None,
        depthwise_impl=depthwise_impl or m.depthwise_impl,
        dtype=model_dtype(config, dtype),
    )


def method_of(config: ml_collections.ConfigDict) -> str:
    """``config.method``; agilenn for configs written before baselines existed."""
    name = config.get("method", "agilenn")
    if name not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {name!r}")
    return name


def build_model(
    config: ml_collections.ConfigDict,
    depthwise_impl: str | None = None,
    dtype: str | None = None,
) -> nn.Module:
    """The model of ``config.method``: AgileNN or one of the paper's baselines.

    Baselines reuse AgileNN's fields where they mean the same thing (the extractor, the
    quantizer, the remote stack's stages, head and dropout) and read ``config.baseline`` for
    the rest; see ``models/baselines.py``.
    """
    name = method_of(config)
    if name == "agilenn":
        return build_agilenn(config, depthwise_impl, dtype)
    m, b = config.model, config.baseline
    common = dict(
        num_classes=config.data.num_classes,
        stages=tuple(tuple(s) for s in m.remote_stages),
        head_channels=m.remote_head_channels,
        dropout=m.remote_dropout,
        depthwise_impl=depthwise_impl or m.depthwise_impl,
        dtype=model_dtype(config, dtype),
    )
    if name in ("edge_only", "local_only"):
        return MobileNetV2(
            width=b.net_width,
            stem_channels=b.stem_channels,
            stem_stride=b.stem_stride,
            mean=tuple(config.data.mean),
            std=tuple(config.data.std),
            **common,
        )
    return Offloaded(
        encoder="extractor" if name == "deepcod" else "mobilenetv2",
        extractor_channels=tuple(m.extractor_channels),
        extractor_strides=tuple(m.extractor_strides),
        split_block=b.split_block,
        stem_channels=b.stem_channels,
        stem_stride=b.stem_stride,
        width=m.remote_width if name == "deepcod" else b.net_width,
        num_centroids=m.num_centroids,
        quantizer_softness=m.quantizer_softness,
        exit_head=name == "spinn" and b.exit_head,
        **common,
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
        dtype=model_dtype(config),
        arch=reference_arch(config),
    )


def build_reference_nn(config: ml_collections.ConfigDict) -> nn.Module:
    """The reference NN alone (same hyper-parameters as inside ``build_reference``)."""
    m = config.model
    return reference_nn(
        reference_arch(config),
        config.data.num_classes,
        width=m.reference_width,
        stages=tuple(tuple(s) for s in m.reference_stages),
        head_channels=m.reference_head_channels,
        dropout=m.remote_dropout,
        depthwise_impl=m.depthwise_impl,
        dtype=model_dtype(config),
    )


def reference_arch(config: ml_collections.ConfigDict) -> str:
    """``model.reference_arch``; mobilenetv2 for configs written before the field existed."""
    return config.model.get("reference_arch", "mobilenetv2")


def load_pretrained_reference(
    config: ml_collections.ConfigDict, variables: dict[str, Any]
) -> dict[str, Any]:
    """``build_reference`` variables with the reference's pretrained weights in place (the
    extractor and the reference's fresh layers untouched); unchanged for an architecture without
    pretrained weights (mobilenetv2 is trained from scratch)."""
    if reference_arch(config) != "efficientnet_lite0":
        return variables
    sub = {col: variables[col]["reference"] for col in ("params", "batch_stats")}
    sub = load_pretrained(sub)
    return {**variables, **{col: {**variables[col], "reference": sub[col]} for col in sub}}
