"""AgileNN: extractor -> split at k -> (local NN) and (quantizer -> remote NN) -> combiner."""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agilenn_jax.models.extractor import FeatureExtractor
from agilenn_jax.models.layers import same_output_size
from agilenn_jax.models.local import LocalNN
from agilenn_jax.models.mobilenet import MOBILENETV2_STAGES, MobileNetV2Stack
from agilenn_jax.models.quantizer import ChannelGain, SoftHardQuantizer


def split_channels(num_channels: int, k: int = -1, split_ratio: float = 0.2) -> int:
    """Number of locally kept channels: ``k`` if given (>0), else round(split_ratio * C)."""
    if k is None or k <= 0:
        if not 0.0 < split_ratio < 1.0:
            raise ValueError(f"split_ratio must be in (0, 1), got {split_ratio}")
        k = max(1, round(split_ratio * num_channels))
    if not 0 < k < num_channels:
        raise ValueError(f"k must be in [1, {num_channels - 1}] for C={num_channels}, got {k}")
    return int(k)


def alpha_from_logit(alpha_logit: Any, temperature: float) -> Any:
    """alpha = sigmoid(w / T): the weight of the local prediction (the paper's combiner)."""
    return jax.nn.sigmoid(alpha_logit / temperature)


def alpha_logit_for(alpha: float, temperature: float) -> float:
    """The logit w with sigmoid(w / T) == alpha (alpha strictly inside (0, 1))."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"a fixed alpha must be strictly inside (0, 1), got {alpha}")
    return float(temperature * math.log(alpha / (1.0 - alpha)))


def combine(local_logits: Any, remote_logits: Any, alpha: Any) -> Any:
    """Final logits alpha * local + (1 - alpha) * remote, for jax or numpy arrays alike.

    The one place the combiner is written: training, export verification, the device client
    and offline evaluation all call it, so they cannot drift apart.
    """
    return alpha * local_logits + (1.0 - alpha) * remote_logits


class AgileNN(nn.Module):
    """The full AgileNN model; ``device`` and ``server`` are the two deployed halves.

    ``dtype`` is the compute dtype of the extractor, local and remote NNs; parameters, BN
    statistics, the quantizer and every output (features, logits, quantized) are float32, so
    losses, IG and the export read the same dtypes whatever it is.
    """

    num_classes: int
    k: int
    extractor_channels: Sequence[int] = (32, 24)
    extractor_strides: Sequence[int] = (3, 1)
    local_bn: bool = True
    num_centroids: int = 8
    quantizer_softness: float = 1.0
    # > 0: a per-channel gain (at most this) before the quantizer (quantizer.ChannelGain)
    channel_gain_max: float = 0.0
    remote_width: float = 1.0
    remote_stages: Sequence[Sequence[int]] = MOBILENETV2_STAGES
    remote_head_channels: int = 1280
    remote_dropout: float = 0.2
    temperature: float = 5.0
    fixed_alpha: float | None = None  # the paper's Fig 18 ablation: alpha frozen at this value
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.extractor = FeatureExtractor(
            self.extractor_channels,
            self.extractor_strides,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
        )
        self.local = LocalNN(self.num_classes, use_bn=self.local_bn, dtype=self.dtype)
        self.quantizer = SoftHardQuantizer(self.num_centroids, self.quantizer_softness)
        if self.channel_gain_max > 0:
            self.gain = ChannelGain(self.channel_gain_max)
        self.remote = MobileNetV2Stack(
            self.num_classes,
            width=self.remote_width,
            stages=self.remote_stages,
            head_channels=self.remote_head_channels,
            dropout=self.remote_dropout,
            depthwise_impl=self.depthwise_impl,
            dtype=self.dtype,
        )
        init = nn.initializers.zeros
        if self.fixed_alpha is not None:
            init = nn.initializers.constant(alpha_logit_for(self.fixed_alpha, self.temperature))
        self.alpha_logit = self.param("alpha_logit", init, ())

    def alpha(self) -> jax.Array:
        """alpha = sigmoid(w / T): the weight of the local prediction.

        With ``fixed_alpha`` the logit is initialised to give that alpha and gets no gradient,
        so every reader of the parameter (export, server) sees the fixed value.
        """
        w = self.alpha_logit
        if self.fixed_alpha is not None:
            w = jax.lax.stop_gradient(w)
        return alpha_from_logit(w, self.temperature)

    def device(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """What runs on the MCU: features, local logits, quantized remote features + indices."""
        f = self.extractor(x, train)
        if not 0 < self.k < f.shape[-1]:
            raise ValueError(f"k={self.k} must be in [1, {f.shape[-1] - 1}]")
        offloaded = f[..., self.k :]
        if self.channel_gain_max > 0:
            offloaded = self.gain(offloaded, train)
        q, idx = self.quantizer(offloaded)
        return {
            "features": jnp.asarray(f, jnp.float32),
            "quantizer_input": jnp.asarray(offloaded, jnp.float32),
            "local_logits": self.local(f[..., : self.k], train),
            "quantized": q,
            "indices": idx,
        }

    def server(self, quantized: jax.Array, train: bool = False) -> jax.Array:
        """What runs on the server: remote logits from the dequantized remote channels."""
        return self.remote(quantized, train)

    def serve(self, indices: jax.Array) -> jax.Array:
        """What the server computes from the received indices: centroid lookup, remote NN."""
        return self.server(self.centroids()[indices.astype(jnp.int32)], False)

    def combine(self, local_logits: jax.Array, remote_logits: jax.Array) -> jax.Array:
        return combine(local_logits, remote_logits, self.alpha())

    def centroids(self) -> jax.Array:
        return self.quantizer.centroids()

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        out = self.device(x, train)
        out["remote_logits"] = self.server(out["quantized"], train)
        out["logits"] = self.combine(out["local_logits"], out["remote_logits"])
        out["alpha"] = self.alpha()
        return out


def feature_shape(
    image_size: int, channels: Sequence[int], strides: Sequence[int]
) -> tuple[int, int, int]:
    """Extractor output shape (H, W, C) for a square input (SAME padding)."""
    s = int(image_size)
    for st in strides:
        s = same_output_size(s, st)
    return (s, s, int(channels[-1]))


def count_params(tree: Any) -> int:
    return int(sum(jnp.size(x) for x in jax.tree_util.tree_leaves(tree)))
