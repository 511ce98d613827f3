"""End-to-end evaluation of a deployment: held-out samples through TFLM, codec and socket,
compared with the same deployed model evaluated in-process, plus every coder's frame size."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from absl import logging

from agilenn_jax.models import combine
from agilenn_jax.serving import codec
from agilenn_jax.serving.client import Device
from agilenn_jax.serving.server import RemoteModel


class LosslessnessError(AssertionError):
    """A coder did not give back the indices it was given: a bug, never a data problem."""


def coder_sizes(codec_: codec.Codec, indices: np.ndarray) -> dict[str, float]:
    """Mean frame bytes per sample for every coder on the same indices [N, H, W, C_r] (``ctx``
    only when the codec model has its context tables: exports before it have none)."""
    out = {}
    for name in codec.CODERS:
        if name == "ctx" and codec_.model.context is None:
            continue
        c = codec.Codec(codec_.model, codec_.k, name, codec_.shape)
        sizes = []
        for idx in indices:
            frame = c.encode(idx)
            if not np.array_equal(c.decode(frame), idx):
                raise LosslessnessError(f"the {name} coder is not lossless on a real sample")
            sizes.append(len(frame))
        out[name] = float(np.mean(sizes))
    return out


def run_device(
    device: Device, workdir: str, images: np.ndarray, labels: np.ndarray, progress_every: int = 100
) -> dict[str, Any]:
    """Infer every image through the socket; compare with the offline (in-process) path."""
    # Offline evaluation of the same deployed model: the same TFLM output per sample, with the
    # remote NN run in-process instead of behind codec + socket + server.
    remote = RemoteModel(workdir, max_batch=1)
    rows, all_idx, offline = [], [], []
    for i, img in enumerate(images):
        logits, idx, host_ms = device.local(img[None])
        rows.append(device.offload(logits, idx, host_ms))
        all_idx.append(idx)
        r = remote(idx[None])[0]
        offline.append(int(np.argmax(combine(logits, r, device.alpha))))
        if progress_every and (i + 1) % progress_every == 0:
            logging.warning("device: %d/%d samples", i + 1, len(images))
    preds = np.asarray([r["prediction"] for r in rows])
    offline = np.asarray(offline)
    idx = np.stack(all_idx)
    header_bytes = codec.HEADER.size + codec.CRC.size

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    probs = device.codec.model.probs
    ch = np.arange(idx.shape[-1])
    model_bits = float(-np.log2(probs[ch, idx]).sum() / len(idx))
    latency_keys = (
        "local_host_ms",
        "local_mcu_est_ms",
        "encode_ms",
        "transmit_ms",
        "server_ms",
        "round_trip_ms",
        "total_ms",
    )
    return {
        "samples": len(images),
        "link": dataclasses.asdict(device.link),
        "accuracy": float(np.mean(preds == labels)),
        "offline_accuracy": float(np.mean(offline == labels)),
        "same_predictions_as_offline": float(np.mean(preds == offline)),
        "fallbacks": int(sum(r["fallback"] for r in rows)),
        "latency_ms": {key: mean(key) for key in latency_keys},
        "mcu_estimate_source": device.mcu_source,
        "mcu_estimate_includes_encoder": device.mcu_includes_encoder,
        "bytes_per_sample": mean("bytes"),
        "frame_header_bytes": header_bytes,
        "coder_bytes_per_sample": coder_sizes(device.codec, idx),
        "empirical_entropy_bytes_per_sample": device.codec.model.entropy_bits(idx) / 8,
        "static_model_bytes_per_sample": model_bits / 8,
        "symbols_per_sample": int(idx[0].size),
    }


def format_device_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"AgileNN device run over {r['link']['name']} ({r['samples']} samples)",
        f"  accuracy {r['accuracy']:.4f} (offline {r['offline_accuracy']:.4f}, same prediction "
        f"on {100 * r['same_predictions_as_offline']:.1f}% of samples), fallbacks "
        f"{r['fallbacks']}",
        "  latency (ms, mean): " + ", ".join(f"{k}={v:.2f}" for k, v in lat.items()),
        f"  MCU time from: {r['mcu_estimate_source']}"
        + (
            " (model + encoder; host encode_ms not added)"
            if r["mcu_estimate_includes_encoder"]
            else ""
        ),
        f"  {'coder':<10}{'bytes/sample':>14}  (frame header+crc {r['frame_header_bytes']} B)",
    ]
    for name, b in sorted(r["coder_bytes_per_sample"].items(), key=lambda kv: kv[1]):
        lines.append(f"  {name:<10}{b:>14.1f}")
    lines.append(
        f"  {'entropy':<10}{r['empirical_entropy_bytes_per_sample']:>14.1f}  "
        f"(empirical, per channel; static model: "
        f"{r['static_model_bytes_per_sample']:.1f})"
    )
    return "\n".join(lines)


def run_baseline_device(
    device: Device, workdir: str, images: np.ndarray, labels: np.ndarray, progress_every: int = 100
) -> dict[str, Any]:
    """A baseline's deployment on held-out samples: TFLM (or the image) -> codec -> socket ->
    server, against the same deployed model with the server's network run in-process."""
    remote = RemoteModel(workdir, max_batch=1) if device.codec is not None else None
    rows, offline = [], []
    for i, img in enumerate(images):
        logits, payload, host_ms = device.local(img[None])
        row = device.offload(logits, payload, host_ms)
        rows.append(row)
        if row["offloaded"]:
            if device.method == "edge_only":  # the server sees the decoded image
                payload = device.codec.decode(device.codec.encode(payload))
            offline.append(int(np.argmax(remote(payload[None])[0])))
        else:
            offline.append(row["prediction"])
        if progress_every and (i + 1) % progress_every == 0:
            logging.warning("device: %d/%d samples", i + 1, len(images))
    preds = np.asarray([r["prediction"] for r in rows])
    offloaded = [r for r in rows if r["offloaded"]]

    def mean(key: str, subset: list[dict[str, Any]]) -> float:
        return float(np.mean([r[key] for r in subset])) if subset else 0.0

    latency_keys = ("local_host_ms", "encode_ms", "transmit_ms", "server_ms", "round_trip_ms")
    return {
        "method": device.method,
        "samples": len(images),
        "link": dataclasses.asdict(device.link),
        "accuracy": float(np.mean(preds == labels)),
        "offline_accuracy": float(np.mean(np.asarray(offline) == labels)),
        "same_predictions_as_offline": float(np.mean(preds == np.asarray(offline))),
        "fallbacks": int(sum(r["fallback"] for r in rows)),
        "offload_fraction": len(offloaded) / len(rows),
        "latency_ms": {
            "local_mcu_est_ms": device.mcu_local_ms,
            **{k: mean(k, offloaded) for k in latency_keys},
            "total_ms": mean("total_ms", rows),
        },
        "mcu_estimate_source": device.mcu_source,
        "mcu_estimate_includes_encoder": device.mcu_includes_encoder,
        "bytes_per_sample": mean("bytes", offloaded),  # per offloaded sample
    }


