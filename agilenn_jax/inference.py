"""A trained run, read back for inference: config, model and variables from a workdir.

This is what export and serving use. It needs no dataset and no optimiser: only ``params`` and
``batch_stats`` are read from the last AgileNN checkpoint, and they are checked against the
model the run's config describes before anything is built on them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agilenn_jax import input_pipeline, layout
from agilenn_jax.checkpoint import Checkpointer, CheckpointError
from agilenn_jax.models import build_model, method_of
from agilenn_jax.models.extractor import output_layer_names
from agilenn_jax.models.quantizer import channel_gain


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A finished (or checkpointed) run: ``model.apply(variables, ...)`` reproduces it."""

    workdir: str
    config: ml_collections.ConfigDict
    model: nn.Module  # AgileNN, or a baseline (config.method)
    variables: dict[str, Any]  # {"params", "batch_stats"} as host arrays
    meta: dict[str, Any]  # saved with the checkpoint (Algorithm 1's channel order, ...)
    step: int

    @property
    def alpha(self) -> float:
        return float(self.model.apply(self.variables, method="alpha"))

    @property
    def centroids(self) -> np.ndarray:
        return np.asarray(self.model.apply(self.variables, method="centroids"))


def _check_matches(model: nn.Module, config, variables: dict[str, Any], where: str) -> None:
    size = int(config.data.image_size)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    want = jax.tree.map(lambda x: tuple(x.shape), dict(expected))
    have = jax.tree.map(lambda x: tuple(np.shape(x)), variables)
    if jax.tree.structure(want) != jax.tree.structure(have) or want != have:
        raise CheckpointError(
            f"the checkpoint in {where} does not match the model in its config.json (the config "
            "was edited after training, or the checkpoint belongs to another run)"
        )


def load_run(workdir: str, depthwise_impl: str | None = None) -> TrainedRun:
    """The last checkpoint of ``workdir`` with the model its config describes (AgileNN's
    ``agilenn/`` stage, or a baseline's ``model/``).

    ``depthwise_impl`` overrides the config's (the TFLite export needs the grouped conv). The
    model is float32 whatever ``model.dtype`` the run trained in: the parameters are float32
    either way, and export, serving and the device reference all compute in float32.
    """
    config = layout.read_config(workdir)
    method = method_of(config)
    stage = layout.AGILENN_DIR if method == "agilenn" else layout.MODEL_DIR
    ckpt_dir = os.path.join(workdir, stage)
    ckpt = Checkpointer(ckpt_dir)
    try:
        step = ckpt.require_latest("AgileNN" if method == "agilenn" else method, layout.TRAIN_FIRST)
        saved, meta = ckpt.restore_subtree(("step", "params", "batch_stats"), step)
    finally:
        ckpt.close()
    model = build_model(config, depthwise_impl, dtype="float32")
    variables = {"params": saved["params"], "batch_stats": saved["batch_stats"]}
    _check_matches(model, config, variables, ckpt_dir)
    variables = ascending_centroids(variables)
    return TrainedRun(
        workdir=os.path.abspath(workdir),
        config=config,
        model=model,
        variables=variables,
        meta=meta,
        step=int(saved["step"]),
    )


def ascending_centroids(variables: dict[str, Any]) -> dict[str, Any]:
    """The same model with its quantizer's centroids relabelled in ascending order.

    Training may move centroids past each other (a strong rate term does). Labels are arbitrary:
    the remote NN sees centroid *values*, so sorting the centroid parameters changes no output,
    only which index names which value; and with ascending centroids the device's argmin is the
    int8 threshold count of ``deploy.int8``. Export, server and client all load through here,
    so they agree on the labels. Variables without a quantizer are returned as they are.
    """
    quant = variables["params"].get("quantizer")
    if quant is None:
        return variables
    logits = np.asarray(quant["centroid_logits"])
    order = np.argsort(logits, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return variables
    params = {**variables["params"], "quantizer": {**quant, "centroid_logits": logits[order]}}
    return {**variables, "params": params}


def first_images(
    pipeline: input_pipeline.Pipeline, split: input_pipeline.Split, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of ``split`` preprocessed for inference (no augmentation)."""
    n = min(int(n), len(split))
    sub = input_pipeline.Split(split.images[:n], split.labels[:n])
    images = [b["image"][b["mask"] > 0] for b in pipeline.eval_batches(sub, 100)]
    return np.concatenate(images)[:n], sub.labels


def held_out_images(config: ml_collections.ConfigDict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of a run's eval split, preprocessed exactly as in training."""
    data = input_pipeline.load(config.data, config.seed)
    return first_images(input_pipeline.Pipeline(config.data, config.seed), data.eval, n)


# ----------------------------------------------------------------- jitted halves of the model
# The variables are arguments, not closed-over constants: one compilation serves any weights of
# the same shapes, and XLA does not fold megabytes of weights into the program.


@functools.partial(jax.jit, static_argnums=0)
def forward(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The whole model in inference mode: logits, local/remote logits, indices, features."""
    return model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnums=0)
def device_indices(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """The quantizer indices the device sends for ``images`` (float model)."""
    return model.apply(variables, images, method="device")["indices"]


@functools.partial(jax.jit, static_argnums=0)
def remote_logits(model: nn.Module, variables: dict[str, Any], indices: jax.Array) -> jax.Array:
    """What the server computes from what the device sent (``model.serve``): for AgileNN and the
    DeepCOD/SPINN-style baselines, centroid lookup of the indices and the remote NN; for
    Edge-only, the whole network on the decoded uint8 image."""
    return model.apply(variables, indices, method="serve")


def fold_channel_gain(model: nn.Module, variables: dict[str, Any]) -> tuple[nn.Module, dict]:
    """The same device computation with the quantizer's per-channel gain folded into the
    extractor's output BN: ``(model without the gain, its variables)``.

    ``quantizer.ChannelGain`` computes min(g * ReLU6(BN(z)), 6) with g >= 1 on the offloaded
    channels, which is ReLU6(g * BN(z)): the BN's scale and bias times g. So the exported graph
    keeps its ops, its int8 output is the gained feature at full int8 resolution, and the
    shared-codebook thresholds apply as before. The local channels (0:k) are untouched. Models
    without a gain are returned as they are.
    """
    if not getattr(model, "channel_gain_max", 0.0):
        return model, variables
    k, max_gain = model.k, float(model.channel_gain_max)
    gain = np.asarray(channel_gain(variables["batch_stats"]["gain"]["mean"], max_gain))
    bn_name = output_layer_names(len(model.extractor_channels))[1]
    bn = variables["params"]["extractor"][bn_name]
    scale = np.asarray(bn["scale"], np.float32).copy()
    bias = np.asarray(bn["bias"], np.float32).copy()
    scale[k:] *= gain
    bias[k:] *= gain
    extractor = {**variables["params"]["extractor"], bn_name: {**bn, "scale": scale, "bias": bias}}
    params = {**variables["params"], "extractor": extractor}
    stats = {n: v for n, v in variables["batch_stats"].items() if n != "gain"}
    return model.clone(channel_gain_max=0.0), {**variables, "params": params, "batch_stats": stats}
