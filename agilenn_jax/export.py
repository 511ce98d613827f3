"""Device-side export: jax2tf -> TFLite (float32 and full-int8), verified on TFLite Micro.

The exported device model maps an image to ``(local_logits, remote_features)``: the local NN's
logits and the extractor's offloaded channels (k:), both int8 in the int8 model. The quantizer's
argmin over centroids is *not* in the graph: with sorted scalar centroids it is exactly
``index = #{j : q > t_j}`` for int8 thresholds ``t_j`` (the centroid midpoints mapped to the
output's int8 scale), a few integer compares in C (see the generated header). ``indices_from_int8``
is that same computation, and it is what the codec sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agilenn_jax import codec, input_pipeline, train
from agilenn_jax.models.agilenn import feature_shape

FLASH_BUDGET = 1024 * 1024  # STM32F746: 1 MB flash
SRAM_BUDGET = 320 * 1024  # 320 KB SRAM
CLOCKS_MHZ = (216, 128, 64)

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

# Cycle model for int8 CMSIS-NN kernels on a Cortex-M7 (dual-issue, SIMD SMLAD = 2 MACs/cycle).
# Assumptions (estimates, not measurements): 1x1 / regular conv and dense kernels reach about
# half of the SMLAD peak once im2col, requantisation and loads are paid (1.0 cycle/MAC); 3x3
# depthwise kernels reuse less data per load (2.0 cycles/MAC); element-wise / pooling ops cost
# ~2 cycles per element touched. The CMSIS-NN paper (Lai, Suda, Chandra 2018, arXiv:1801.06601)
# reports 4.6x throughput over naive int8 kernels at these rates; calibrate CYCLES_PER_MAC
# against a real board's DWT cycle counter before quoting absolute latency.
CYCLES_PER_MAC = {"CONV_2D": 1.0, "FULLY_CONNECTED": 1.0, "DEPTHWISE_CONV_2D": 2.0}
CYCLES_PER_ELEMENT = 2.0


class ExportError(RuntimeError):
    """The workdir cannot be exported, or the result is not deployable as configured."""


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ExportError(f"{workdir} has no config.json: is it the workdir of a trained run?")
    with open(path) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    cfg.model.extractor_channels = tuple(cfg.model.extractor_channels)
    cfg.model.extractor_strides = tuple(cfg.model.extractor_strides)
    for key in ("remote_stages", "reference_stages"):
        cfg.model[key] = tuple(tuple(s) for s in cfg.model[key])
    for key in ("mean", "std"):
        cfg.data[key] = tuple(cfg.data[key])
    return cfg


def device_function(config: ml_collections.ConfigDict, variables: dict[str, Any]):
    """image [1, H, W, 3] float -> (local_logits [1, K], remote_features [1, h, w, C - k])."""
    with config.unlocked():
        config.model.depthwise_impl = "conv"  # lowers to DEPTHWISE_CONV_2D
    model = train.build_agilenn(config)

    def fn(x):
        out = model.apply(variables, x, method="device")
        return out["local_logits"], out["features"][..., model.k :]

    return fn, model


def _converter(tf_fn, calib: np.ndarray | None):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()], tf_fn)
    if calib is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def convert(fn, image_size: int, calib: np.ndarray) -> tuple[bytes, bytes]:
    """jax2tf (graph lowering, no XLA ops) -> float32 TFLite and full-int8 TFLite."""
    import warnings

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


def _interpreter(model: bytes):
    import tensorflow as tf

    it = tf.lite.Interpreter(
        model_content=model,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    return it


def op_list(model: bytes) -> list[str]:
    return [op["op_name"] for op in _interpreter(model)._get_ops_details()]


def check_tflm_ops(ops: list[str]) -> None:
    bad = sorted(set(ops) - TFLM_BUILTINS)
    if bad:
        raise ExportError(f"ops not supported by TFLite Micro: {', '.join(bad)}")


def output_positions(it) -> list[int]:
    """Positions of (local logits [1, K], remote features [1, h, w, c]) among the model's
    outputs: the converter does not keep the JAX function's output order, ranks tell them apart."""
    outs = it.get_output_details()
    return sorted(range(len(outs)), key=lambda i: len(outs[i]["shape"]))


