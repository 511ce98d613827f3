"""The device side of the paper's baselines, through the same path as AgileNN's export:
jax2tf -> int8 TFLite -> verified on TFLite Micro, with the same STM32F746 budget report.

- local_only: the whole network is the device model (int8 logits out), nothing is sent.
- deepcod / spinn: the device model outputs the activation to send (int8, [1, h, w, C]) and,
  for spinn with an exit head, its logits; indices are the same integer compares as AgileNN's
  (``int8.indices_from_int8``) and the codec model is fitted on training indices.
- edge_only: no device network; the export records the image codec and measures every image
  format's bytes and the server network's accuracy on the decoded images.
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from agilenn_jax import inference, input_pipeline, layout
from agilenn_jax.deploy import cost, tflite
from agilenn_jax.deploy.export import fit_codec_model
from agilenn_jax.deploy.int8 import (
    camera_uint8,
    dequantize,
    exits_on_device,
    indices_from_int8,
    int8_thresholds,
)
from agilenn_jax.deploy.tflm import TFLMRunner
from agilenn_jax.models import method_of
from agilenn_jax.models.quantizer import collapsed_centroids, tied_centroids
from agilenn_jax.serving import image_codec

EDGE_FORMATS = (("raw", 90), ("png", 90), ("lzw", 90), ("jpeg", 90), ("jpeg", 75), ("webp", 90))


class BaselineExportError(Exception):
    """The baseline cannot be exported as configured (ops, budget, centroids)."""


def device_function(run: inference.TrainedRun):
    """image [1, S, S, 3] -> the baseline's device outputs (see the module docstring)."""
    model, variables, name = run.model, run.variables, method_of(run.config)

    def fn(x):
        if name == "local_only":
            return model.apply(variables, x)["logits"]
        out = model.apply(variables, x, method="device")
        if "local_logits" in out:
            return out["local_logits"], out["features"]
        return out["features"]

    return fn


