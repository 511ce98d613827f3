"""Shared layers. ``DepthwiseConv`` exists because XLA:CPU runs grouped convolutions (and their
first and second derivatives, which the IG step needs) far slower than the same op written as
k*k shifted multiply-adds; GPUs/TPUs and the TFLite export want the real grouped conv."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DEPTHWISE_IMPLS = ("auto", "conv", "taps")
# ``model.dtype``: the compute dtype. Parameters and BatchNorm statistics are float32 in both.
COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str) -> jnp.dtype:
    """The jnp dtype of a ``model.dtype`` name; anything else is an error here rather than a
    silent float16 (or float64) model deep inside jit."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model.dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    return jnp.dtype(name)


def relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 6.0)


def same_output_size(size: int, stride: int) -> int:
    """Output length of a SAME-padded conv: ceil(size / stride) (TF/XLA/TFLite convention)."""
    return -(-int(size) // int(stride))


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    out = same_output_size(size, s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


class DepthwiseConv(nn.Module):
    """k x k depthwise conv, SAME padding, no bias; kernel [k, k, 1, C] for every ``impl``.

    The kernel is stored in float32 and cast to ``dtype`` (the compute dtype) with the input,
    like flax's ``nn.Conv(dtype=...)``.
    """

    kernel_size: int = 3
    stride: int = 1
    impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl not in DEPTHWISE_IMPLS:
            raise ValueError(f"depthwise impl {self.impl!r} not in {DEPTHWISE_IMPLS}")
        k, s, c = self.kernel_size, self.stride, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        x, w = jnp.asarray(x, self.dtype), jnp.asarray(w, self.dtype)
        impl = self.impl
        if impl == "auto":
            impl = "taps" if jax.default_backend() == "cpu" else "conv"
        if impl == "conv":
            return jax.lax.conv_general_dilated(
                x,
                w,
                (s, s),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=c,
            )
        (oh, ht, hb), (ow, wl, wr) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
        xp = jnp.pad(x, ((0, 0), (ht, hb), (wl, wr), (0, 0)))
        out = None
        for i in range(k):
            for j in range(k):
                tap = xp[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s, :]
                out = tap * w[i, j, 0] if out is None else out + tap * w[i, j, 0]
        return out
