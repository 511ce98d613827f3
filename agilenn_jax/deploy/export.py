"""Export a trained run's device side: int8 TFLite, verified on TFLite Micro, with firmware files.

The exported device model maps an image to ``(local_logits, remote_features)``: the local NN's
logits and the extractor's offloaded channels (k:), both int8 in the int8 model. The quantizer's
argmin over centroids is *not* in the graph: it is a few integer compares
(``int8.indices_from_int8``, the same rule as the generated C), and that is what the codec sends.
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from agilenn_jax import inference, input_pipeline, layout
from agilenn_jax.checkpoint import CheckpointError
from agilenn_jax.deploy import cost, tflite, tflm_app
from agilenn_jax.deploy.int8 import dequantize, indices_from_int8, int8_thresholds
from agilenn_jax.deploy.tflm import TFLMRunner
from agilenn_jax.models import combine, local, method_of
from agilenn_jax.models.agilenn import feature_shape
from agilenn_jax.models.quantizer import collapsed_centroids, tied_centroids
from agilenn_jax.serving import codec

REPORT_FILE = "export_report.json"
META_FILE = "device_meta.json"
CODEC_MODEL_FILE = "codec_model.json"
INT8_MODEL_FILE = "device_int8.tflite"
FLOAT_MODEL_FILE = "device_float32.tflite"


class ExportError(Exception):
    """The workdir cannot be exported, or the result is not deployable as configured."""


def features_function(run: inference.TrainedRun):
    """image [1, H, W, 3] float -> the extractor's output [1, h, w, C] (all channels), with a
    quantizer gain folded in (channels k: are what the quantizer reads)."""
    model, variables = inference.fold_channel_gain(run.model, run.variables)

    def fn(x):
        return model.apply(variables, x, method="device")["features"]

    return fn


def local_head(run: inference.TrainedRun) -> tuple[np.ndarray, np.ndarray]:
    """The local NN's dense layer with its BN folded in: logits = mean(f[..., :k]) @ W + b.

    BN(x) = (x - mu) * g / sqrt(var + eps) + beta is affine, so W = diag(g / sqrt(var + eps))
    @ W_dense and b = (beta - mu * g / sqrt(var + eps)) @ W_dense + b_dense; exact in float.
    """
    params = run.variables["params"]["local"]
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    b = np.asarray(params["Dense_0"]["bias"], np.float64)
    if run.model.local_bn:
        stats = run.variables["batch_stats"]["local"]["BatchNorm_0"]
        g = np.asarray(params["BatchNorm_0"]["scale"], np.float64)
        beta = np.asarray(params["BatchNorm_0"]["bias"], np.float64)
        scale = g / np.sqrt(np.asarray(stats["var"], np.float64) + local.BN_EPSILON)
        shift = beta - np.asarray(stats["mean"], np.float64) * scale
        b = shift @ w + b
        w = scale[:, None] * w
    return w.astype(np.float32), b.astype(np.float32)


def fit_codec_model(
    run: inference.TrainedRun, images: np.ndarray, model_id: int, batch: int = 100
) -> codec.ProbabilityModel:
    """The codec's static per-channel probabilities, fitted on training-set indices."""
    idx = np.concatenate(
        [
            np.asarray(inference.device_indices(run.model, run.variables, images[i : i + batch]))
            for i in range(0, len(images), batch)
        ]
    )
    return codec.ProbabilityModel.fit(idx, int(run.config.model.num_centroids), model_id)


