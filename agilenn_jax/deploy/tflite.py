"""jax2tf lowering and TFLite conversion (float32 and full-int8), and the TFLite interpreter."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from agilenn_jax.deploy.int8 import quantize

# Builtin operators registered by TFLite Micro (tflite-micro micro_mutable_op_resolver.h).
TFLM_BUILTINS = frozenset(
    (
        "ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL "
        "BATCH_TO_SPACE_ND BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CIRCULAR_BUFFER "
        "CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE DIV ELU "
        "EMBEDDING_LOOKUP EQUAL ETHOSU EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD "
        "FULLY_CONNECTED GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION "
        "L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOG_SOFTMAX LOGICAL_AND LOGICAL_NOT LOGICAL_OR "
        "LOGISTIC MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD PADV2 "
        "PRELU QUANTIZE READ_VARIABLE REDUCE_MAX RELU RELU6 RESHAPE RESIZE_BILINEAR "
        "RESIZE_NEAREST_NEIGHBOR ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND "
        "SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM "
        "SVDF TANH TRANSPOSE TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE "
        "ZEROS_LIKE "
    ).split()
)


class UnsupportedOpsError(ValueError):
    """The converted model uses operators TFLite Micro does not register."""


def _converter(tf_fn, calib: np.ndarray | None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()], tf_fn)
    if calib is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def convert(
    features_fn: Callable,
    head: tuple[np.ndarray, np.ndarray],
    k: int,
    image_size: int,
    calib: np.ndarray,
) -> tuple[bytes, bytes]:
    """jax2tf (graph lowering, no XLA ops) -> float32 TFLite and full-int8 TFLite.

    ``features_fn`` (image -> extractor output, all channels) is lowered by jax2tf; the local NN
    is written here in TF as global average pooling + one dense layer (``head`` = kernel, bias
    with the BN already folded in) so that it lowers to AVERAGE_POOL_2D + FULLY_CONNECTED, two
    kernels with exact integer semantics that generated C reproduces bit for bit (jnp.mean
    lowers to SUM + MUL, and the BN to SUB/MUL/ADD). The outputs are (local logits, the
    offloaded channels k:), both channel SLICEs of the one extractor output.
    ``features_fn`` closes over the trained variables on purpose: they become the flatbuffer's
    constant tensors, which is what a device model is.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    kernel = tf.constant(np.asarray(head[0], np.float32))
    bias = tf.constant(np.asarray(head[1], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        feats = jax2tf.convert(
            features_fn, with_gradient=False, native_serialization=False, enable_xla=False
        )

        def device(x):
            f = feats(x)
            h, w, c = (int(d) for d in f.shape[1:])
            local = tf.slice(f, [0, 0, 0, 0], [1, h, w, k])
            pooled = tf.nn.avg_pool2d(local, (h, w), (h, w), "VALID")
            logits = tf.matmul(tf.reshape(pooled, (1, k)), kernel) + bias
            return logits, tf.slice(f, [0, 0, 0, k], [1, h, w, c - k])

        tf_fn = tf.function(
            device,
            autograph=False,
            input_signature=[tf.TensorSpec((1, image_size, image_size, 3), tf.float32)],
        )
        return _converter(tf_fn, None), _converter(tf_fn, calib)


def convert_function(fn: Callable, image_size: int, calib: np.ndarray) -> tuple[bytes, bytes]:
    """jax2tf -> float32 and full-int8 TFLite of ``fn`` (image [1, S, S, 3] -> one array or a
    tuple), lowered whole: the baselines' device parts (a whole MobileNetV2, an encoder, an
    encoder + exit head). ``fn`` closes over the trained variables on purpose (see ``convert``).
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tf_fn = tf.function(
            jax2tf.convert(fn, with_gradient=False, native_serialization=False, enable_xla=False),
            autograph=False,
            input_signature=[tf.TensorSpec((1, image_size, image_size, 3), tf.float32)],
        )
        return _converter(tf_fn, None), _converter(tf_fn, calib)


def interpreter(model: bytes):
    """The reference TFLite interpreter (builtin kernels only, no delegates)."""
    import tensorflow as tf

    it = tf.lite.Interpreter(
        model_content=model,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    return it


def op_list(model: bytes) -> list[str]:
    return [op["op_name"] for op in interpreter(model)._get_ops_details()]


def check_tflm_ops(ops: list[str]) -> None:
    bad = sorted(set(ops) - TFLM_BUILTINS)
    if bad:
        raise UnsupportedOpsError(f"ops not supported by TFLite Micro: {', '.join(bad)}")


def output_positions(it) -> list[int]:
    """Positions of (local logits [1, K], remote features [1, h, w, c]) among the model's
    outputs: the converter does not keep the JAX function's output order, ranks tell them apart.
    A baseline's device model may have only one of the two."""
    outs = it.get_output_details()
    return sorted(range(len(outs)), key=lambda i: len(outs[i]["shape"]))


def output_names(it) -> list[str]:
    """``local_logits`` (rank 2) / ``remote_features`` (rank 4), in ``output_positions`` order."""
    outs = it.get_output_details()
    return [
        "local_logits" if len(outs[i]["shape"]) == 2 else "remote_features"
        for i in output_positions(it)
    ]


def quant_params(model: bytes) -> dict[str, Any]:
    """Scale and zero point of the int8 model's input and its outputs (by name)."""
    it = interpreter(model)
    outs = it.get_output_details()
    pos = output_positions(it)

    def q(d):
        return {"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}

    named = {name: q(outs[i]) for name, i in zip(output_names(it), pos, strict=True)}
    return {"input": q(it.get_input_details()[0]), **named, "output_positions": pos}


def run_interpreter(it, x: np.ndarray, qp: dict[str, Any] | None = None):
    """One image through a TFLite interpreter -> (local logits, remote features); ``qp`` given:
    the int8 model (input quantized here), else the float32 model."""
    return invoke(it, quantize(x, qp["input"]) if qp is not None else x.astype(np.float32))


def invoke(it, x: np.ndarray):
    """One input already in the model's dtype -> (local logits, remote features)."""
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    outs = it.get_output_details()
    return tuple(it.get_tensor(outs[i]["index"]) for i in output_positions(it))