def edge_image_report(
    run: inference.TrainedRun, images: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Bytes per frame and server accuracy on the decoded images, for every image format."""
    cfg = run.config
    raw = camera_uint8(images, cfg.data.mean, cfg.data.std)
    shape = tuple(raw.shape[1:])
    rows = {}
    for fmt, q in EDGE_FORMATS:
        c = image_codec.ImageCodec(fmt, shape, q)
        frames = [c.encode(img) for img in raw]
        decoded = np.stack([c.decode(f) for f in frames])
        logits = np.asarray(inference.remote_logits(run.model, run.variables, jnp.asarray(decoded)))
        rows[image_codec.image_codec_name(fmt, q)] = {
            "bytes_per_sample": float(np.mean([len(f) for f in frames])),
            "accuracy": float(np.mean(logits.argmax(-1) == labels)),
            "encode_cycles_per_sample": image_codec.encode_cost_cycles(fmt, raw[0].size),
        }
    return rows


def export_baseline(
    run: inference.TrainedRun,
    output_dir: str,
    num_calibration: int = 200,
    num_verify: int = 200,
    allow_over_budget: bool = False,
) -> dict[str, Any]:
    """Export ``run`` (a baseline) into ``output_dir``; the report says whether it fits."""
    config, name = run.config, method_of(run.config)
    b = config.baseline
    data = input_pipeline.load(config.data, config.seed)
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    images, labels = inference.first_images(pipe, data.eval, num_verify)
    size = int(config.data.image_size)
    meta: dict[str, Any] = {
        "method": name,
        "num_classes": int(config.data.num_classes),
        "image_size": size,
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "alpha": 0.0,
        "k": 0,
    }
    report: dict[str, Any] = {"workdir": run.workdir, "checkpoint_step": run.step, "method": name}
    if name == "edge_only":
        meta.update(
            image_codec=b.image_codec,
            image_quality=int(b.image_quality),
            remote_shape=[size, size, 3],
            model_id=zlib.crc32(f"edge_only:{b.image_codec}:{b.image_quality}".encode()),
        )
        formats = edge_image_report(run, images, labels)
        report.update(
            image_formats=formats,
            budget=cost.budget(0, 0)[0],
            over_budget=[],
            layers=[],
            latency_estimate=cost.latency_estimate([]),
            verification={
                "samples": len(images),
                "accuracy_float": _float_accuracy(run, images, labels),
            },
            device=meta,
        )
        return _write(output_dir, report, meta, {})

    calib, _ = inference.first_images(pipe, data.train, num_calibration)
    t0 = time.time()
    float_model, int8_model = tflite.convert_function(device_function(run), size, calib)
    ops = tflite.op_list(int8_model)
    try:
        tflite.check_tflm_ops(ops)
    except tflite.UnsupportedOpsError as e:
        raise BaselineExportError(str(e)) from None
    qp = tflite.quant_params(int8_model)
    runner = TFLMRunner(int8_model)
    arena = runner.arena_bytes()
    budget, over = cost.budget(len(int8_model), arena)
    if over and not allow_over_budget:
        raise BaselineExportError(
            f"{name}'s device model exceeds the STM32F746 {' and '.join(over)} budget (flash "
            f"{len(int8_model)} / {cost.FLASH_BUDGET} B, arena {arena} / {cost.SRAM_BUDGET} B); "
            "shrink it or pass --allow_over_budget to record it as not fitting"
        )
    meta.update(quant=qp, arena_bytes=arena, model_id=zlib.crc32(int8_model))
    files = {"device_float32.tflite": float_model, "device_int8.tflite": int8_model}
    thresholds = None
    if name in ("deepcod", "spinn"):
        centroids = run.centroids
        try:
            thresholds = int8_thresholds(centroids, qp["remote_features"])
        except ValueError as e:
            raise BaselineExportError(str(e)) from None
        shape = list(np.asarray(runner(images[:1])[-1]).shape[1:])
        meta.update(
            centroids=centroids.tolist(),
            int8_thresholds=thresholds.tolist(),
            tied_centroids=tied_centroids(centroids),
            collapsed_centroids=collapsed_centroids(centroids),
            num_channels=shape[-1],
            remote_shape=shape,
            exit_threshold=float(b.exit_threshold) if "local_logits" in qp else None,
        )
    verify = _verify(run, runner, qp, thresholds, meta, images, labels)
    rows = cost.tflite_layer_macs(int8_model)
    report.update(
        ops=ops,
        ops_all_tflm_builtins=True,
        float32_bytes=len(float_model),
        budget=budget,
        over_budget=over,
        verification=verify,
        layers=rows,
        latency_estimate=cost.latency_estimate(rows),
        convert_seconds=time.time() - t0,
        device=meta,
    )
    codec_model = None
    if thresholds is not None:
        train_images, _ = inference.first_images(pipe, data.train, num_calibration * 5)
        codec_model = fit_codec_model(run, train_images, meta["model_id"])
    return _write(output_dir, report, meta, files, codec_model)


def _float_accuracy(run: inference.TrainedRun, images: np.ndarray, labels: np.ndarray) -> float:
    out = inference.forward(run.model, run.variables, jnp.asarray(images))
    return float(np.mean(np.asarray(out["logits"]).argmax(-1) == labels))


def _verify(run, runner, qp, thresholds, meta, images, labels) -> dict[str, Any]:
    """int8 on TFLite Micro vs the JAX model on held-out samples (float server)."""
    out = inference.forward(run.model, run.variables, jnp.asarray(images))
    res: dict[str, Any] = {"samples": len(images)}
    res["accuracy_float"] = float(np.mean(np.asarray(out["logits"]).argmax(-1) == labels))
    got = [runner.named(images[i : i + 1]) for i in range(len(images))]
    outs = {n: np.concatenate([g[n] for g in got]) for n in got[0]}
    pred = None
    if "remote_features" in outs:
        feat = dequantize(outs["remote_features"], qp["remote_features"])
        j_feat = np.asarray(out["features"])
        idx = indices_from_int8(outs["remote_features"], thresholds)
        remote = np.asarray(inference.remote_logits(run.model, run.variables, jnp.asarray(idx)))
        pred = remote.argmax(-1)
        res.update(
            features_max_abs_err=float(np.abs(feat - j_feat).max()),
            features_mean_abs_err=float(np.abs(feat - j_feat).mean()),
            index_agreement=float(np.mean(idx == np.asarray(out["indices"]))),
        )
    if "local_logits" in outs:
        logits = dequantize(outs["local_logits"], qp["local_logits"])
        j_logits = np.asarray(out["local_logits"] if pred is not None else out["logits"])
        res.update(
            local_logits_max_abs_err=float(np.abs(logits - j_logits).max()),
            local_argmax_agreement=float(np.mean(logits.argmax(-1) == j_logits.argmax(-1))),
        )
        if pred is None:  # local_only: the device's logits are the prediction
            pred = logits.argmax(-1)
        else:  # spinn: exit where the head is confident enough
            exits = exits_on_device(logits, meta["exit_threshold"])
            res["exit_fraction"] = float(np.mean(exits))
            res["accuracy_int8_no_exit"] = float(np.mean(pred == labels))
            pred = np.where(exits, logits.argmax(-1), pred)
    res["accuracy_int8"] = float(np.mean(pred == labels))
    res["accuracy_drop_int8"] = res["accuracy_float"] - res["accuracy_int8"]
    return res


def _write(output_dir, report, meta, files, codec_model=None) -> dict[str, Any]:
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for fname, blob in files.items():
        paths[fname] = os.path.join(output_dir, fname)
        with open(paths[fname], "wb") as f:
            f.write(blob)
    if codec_model is not None:
        paths["codec_model.json"] = os.path.join(output_dir, "codec_model.json")
        codec_model.save(paths["codec_model.json"])
    report["files"] = paths
    layout.write_json(os.path.join(output_dir, "device_meta.json"), meta)
    layout.write_json(os.path.join(output_dir, "export_report.json"), report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The baseline export's summary lines (``export.format_report`` for AgileNN's)."""
    b, v, lat = report["budget"], report["verification"], report["latency_estimate"]
    lines = [f"{report['method']} device export"]
    if report["method"] == "edge_only":
        lines.append("  no device network: the MCU sends its 8-bit image")
        for name, r in report["image_formats"].items():
            lines.append(
                f"  {name:<10} {r['bytes_per_sample']:>8.1f} B/frame, server accuracy on the "
                f"decoded images {r['accuracy']:.4f}"
            )
        return "\n".join(lines)
    fits = (
        "fits" if not report["over_budget"] else "DOES NOT FIT: " + ", ".join(report["over_budget"])
    )
    lines += [
        f"  ops: {', '.join(sorted(set(report['ops'])))} (all TFLite Micro builtins)",
        f"  flash {b['flash_bytes'] / 1024:.1f} KB, arena {b['arena_bytes'] / 1024:.1f} KB "
        f"(STM32F746: {fits})",
        f"  accuracy float {v['accuracy_float']:.4f}, int8 on TFLM {v['accuracy_int8']:.4f} "
        f"({v['samples']} held-out samples)",
        f"  MACs {sum(r.get('macs', 0) for r in report['layers']):,}; est. latency "
        + ", ".join(f"{lat[f'ms_at_{m}mhz']:.2f} ms @ {m} MHz" for m in cost.CLOCKS_MHZ),
    ]
    return "\n".join(lines)