def export(
    workdir: str,
    output_dir: str,
    num_calibration: int = 200,
    num_verify: int = 200,
    allow_over_budget: bool = False,
) -> dict[str, Any]:
    """Export the trained run in ``workdir``; writes models, firmware files and the report.

    Nothing is written to ``output_dir`` unless the export succeeds (or is over budget and
    ``allow_over_budget`` is set).
    """
    try:
        run = inference.load_run(workdir, depthwise_impl="conv")  # lowers to DEPTHWISE_CONV_2D
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise ExportError(str(e)) from None
    config = run.config
    if method_of(config) != "agilenn":
        from agilenn_jax.deploy import baseline_export  # it imports this module's helpers

        try:
            return baseline_export.export_baseline(
                run, output_dir, num_calibration, num_verify, allow_over_budget
            )
        except baseline_export.BaselineExportError as e:
            raise ExportError(str(e)) from None
    data = input_pipeline.load(config.data, config.seed)
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    calib, _ = inference.first_images(pipe, data.train, num_calibration)
    t0 = time.time()
    float_model, int8_model = tflite.convert(
        features_function(run), local_head(run), run.model.k, int(config.data.image_size), calib
    )
    convert_s = time.time() - t0

    ops = tflite.op_list(int8_model)
    try:
        tflite.check_tflm_ops(ops)
    except tflite.UnsupportedOpsError as e:
        raise ExportError(str(e)) from None
    qp = tflite.quant_params(int8_model)
    centroids = run.centroids
    try:
        thresholds = int8_thresholds(centroids, qp["remote_features"])
    except ValueError as e:
        raise ExportError(str(e)) from None
    ties = tied_centroids(centroids)
    alpha = run.alpha

    runner = TFLMRunner(int8_model)
    arena = runner.arena_bytes()
    images, labels = inference.first_images(pipe, data.eval, num_verify)
    verify = verify_device_model(
        run, runner, float_model, int8_model, qp, thresholds, images, labels
    )
    flash = len(int8_model)
    budget, over = cost.budget(flash, arena)
    if over and not allow_over_budget:
        raise ExportError(
            f"device model exceeds the STM32F746 {' and '.join(over)} budget "
            f"(flash {flash} / {cost.FLASH_BUDGET} B, arena {arena} / {cost.SRAM_BUDGET} B); "
            "shrink the extractor or pass --allow_over_budget"
        )
    model_id = zlib.crc32(int8_model)
    train_images, _ = inference.first_images(pipe, data.train, num_calibration * 5)
    codec_model = fit_codec_model(run, train_images, model_id)
    rows = cost.layer_macs(config)
    latency = cost.latency_estimate(rows)
    h, w, c = feature_shape(
        config.data.image_size, config.model.extractor_channels, config.model.extractor_strides
    )
    k = run.model.k
    meta = {
        "k": k,
        "num_channels": c,
        "num_classes": int(config.data.num_classes),
        "image_size": int(config.data.image_size),
        "alpha": alpha,
        "centroids": centroids.tolist(),
        "int8_thresholds": thresholds.tolist(),
        "tied_centroids": ties,
        "collapsed_centroids": collapsed_centroids(centroids),
        "quant": qp,
        "arena_bytes": arena,
        "remote_shape": [h, w, c - k],
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "model_id": model_id,
    }
    os.makedirs(output_dir, exist_ok=True)
    files = {}
    for name, blob in ((FLOAT_MODEL_FILE, float_model), (INT8_MODEL_FILE, int8_model)):
        path = os.path.join(output_dir, name)
        with open(path, "wb") as f:
            f.write(blob)
        files[name] = path
    for path in tflm_app.write_tflm_app(output_dir, int8_model, meta):
        files[os.path.basename(path)] = path
    codec_model.save(os.path.join(output_dir, CODEC_MODEL_FILE))
    files[CODEC_MODEL_FILE] = os.path.join(output_dir, CODEC_MODEL_FILE)
    report = {
        "workdir": run.workdir,
        "checkpoint_step": run.step,
        "ops": ops,
        "ops_all_tflm_builtins": True,
        "float32_bytes": len(float_model),
        "budget": budget,
        "over_budget": over,
        "verification": verify,
        "layers": rows,
        "latency_estimate": latency,
        "cycle_model": {
            "cycles_per_mac": cost.CYCLES_PER_MAC,
            "cycles_per_element": cost.CYCLES_PER_ELEMENT,
            "source": "assumed CMSIS-NN int8 rates on Cortex-M7; see deploy/cost.py",
        },
        "device": meta,
        "convert_seconds": convert_s,
        "files": files,
    }
    layout.write_json(os.path.join(output_dir, META_FILE), meta)
    layout.write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


def verify_device_model(
    run: inference.TrainedRun,
    runner: TFLMRunner,
    float_model: bytes,
    int8_model: bytes,
    qp: dict[str, Any],
    thresholds: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """int8 on TFLM and on the TFLite interpreter vs the JAX model, on held-out samples."""
    n = len(images)
    model, variables, alpha = run.model, run.variables, run.alpha
    out = inference.forward(model, variables, jnp.asarray(images))
    j_logits = np.asarray(out["local_logits"])
    j_feat = np.asarray(out["quantizer_input"])  # the offloaded channels, any gain applied
    j_idx = np.asarray(out["indices"])
    j_full = np.asarray(out["logits"])

    lite = tflite.interpreter(int8_model)
    flt = tflite.interpreter(float_model)
    res: dict[str, Any] = {"samples": n}
    runtimes = (("tflm", runner), ("tflite", lambda x: tflite.run_interpreter(lite, x, qp)))
    for name, run_one in runtimes:
        logits_q, feat_q = zip(*(run_one(images[i : i + 1]) for i in range(n)), strict=True)
        logits = dequantize(np.concatenate(logits_q), qp["local_logits"])
        feat_q = np.concatenate(feat_q)
        feat = dequantize(feat_q, qp["remote_features"])
        idx = indices_from_int8(feat_q, thresholds)
        remote = np.asarray(inference.remote_logits(model, variables, jnp.asarray(idx)))
        combined = combine(logits, remote, alpha)
        res[name] = {
            "features_max_abs_err": float(np.abs(feat - j_feat).max()),
            "features_mean_abs_err": float(np.abs(feat - j_feat).mean()),
            "local_logits_max_abs_err": float(np.abs(logits - j_logits).max()),
            "local_logits_mean_abs_err": float(np.abs(logits - j_logits).mean()),
            "index_agreement": float(np.mean(idx == j_idx)),
            "local_argmax_agreement": float(np.mean(logits.argmax(-1) == j_logits.argmax(-1))),
            "accuracy_int8_device_float_remote": float(np.mean(combined.argmax(-1) == labels)),
        }
    f_logits = np.concatenate([tflite.run_interpreter(flt, images[i : i + 1])[0] for i in range(n)])
    res["float_tflite_local_logits_max_abs_err"] = float(np.abs(f_logits - j_logits).max())
    res["accuracy_float"] = float(np.mean(j_full.argmax(-1) == labels))
    res["accuracy_drop_int8"] = (
        res["accuracy_float"] - res["tflm"]["accuracy_int8_device_float_remote"]
    )
    return res


def format_report(report: dict[str, Any]) -> str:
    if report.get("method", "agilenn") != "agilenn":
        from agilenn_jax.deploy import baseline_export

        return baseline_export.format_report(report)
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
        + ", ".join(f"{lat[f'ms_at_{m}mhz']:.2f} ms @ {m} MHz" for m in cost.CLOCKS_MHZ)
    )
    return "\n".join(lines)