def quant_params(model: bytes) -> dict[str, Any]:
    it = _interpreter(model)
    outs = it.get_output_details()
    pos = output_positions(it)
    q = lambda d: {"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}  # noqa: E731
    return {
        "input": q(it.get_input_details()[0]),
        "local_logits": q(outs[pos[0]]),
        "remote_features": q(outs[pos[1]]),
        "output_positions": pos,
    }


def quantize(x: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return np.clip(np.round(x / p["scale"] + p["zero_point"]), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return (q.astype(np.float32) - p["zero_point"]) * p["scale"]


def int8_thresholds(centroids: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """int8 t_j such that nearest-centroid index of the dequantized feature == #{j: q > t_j}."""
    c = np.sort(np.asarray(centroids, np.float64))
    mids = (c[1:] + c[:-1]) / 2.0
    # q > t  <=>  (q - zp) * s > mid  <=>  q > mid / s + zp ; q integer -> t = floor(mid/s + zp)
    return np.floor(mids / p["scale"] + p["zero_point"]).clip(-129, 127).astype(np.int32)


def indices_from_int8(q: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """What the MCU sends: centroid index per offloaded feature, from its int8 value."""
    return np.sum(q[..., None].astype(np.int32) > thresholds, axis=-1).astype(np.uint8)


class TFLMRunner:
    """The int8 device model on the TFLite Micro Python runtime (the MCU's interpreter)."""

    def __init__(self, model: bytes, arena_size: int = 1 << 20):
        from tflite_micro.python.tflite_micro import runtime

        self._interp = runtime.Interpreter.from_bytes(model, arena_size=arena_size)
        self.qp = quant_params(model)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One float image [1, H, W, 3] -> (int8 local logits, int8 remote features)."""
        self._interp.set_input(quantize(image, self.qp["input"]), 0)
        self._interp.invoke()
        return tuple(self._interp.get_output(i) for i in self.qp["output_positions"])

    def arena_bytes(self) -> int:
        """Arena bytes TFLM actually allocated (from its recording allocator's report)."""
        with tempfile.TemporaryFile(mode="w+b") as tmp:
            with _redirect_fd(tmp.fileno()):
                self._interp.print_allocations()
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
        for line in text.splitlines():
            if "Arena allocation total" in line:
                return int(line.split("total")[1].split("bytes")[0])
        raise ExportError("TFLM did not report its arena usage")


@contextlib.contextmanager
def _redirect_fd(target: int):
    """Capture C-level writes to stdout and stderr (TFLM's MicroPrintf)."""
    import ctypes
    import sys

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(target, fd)
    try:
        yield
    finally:
        libc.fflush(None)
        for fd, old in saved.items():
            os.dup2(old, fd)
            os.close(old)


def layer_macs(config: ml_collections.ConfigDict, k: int) -> list[dict[str, Any]]:
    """MACs (or touched elements) per device layer, from the architecture."""
    m = config.model
    s = int(config.data.image_size)
    cin, rows = 3, []
    for i, (c, st) in enumerate(zip(m.extractor_channels, m.extractor_strides, strict=True)):
        s = -(-s // st)
        rows.append({"layer": f"dw{i}", "op": "DEPTHWISE_CONV_2D", "macs": s * s * cin * 9})
        rows.append({"layer": f"pw{i}", "op": "CONV_2D", "macs": s * s * cin * int(c)})
        cin = int(c)
    rows.append({"layer": "local_gap", "op": "SUM", "elements": s * s * k})
    rows.append(
        {"layer": "local_dense", "op": "FULLY_CONNECTED", "macs": k * int(config.data.num_classes)}
    )
    return rows


def latency_estimate(rows: list[dict[str, Any]]) -> dict[str, float]:
    cycles = 0.0
    for r in rows:
        if "macs" in r:
            r["cycles"] = r["macs"] * CYCLES_PER_MAC[r["op"]]
        else:
            r["cycles"] = r["elements"] * CYCLES_PER_ELEMENT
        cycles += r["cycles"]
    out = {"total_cycles": cycles}
    for mhz in CLOCKS_MHZ:
        out[f"ms_at_{mhz}mhz"] = cycles / (mhz * 1e3)
    return out


def c_array(name: str, data: bytes) -> str:
    rows = []
    for i in range(0, len(data), 12):
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in data[i : i + 12]) + ",")
    return "\n".join(rows)


def write_firmware(out_dir: str, model: bytes, meta: dict[str, Any]) -> list[str]:
    """``agilenn_device_model.h/.cc``: the int8 model as an aligned C array plus what the
    firmware needs around it (quantisation, thresholds, centroids, k, alpha)."""
    qp = meta["quant"]
    thr = ", ".join(str(int(t)) for t in meta["int8_thresholds"])
    cents = ", ".join(f"{c:.8f}f" for c in meta["centroids"])
    h = f"""// Generated by agilenn_jax.export — do not edit.
#ifndef AGILENN_DEVICE_MODEL_H_
#define AGILENN_DEVICE_MODEL_H_
#include <stdint.h>

extern const unsigned char g_agilenn_device_model[];
extern const unsigned int g_agilenn_device_model_len;

#define AGILENN_K {meta["k"]}
#define AGILENN_NUM_CHANNELS {meta["num_channels"]}
#define AGILENN_NUM_CLASSES {meta["num_classes"]}
#define AGILENN_NUM_CENTROIDS {len(meta["centroids"])}
#define AGILENN_INPUT_SIZE {meta["image_size"]}
#define AGILENN_ALPHA {meta["alpha"]:.8f}f
#define AGILENN_INPUT_SCALE {qp["input"]["scale"]:.10g}f
#define AGILENN_INPUT_ZERO_POINT {qp["input"]["zero_point"]}
#define AGILENN_LOGITS_SCALE {qp["local_logits"]["scale"]:.10g}f
#define AGILENN_LOGITS_ZERO_POINT {qp["local_logits"]["zero_point"]}
#define AGILENN_FEATURES_SCALE {qp["remote_features"]["scale"]:.10g}f
#define AGILENN_FEATURES_ZERO_POINT {qp["remote_features"]["zero_point"]}
#define AGILENN_TENSOR_ARENA_BYTES {meta["arena_bytes"]}

// Centroids (ascending) and the int8 thresholds between neighbours:
// index(q) = number of thresholds t with q > t — identical to nearest-centroid on the
// dequantized feature, and exactly what the codec sends.
static const float kAgileNNCentroids[AGILENN_NUM_CENTROIDS] = {{{cents}}};
static const int16_t kAgileNNThresholds[AGILENN_NUM_CENTROIDS - 1] = {{{thr}}};

static inline uint8_t agilenn_centroid_index(int8_t q) {{
  uint8_t idx = 0;
  for (int j = 0; j < AGILENN_NUM_CENTROIDS - 1; ++j) idx += (q > kAgileNNThresholds[j]);
  return idx;
}}

#endif  // AGILENN_DEVICE_MODEL_H_
"""
    cc = f"""// Generated by agilenn_jax.export — do not edit.
#include "agilenn_device_model.h"

alignas(16) const unsigned char g_agilenn_device_model[] = {{
{c_array("model", model)}
}};
const unsigned int g_agilenn_device_model_len = {len(model)};
"""
    paths = [
        os.path.join(out_dir, "agilenn_device_model.h"),
        os.path.join(out_dir, "agilenn_device_model.cc"),
    ]
    for path, text in zip(paths, (h, cc), strict=True):
        with open(path, "w") as f:
            f.write(text)
    return paths


def export(
    workdir: str,
    output_dir: str,
    num_calibration: int = 200,
    num_verify: int = 200,
    allow_over_budget: bool = False,
) -> dict[str, Any]:
    """Export the trained run in ``workdir``; writes models, firmware files and the report."""
    config = load_workdir_config(workdir)
    data = input_pipeline.load(config.data, config.seed)
    mesh = train.make_mesh()
    try:
        state, _ = train.load_agilenn(config, data, workdir, mesh)
    except train.CheckpointError as e:
        raise ExportError(str(e)) from None
    variables = jax.device_get(state.variables())
    fn, model = device_function(config, variables)
    k = model.k
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    calib = sample_images(pipe, data.train, num_calibration)
    t0 = time.time()
    float_model, int8_model = convert(fn, int(config.data.image_size), calib)
    convert_s = time.time() - t0

    ops = op_list(int8_model)
    check_tflm_ops(ops)
    qp = quant_params(int8_model)
    centroids = np.asarray(model.apply(variables, method="centroids"))
    if np.any(np.diff(centroids) <= 0):
        order = np.argsort(centroids)
        raise ExportError(f"centroids are not ascending ({centroids}); order {order}")
    thresholds = int8_thresholds(centroids, qp["remote_features"])
    alpha = float(model.apply(variables, method="alpha"))

    runner = TFLMRunner(int8_model)
    arena = runner.arena_bytes()
    verify = _verify(
        config,
        model,
        variables,
        runner,
        float_model,
        int8_model,
        qp,
        thresholds,
        pipe,
        data.eval,
        num_verify,
        alpha,
    )
    flash = len(int8_model)
    budget = {
        "flash_bytes": flash,
        "flash_budget_bytes": FLASH_BUDGET,
        "flash_headroom_bytes": FLASH_BUDGET - flash,
        "arena_bytes": arena,
        "sram_budget_bytes": SRAM_BUDGET,
        "sram_headroom_bytes": SRAM_BUDGET - arena,
    }
    over = [
        n
        for n, b in (("flash", FLASH_BUDGET - flash), ("SRAM arena", SRAM_BUDGET - arena))
        if b < 0
    ]
    if over and not allow_over_budget:
        raise ExportError(
            f"device model exceeds the STM32F746 {' and '.join(over)} budget "
            f"(flash {flash} / {FLASH_BUDGET} B, arena {arena} / {SRAM_BUDGET} B); "
            "shrink the extractor or pass --allow_over_budget"
        )
    model_id = zlib.crc32(int8_model)
    codec_model = fit_codec_model(
        model,
        variables,
        pipe,
        data.train,
        num_calibration * 5,
        int(config.model.num_centroids),
        model_id,
    )
    rows = layer_macs(config, k)
    latency = latency_estimate(rows)
    h, w, c = feature_shape(
        config.data.image_size, config.model.extractor_channels, config.model.extractor_strides
    )
    meta = {
        "k": k,
        "num_channels": c,
        "num_classes": int(config.data.num_classes),
        "image_size": int(config.data.image_size),
        "alpha": alpha,
        "centroids": centroids.tolist(),
        "int8_thresholds": thresholds.tolist(),
        "quant": qp,
        "arena_bytes": arena,
        "remote_shape": [h, w, c - k],
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "model_id": model_id,
    }
    os.makedirs(output_dir, exist_ok=True)
    files = {}
    for name, blob in (("device_float32.tflite", float_model), ("device_int8.tflite", int8_model)):
        path = os.path.join(output_dir, name)
        with open(path, "wb") as f:
            f.write(blob)
        files[name] = path
    for path in write_firmware(output_dir, int8_model, meta):
        files[os.path.basename(path)] = path
    report = {
        "workdir": os.path.abspath(workdir),
        "ops": ops,
        "ops_all_tflm_builtins": True,
        "float32_bytes": len(float_model),
        "budget": budget,
        "over_budget": over,
        "verification": verify,
        "layers": rows,
        "latency_estimate": latency,
        "cycle_model": {
            "cycles_per_mac": CYCLES_PER_MAC,
            "cycles_per_element": CYCLES_PER_ELEMENT,
            "source": "assumed CMSIS-NN int8 rates on Cortex-M7; see export.py",
        },
        "device": meta,
        "convert_seconds": convert_s,
        "files": files,
    }
    codec_model.save(os.path.join(output_dir, "codec_model.json"))
    files["codec_model.json"] = os.path.join(output_dir, "codec_model.json")
    train.write_json(os.path.join(output_dir, "device_meta.json"), meta)
    train.write_json(os.path.join(output_dir, "export_report.json"), report)
    return report


def fit_codec_model(model, variables, pipe, split, n, num_centroids, model_id):
    """The codec's static per-channel probabilities, fitted on training-set indices."""
    fn = jax.jit(lambda x: model.apply(variables, x, method="device")["indices"])
    idx = np.concatenate(
        [np.asarray(fn(jnp.asarray(b["image"])))[b["mask"] > 0] for b in _batches(pipe, split, n)]
    )
    return codec.ProbabilityModel.fit(idx, num_centroids, model_id)


def _batches(pipe, split, n: int):
    have = 0
    for b in pipe.eval_batches(split, 100):
        yield b
        have += int(b["mask"].sum())
        if have >= n:
            return


def sample_images(pipe, split, n: int) -> np.ndarray:
    """The first ``n`` samples of ``split``, preprocessed for inference (no augmentation)."""
    return np.concatenate([b["image"][b["mask"] > 0] for b in _batches(pipe, split, n)])[:n]


def _verify(
    config, model, variables, runner, float_model, int8_model, qp, thresholds, pipe, split, n, alpha
) -> dict[str, Any]:
    """int8 on TFLM and on the TFLite interpreter vs the JAX model, on held-out samples."""
    n = min(n, len(split))
    sub = input_pipeline.Split(split.images[:n], split.labels[:n])
    images = sample_images(pipe, sub, n)
    labels = sub.labels
    out = jax.jit(lambda x: model.apply(variables, x))(jnp.asarray(images))
    j_logits = np.asarray(out["local_logits"])
    j_feat = np.asarray(out["features"][..., model.k :])
    j_idx = np.asarray(out["indices"])
    j_full = np.asarray(out["logits"])
    server = jax.jit(lambda q: model.apply(variables, q, method="server"))
    centroids = np.asarray(model.apply(variables, method="centroids"))

    lite = _interpreter(int8_model)
    flt = _interpreter(float_model)
    res: dict[str, Any] = {"samples": n}
    for name, run in (("tflm", runner), ("tflite", lambda x: _run_interpreter(lite, x, qp))):
        logits_q, feat_q = zip(*(run(images[i : i + 1]) for i in range(n)), strict=True)
        logits = dequantize(np.concatenate(logits_q), qp["local_logits"])
        feat_q = np.concatenate(feat_q)
        feat = dequantize(feat_q, qp["remote_features"])
        idx = indices_from_int8(feat_q, thresholds)
        remote = np.asarray(server(jnp.asarray(centroids[idx])))
        combined = alpha * logits + (1 - alpha) * remote
        res[name] = {
            "features_max_abs_err": float(np.abs(feat - j_feat).max()),
            "features_mean_abs_err": float(np.abs(feat - j_feat).mean()),
            "local_logits_max_abs_err": float(np.abs(logits - j_logits).max()),
            "local_logits_mean_abs_err": float(np.abs(logits - j_logits).mean()),
            "index_agreement": float(np.mean(idx == j_idx)),
            "local_argmax_agreement": float(np.mean(logits.argmax(-1) == j_logits.argmax(-1))),
            "accuracy_int8_device_float_remote": float(np.mean(combined.argmax(-1) == labels)),
        }
    f_logits = np.concatenate([_run_interpreter(flt, images[i : i + 1])[0] for i in range(n)])
    res["float_tflite_local_logits_max_abs_err"] = float(np.abs(f_logits - j_logits).max())
    res["accuracy_float"] = float(np.mean(j_full.argmax(-1) == labels))
    res["accuracy_drop_int8"] = (
        res["accuracy_float"] - res["tflm"]["accuracy_int8_device_float_remote"]
    )
    return res


def _run_interpreter(it, x: np.ndarray, qp: dict[str, Any] | None = None):
    """One image through a TFLite interpreter -> (local logits, remote features); ``qp`` given:
    the int8 model (input quantized here), else the float32 model."""
    inp = quantize(x, qp["input"]) if qp is not None else x.astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], inp)
    it.invoke()
    outs = it.get_output_details()
    return tuple(it.get_tensor(outs[i]["index"]) for i in output_positions(it))


def format_report(report: dict[str, Any]) -> str:
    b, v, lat = report["budget"], report["verification"], report["latency_estimate"]
    lines = [
        "AgileNN device export",
        f"  ops: {', '.join(sorted(set(report['ops'])))} (all TFLite Micro builtins)",
        f"  flash: {b['flash_bytes'] / 1024:.1f} KB of {b['flash_budget_bytes'] // 1024} KB "
        f"({b['flash_headroom_bytes'] / 1024:.1f} KB left)",
        f"  arena: {b['arena_bytes'] / 1024:.1f} KB of {b['sram_budget_bytes'] // 1024} KB "
        f"({b['sram_headroom_bytes'] / 1024:.1f} KB left)",
        f"  {'runtime':<8}{'feat max|mean err':>20}{'logit max err':>15}{'idx agree':>11}"
        f"{'argmax agree':>14}{'acc':>8}",
    ]
    for name in ("tflm", "tflite"):
        r = v[name]
        lines.append(
            f"  {name:<8}{r['features_max_abs_err']:>11.4f} | {r['features_mean_abs_err']:<6.4f}"
            f"{r['local_logits_max_abs_err']:>15.4f}{r['index_agreement']:>11.4f}"
            f"{r['local_argmax_agreement']:>14.4f}{r['accuracy_int8_device_float_remote']:>8.4f}"
        )
    lines.append(
        f"  float accuracy {v['accuracy_float']:.4f}, int8 drop "
        f"{v['accuracy_drop_int8']:+.4f} ({v['samples']} held-out samples)"
    )
    lines.append(
        "  MACs: "
        + ", ".join(f"{r['layer']}={r.get('macs', r.get('elements'))}" for r in report["layers"])
    )
    lines.append(
        "  est. latency: "
        + ", ".join(f"{lat[f'ms_at_{m}mhz']:.2f} ms @ {m} MHz" for m in CLOCKS_MHZ)
    )
    return "\n".join(lines)
