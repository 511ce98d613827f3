"""Shared layers. ``DepthwiseConv`` exists because XLA:CPU runs grouped convolutions (and their
first and second derivatives, which the IG step needs) far slower than the same op written as
k*k shifted multiply-adds; GPUs/TPUs and the TFLite export want the real grouped conv. The same
``impl`` switch runs 1x1 convolutions (``pointwise_conv``) as matrix products on the CPU path:
XLA:CPU computes a 1x1 conv's kernel gradient as a whole-image "convolution" behind two
transposes, 3-4x slower than the matrix product it is."""

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


def resolve_impl(impl: str) -> str:
    """``auto`` -> ``taps`` on CPU, ``conv`` elsewhere; anything not in DEPTHWISE_IMPLS is an
    error."""
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise impl {impl!r} not in {DEPTHWISE_IMPLS}")
    if impl == "auto":
        return "taps" if jax.default_backend() == "cpu" else "conv"
    return impl


def _matmul_1x1(x, kernel, window_strides, padding, **kwargs):
    """``lax.conv_general_dilated`` for flax's ``nn.Conv``, as a matrix product where the conv
    is one (1x1 kernel, stride 1, NHWC/HWIO, no dilation or groups)."""
    plain = (
        kernel.shape[:-2] == (1,) * (kernel.ndim - 2)
        and all(int(s) == 1 for s in window_strides)
        and kwargs.get("feature_group_count", 1) == 1
        and all(int(d) == 1 for d in (kwargs.get("lhs_dilation") or ()))
        and all(int(d) == 1 for d in (kwargs.get("rhs_dilation") or ()))
    )
    if not plain:
        return jax.lax.conv_general_dilated(x, kernel, window_strides, padding, **kwargs)
    # On [N*H*W, C_in] rather than [N, H, W, C_in]: autodiff then writes the kernel gradient as
    # a plain x^T dy over one flattened axis, which XLA:CPU runs in place; over three batch-like
    # axes it first copied dy into a transposed [C_out, N*H*W] buffer (~2x slower backward).
    w = kernel.reshape(kernel.shape[-2:])
    y = jax.lax.dot_general(
        x.reshape(-1, x.shape[-1]), w, (((1,), (0,)), ((), ())), precision=kwargs.get("precision")
    )
    return y.reshape(*x.shape[:-1], w.shape[-1])


def pointwise_conv(features: int, impl: str = "auto", dtype: Any = jnp.float32, **kw) -> nn.Conv:
    """A 1x1 conv, no bias: ``nn.Conv`` (same parameters and names, so checkpoints and the
    export see no difference), computed as a matrix product on the ``taps`` path."""
    fn = _matmul_1x1 if resolve_impl(impl) == "taps" else jax.lax.conv_general_dilated
    return nn.Conv(features, (1, 1), use_bias=False, dtype=dtype, conv_general_dilated=fn, **kw)


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
        impl = resolve_impl(self.impl)
        k, s, c = self.kernel_size, self.stride, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        x, w = jnp.asarray(x, self.dtype), jnp.asarray(w, self.dtype)
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
