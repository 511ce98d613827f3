"""The generated C device model (deploy/codegen.py), compiled with the host compiler and run on
int8 images, against TFLite Micro and the TFLite interpreter, for both kernel back-ends.

Expected equality, per output: the remote features are byte-identical to both TFLite Micro and
the TFLite interpreter. The local logits are byte-identical to TFLite Micro (TFLite's int8
reference semantics, which CMSIS-NN implements too); TF 2.20's interpreter rounds its
FULLY_CONNECTED output differently (its optimized x86 kernel rounds the final shift half up, its
reference kernel rounds once), so there the logits may differ by one step, and only there.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest

from agilenn_jax.deploy import codegen, tflite
from agilenn_jax.deploy.int8 import quantize
from tests.conftest import ROOT

CMSIS_ROOT = os.environ.get(
    "AGILENN_CMSIS_NN", os.path.join(os.path.dirname(ROOT), "shared", "third_party", "CMSIS-NN")
)
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"]
ARM_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16", "-Os"]
NUM_IMAGES = 12
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no host C compiler (gcc)")

# Reads N int8 images, runs the model on each (hook on even images, NULL on odd ones), scribbles
# over agilenn_scratch() (it must not alias the outputs), writes logits + features. Checks that
# the hook saw layers 0..L-1 in order; prints the layer names.
MAIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "agilenn_model.h"

static void on_layer(void *ctx, int layer)
{
    int *next = (int *)ctx;
    if (*next == layer) {
        ++*next;
    } else {
        *next = -1000;
    }
}

int main(int argc, char **argv)
{
    const size_t in_bytes = AGILENN_INPUT_H * AGILENN_INPUT_W * AGILENN_INPUT_C;
    FILE *in, *out;
    int i, n, y, x, c, rc;
    if (argc != 4) {
        return 2;
    }
    n = atoi(argv[1]);
    in = fopen(argv[2], "rb");
    out = fopen(argv[3], "wb");
    if (in == NULL || out == NULL) {
        return 3;
    }
    for (i = 0; i < n; ++i) {
        int next = 0;
        size_t scratch_bytes = 0;
        uint8_t *scratch;
        const int8_t *f;
        if (fread(agilenn_input(), 1, in_bytes, in) != in_bytes) {
            return 4;
        }
        rc = i % 2 ? agilenn_invoke(NULL, NULL) : agilenn_invoke(on_layer, &next);
        if (rc != 0) {
            fprintf(stderr, "agilenn_invoke: %d\n", rc);
            return 5;
        }
        if (i % 2 == 0 && next != AGILENN_NUM_LAYERS) {
            return 6;
        }
        scratch = agilenn_scratch(&scratch_bytes);
        if (scratch_bytes != AGILENN_SCRATCH_BYTES) {
            return 7;
        }
        memset(scratch, 0x5a, scratch_bytes);
        fwrite(agilenn_local_logits(), 1, AGILENN_NUM_CLASSES, out);
        f = agilenn_remote_features();
        for (y = 0; y < AGILENN_FEATURES_H; ++y) {
            for (x = 0; x < AGILENN_FEATURES_W; ++x) {
                for (c = 0; c < AGILENN_REMOTE_C; ++c) {
                    const int8_t v = f[(y * AGILENN_FEATURES_W + x) * AGILENN_FEATURES_C + c];
                    fputc((unsigned char)v, out);
                }
            }
        }
    }
    for (i = 0; i < AGILENN_NUM_LAYERS; ++i) {
        printf("%s\n", agilenn_layer_names[i]);
    }
    return fclose(out) != 0;
}
"""


def _jax_device_model(config, seed: int = 0) -> bytes:
    """The project's own export path (jax2tf -> int8 TFLite) on a randomly initialised device
    side (extractor + local NN only: fast to initialise)."""
    import jax
    import jax.numpy as jnp

    from agilenn_jax import inference
    from agilenn_jax.deploy import export
    from agilenn_jax.models import build_agilenn

    s = int(config.data.image_size)
    model = build_agilenn(config, depthwise_impl="conv")
    v = model.init(jax.random.key(seed), jnp.zeros((1, s, s, 3)), train=False, method="device")
    run = inference.TrainedRun("", config, model, jax.tree.map(np.asarray, dict(v)), {}, 0)
    calib = np.random.default_rng(seed).normal(size=(16, s, s, 3)).astype(np.float32)
    head = export.local_head(run)
    return tflite.convert(export.features_function(run), head, model.k, s, calib)[1]