def method_summary(
    device: Device, report: dict[str, Any], config: Any, variant: str = ""
) -> dict[str, Any]:
    """The run's one line in ``launch.compare`` (its ``method_summary.json`` contract)."""
    size = int(config.data.image_size)
    offloaded = report.get("offload_fraction", 1.0)
    server_ms = report["latency_ms"]["server_ms"]
    return {
        "method": device.method,
        "variant": variant,
        "dataset": str(config.data.name),
        "seed": int(config.seed),
        "workdir": report.get("workdir", ""),
        "samples": int(report["samples"]),
        "accuracy": float(report["accuracy"]),
        "bytes_per_sample": float(report["bytes_per_sample"]) if offloaded else 0.0,
        "raw_image_bytes": size * size * 3,
        "offload_fraction": float(offloaded),
        "device": device.cost,
        "server_ms": float(server_ms),
    }


def format_baseline_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return "\n".join(
        [
            f"{r['method']} device run over {r['link']['name']} ({r['samples']} samples)",
            f"  accuracy {r['accuracy']:.4f} (offline {r['offline_accuracy']:.4f}, same "
            f"prediction on {100 * r['same_predictions_as_offline']:.1f}% of samples), "
            f"fallbacks {r['fallbacks']}, offloaded {100 * r['offload_fraction']:.1f}%",
            f"  bytes per offloaded sample {r['bytes_per_sample']:.1f}",
            "  latency (ms, mean): " + ", ".join(f"{k}={v:.2f}" for k, v in lat.items()),
            f"  MCU time from: {r['mcu_estimate_source']}",
        ]
    )