def _tf_variant_model() -> bytes:
    """What the JAX models never produce, written in TF: depth multiplier 2, stride 2 with
    asymmetric SAME padding, a full 3x3 CONV_2D with fused RELU, a per-tensor FULLY_CONNECTED."""
    import tensorflow as tf

    rng = np.random.default_rng(3)

    def const(*shape, s=0.4):
        return tf.constant(rng.normal(0, s, shape).astype(np.float32))

    dw, cw, pw, fw = const(3, 3, 3, 2), const(3, 3, 6, 8), const(1, 1, 8, 12), const(4, 10)
    b0, b1, b2, fb = const(6, s=0.1), const(8, s=0.1), const(12, s=0.1), const(10, s=0.1)

    def device(x):
        h = tf.nn.relu6(tf.nn.depthwise_conv2d(x, dw, (1, 2, 2, 1), "SAME") + b0)
        h = tf.nn.relu(tf.nn.conv2d(h, cw, 1, "SAME") + b1)
        f = tf.nn.relu6(tf.nn.conv2d(h, pw, 1, "SAME") + b2)
        pooled = tf.nn.avg_pool2d(tf.slice(f, [0, 0, 0, 0], [1, 6, 6, 4]), 6, 6, "VALID")
        logits = tf.matmul(tf.reshape(pooled, (1, 4)), fw) + fb
        return logits, tf.slice(f, [0, 0, 0, 4], [1, 6, 6, 8])

    fn = tf.function(device, input_signature=[tf.TensorSpec((1, 12, 12, 3), tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    calib = rng.normal(size=(16, 1, 12, 12, 3)).astype(np.float32)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([c] for c in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    conv._experimental_disable_per_channel_quantization_for_dense_layers = True
    return conv.convert()


@pytest.fixture(scope="module")
def models():
    from experiments.configs import paper, smoke

    small = smoke.get_config()
    small.model.extractor_strides = (2, 1)  # asymmetric SAME padding (12 -> 6)
    return {
        "paper": _jax_device_model(paper.get_config("dataset=cifar10")),
        "small": _jax_device_model(small, seed=1),
        "variant": _tf_variant_model(),
    }


@pytest.fixture(scope="module")
def cmsis_objects(tmp_path_factory):
    """CMSIS-NN compiled once for the host (third-party code: no -Werror)."""
    if not os.path.isdir(CMSIS_ROOT):
        pytest.skip(f"CMSIS-NN not found at {CMSIS_ROOT} (set AGILENN_CMSIS_NN to a checkout)")
    sources, includes = codegen.cmsis_build_inputs(CMSIS_ROOT)
    out = tmp_path_factory.mktemp("cmsis")
    objs = []
    for src in sources:
        obj = str(out / (os.path.basename(src) + ".o"))
        subprocess.run(
            ["gcc", "-std=c99", "-O2", "-w", f"-I{includes[0]}", "-c", src, "-o", obj], check=True
        )
        objs.append(obj)
    return objs, includes


def _run_c(model: bytes, backend: str, tmp, images_q: np.ndarray, cmsis=None):
    gen = tmp / f"gen_{backend}"
    plan = codegen.generate(model, str(gen), backend)
    (tmp / "main.c").write_text(MAIN_C)
    cmd = ["gcc", *CFLAGS, f"-I{gen}", "-o", str(tmp / backend)]
    cmd += sorted(str(p) for p in gen.glob("*.c")) + [str(tmp / "main.c")]
    if backend == "cmsis":
        objs, includes = cmsis
        cmd += ["-DAGILENN_CMSIS_CHECK_DSP_SCRATCH", *(f"-isystem{d}" for d in includes), *objs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    images_q.tofile(tmp / "in.bin")
    r = subprocess.run(
        [str(tmp / backend), str(len(images_q)), str(tmp / "in.bin"), str(tmp / "out.bin")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, (r.returncode, r.stderr)
    out = np.fromfile(tmp / "out.bin", np.int8).reshape(len(images_q), -1)
    return plan, r.stdout.split(), out


def _references(model: bytes, images: np.ndarray):
    from agilenn_jax.deploy.tflm import TFLMRunner

    qp = tflite.quant_params(model)
    lite, micro = tflite.interpreter(model), TFLMRunner(model)
    runs = {
        "tflite": [tflite.run_interpreter(lite, images[i : i + 1], qp) for i in range(len(images))],
        "tflm": [micro(images[i : i + 1]) for i in range(len(images))],
    }
    return qp, {k: [np.concatenate([a.reshape(-1) for a in r]) for r in v] for k, v in runs.items()}


@needs_gcc
@pytest.mark.parametrize("name", ["paper", "small", "variant"])
@pytest.mark.parametrize("backend", codegen.BACKENDS)
def test_generated_c_matches_tflite(models, name, backend, tmp_path, request):
    cmsis = request.getfixturevalue("cmsis_objects") if backend == "cmsis" else None
    model = models[name]
    it = tflite.interpreter(model)
    shape = it.get_input_details()[0]["shape"]
    rng = np.random.default_rng(7)
    images = (rng.normal(size=(NUM_IMAGES, *shape[1:])) * 1.5).astype(np.float32)
    qp, ref = _references(model, images)
    images_q = np.concatenate([quantize(images[i : i + 1], qp["input"]) for i in range(NUM_IMAGES)])
    plan, names, out = _run_c(model, backend, tmp_path, images_q, cmsis)
    ncls = plan["layers"][-1]["output_shape"][-1]
    tflm, lite = np.stack(ref["tflm"]), np.stack(ref["tflite"])
    np.testing.assert_array_equal(out, tflm)  # logits and features, every byte
    np.testing.assert_array_equal(out[:, ncls:], lite[:, ncls:])
    assert np.abs(out[:, :ncls].astype(int) - lite[:, :ncls]).max() <= 1
    assert len(np.unique(out[:, ncls:])) > 16 and len(np.unique(out[:, :ncls])) > 8  # not trivial
    assert names == [layer["name"] for layer in plan["layers"]]
    if name != "variant":
        assert names == ["dw0", "pw0", "dw1", "pw1", "local_pool", "local_dense"]
    # The arena is at least the peak of simultaneously live buffers, and exactly that for the
    # AgileNN chains; what stays live after invoke (features + logits) leaves one free block.
    sizes = {t["tensor"]: t for t in plan["tensors"]}
    live = [
        sum(t["bytes"] for t in sizes.values() if t["layers"][0] <= i <= t["layers"][1])
        + plan["layers"][i]["scratch_bytes"]
        for i in range(len(plan["layers"]))
    ]
    assert max(live) <= plan["arena_bytes"] <= sum(live)
    if name != "variant":
        assert plan["arena_bytes"] <= max(live) + 8 * len(sizes)
        h, w, c = plan["features_shape"]
        assert plan["free_after_invoke"] >= plan["arena_bytes"] - h * w * c - ncls - 32


@needs_gcc
def test_plan_numbers_for_paper_model(models, tmp_path):
    plan = codegen.generate(models["paper"], str(tmp_path), "portable")
    rows = {r["name"]: r for r in plan["layers"]}
    assert rows["dw0"]["input_shape"] == [96, 96, 3] and rows["pw1"]["output_shape"] == [32, 32, 24]
    assert rows["pw1"]["macs"] == 32 * 32 * 24 * 32 and rows["dw1"]["macs"] == 32 * 32 * 32 * 9
    assert plan["k"] == 5 and plan["arena_bytes"] == 2 * 32 * 32 * 32  # dw1's input + output
    assert plan["free_after_invoke"] >= plan["arena_bytes"] - 32 * 32 * 24 - 16  # minus outputs
    assert 0 < plan["flash_bytes"] < 8 * 1024
    header = (tmp_path / "agilenn_model.h").read_text()
    for line in (
        "AGILENN_K 5",
        "AGILENN_REMOTE_C 19",
        "AGILENN_FEATURES_C 24",
        "AGILENN_NUM_LAYERS 6",
    ):
        assert f"#define {line}\n" in header
    assert sorted(os.listdir(tmp_path)) == [
        "agilenn_kernels.h",
        "agilenn_kernels_portable.c",
        "agilenn_model.c",
        "agilenn_model.h",
    ]


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="no arm-none-eabi-gcc")
@pytest.mark.parametrize("backend", codegen.BACKENDS)
def test_generated_c_compiles_for_cortex_m7(models, backend, tmp_path):
    if backend == "cmsis" and not os.path.isdir(CMSIS_ROOT):
        pytest.skip(f"CMSIS-NN not found at {CMSIS_ROOT}")
    codegen.generate(models["small"], str(tmp_path), backend)
    inc = (
        [f"-isystem{d}" for d in codegen.cmsis_build_inputs(CMSIS_ROOT)[1]]
        if backend == "cmsis"
        else []
    )
    for src in tmp_path.glob("*.c"):
        cmd = ["arm-none-eabi-gcc", *ARM_FLAGS, *CFLAGS[:1], *CFLAGS[2:], f"-I{tmp_path}", *inc]
        r = subprocess.run(
            [*cmd, "-c", str(src), "-o", str(src) + ".o"], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr


def _mutated(model: bytes, edit) -> bytes:
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema_fb

    m = schema_fb.ModelT.InitFromPackedBuf(bytearray(model), 0)
    edit(m, schema_fb)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_unsupported_models_raise(models, tmp_path):
    model = models["small"]
    codegen.generate(model, str(tmp_path / "ok"))  # the unmodified model is fine

    def max_pool(m, fb):
        code = next(
            c for c in m.operatorCodes if c.builtinCode == fb.BuiltinOperator.AVERAGE_POOL_2D
        )
        code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.MAX_POOL_2D

    def dilated(m, fb):
        op = next(
            o
            for o in m.subgraphs[0].operators
            if o.builtinOptionsType == fb.BuiltinOptions.Conv2DOptions
        )
        op.builtinOptions.dilationHFactor = 2

    def tanh(m, fb):
        op = next(
            o
            for o in m.subgraphs[0].operators
            if o.builtinOptionsType == fb.BuiltinOptions.Conv2DOptions
        )
        op.builtinOptions.fusedActivationFunction = fb.ActivationFunctionType.TANH

    for edit, message in (
        (max_pool, "MAX_POOL_2D"),
        (dilated, "dilation 2x1"),
        (tanh, "fused activation"),
    ):
        with pytest.raises(codegen.CodegenError, match=message):
            codegen.generate(_mutated(model, edit), str(tmp_path / "bad"))
    with pytest.raises(codegen.CodegenError, match="not a TFLite flatbuffer"):
        codegen.generate(b"not a model", str(tmp_path / "bad"))
    with pytest.raises(codegen.CodegenError, match="unknown backend"):
        codegen.generate(model, str(tmp_path / "bad"), "neon")
    assert not os.path.exists(tmp_path / "bad")


def test_float_model_raises():
    import tensorflow as tf

    fn = tf.function(
        lambda x: tf.nn.relu(x), input_signature=[tf.TensorSpec((1, 4, 4, 3), tf.float32)]
    )
    model = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], fn
    ).convert()
    with pytest.raises(codegen.CodegenError, match="int8"):
        codegen.generate(model, "/nonexistent/never/written")


def test_bad_cmsis_path(tmp_path):
    with pytest.raises(codegen.CodegenError, match="CMSIS-NN not found"):
        codegen.cmsis_build_inputs(str(tmp_path / "missing"))
    with pytest.raises(codegen.CodegenError, match="not a CMSIS-NN checkout"):
        codegen.cmsis_build_inputs(str(tmp_path))
    with pytest.raises(codegen.CodegenError, match="CMSIS-NN not found"):
        codegen.cmsis_build_inputs("")


def test_quantization_arithmetic_matches_tflite_rules():
    from agilenn_jax.deploy.tflite_graph import activation_range, quantize_multiplier, round_away

    assert [round_away(x) for x in (0.5, -0.5, 1.49999, 2.5, -2.5, 0.49999999999999994)] == [
        1,
        -1,
        1,
        3,
        -3,
        0,
    ]
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0 - 2**-40) == (1 << 30, 1)  # q rounds up to 2^31
    assert quantize_multiplier(2**-40) == (0, 0)  # below 2^-31: flushed to zero
    m, s = quantize_multiplier(0.0123)
    assert abs(m * 2.0 ** (s - 31) - 0.0123) < 1e-11
    assert activation_range(3, 6.0 / 255, -128) == (-128, 127)  # RELU6, [0, 6] in full range
    assert activation_range(3, 0.05, -10) == (-10, 110)
    assert activation_range(0, 0.05, -10) == (-128, 127)
