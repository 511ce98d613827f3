"""The generated firmware, built and checked: device C from an export, on the host and on a
Cortex-M7 in QEMU, against TFLite and the server's decoder, with its footprint and speed.

``check(export_dir, ...)`` generates the model library (``codegen``, one per kernel back-end)
and the entropy encoder (``encoder``), builds both targets (``mcu``), feeds them held-out
images, and reports: outputs vs the TFLite interpreter and TFLite Micro (must be identical),
frames vs the Python codec (identical, and they decode), flash/RAM per part from the linker
map, stack from a painted stack, and executed instructions per layer and for the encoder,
turned into milliseconds with a stated cycles-per-instruction range (QEMU counts
instructions; it has no cycle model).
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from agilenn_jax import inference, layout
from agilenn_jax.deploy import codegen, cost, encoder, export, mcu, tflite
from agilenn_jax.deploy.int8 import indices_from_int8, quantize
from agilenn_jax.deploy.tflm import TFLMRunner
from agilenn_jax.serving import codec

BACKENDS = ("portable", "cmsis")
TARGETS = ("host", "m7")
# Cortex-M7 cycles per executed instruction, assumed: 0.7 (dual issue, code and data in
# zero-wait-state TCM / caches) to 1.3 (load-use stalls, flash wait states past the cache).
CPI_RANGE = (0.7, 1.3)
RAM_GOAL_BYTES = 100 * 1024  # the goal for extractor + local NN + encoder
MS_GOAL_216MHZ = 5.0
PAPER = {"local_ms": (11, 16), "flash_kb": 130, "sram_kb": 215}  # paper's CIFAR firmware
REPORT_FILE = "firmware_report.json"
FOOTPRINT_GROUPS = {  # regexes on object paths; mcu.build_m7 names objects obj/NNN_<source>.o
    "model": (r"/obj/\d+_agilenn_model\.o",),
    "kernels": (r"/obj/\d+_agilenn_kernels_\w+\.o",),
    "cmsis_nn": (r"/obj/\d+_arm_\w+\.o",),
    "encoder": (r"/obj/\d+_agilenn_(encoder|codec_tables)\.o",),
    "harness": (r"/obj/\d+_(firmware_main|startup_m7)\.o",),
}
LIBRARY_GROUPS = ("model", "kernels", "cmsis_nn", "encoder")


class FirmwareError(Exception):
    """The export cannot be turned into firmware, or the firmware disagrees with its reference."""


def _read_export(export_dir: str) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    paths = [os.path.join(export_dir, f) for f in (export.INT8_MODEL_FILE, export.META_FILE)]
    paths.append(os.path.join(export_dir, export.REPORT_FILE))
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FirmwareError(
            f"{export_dir} is not an export (missing {', '.join(map(os.path.basename, missing))});"
            " run python -m launch.export first"
        )
    with open(paths[0], "rb") as f:
        model = f.read()
    with open(paths[1]) as f:
        meta = json.load(f)
    with open(paths[2]) as f:
        report = json.load(f)
    return model, meta, report


def _codec_model(export_dir: str) -> codec.ProbabilityModel:
    path = os.path.join(export_dir, export.CODEC_MODEL_FILE)
    model = codec.ProbabilityModel.load(path)
    if model.context is None:
        raise FirmwareError(
            f"{path} has no context tables (written before the ctx coder): re-run the export"
        )
    return model


def generate_sources(
    model: bytes,
    meta: dict[str, Any],
    codec_model: codec.ProbabilityModel,
    out_dir: str,
    backend: str,
    cmsis_root: str | None,
) -> tuple[mcu.Sources, dict[str, Any], dict[str, Any]]:
    """Write the generated C for ``backend`` under ``out_dir``; returns (sources, plan, codec).

    ``model``, ``meta`` and ``codec_model`` are the export's int8 flatbuffer, device meta and
    codec model, read once by ``check``.
    """
    if backend not in BACKENDS:
        raise FirmwareError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    src_dir = os.path.join(out_dir, "src")
    os.makedirs(src_dir, exist_ok=True)
    try:
        plan = codegen.generate(model, src_dir, backend)
        extra_src, extra_inc = (
            codegen.cmsis_build_inputs(cmsis_root or "") if backend == "cmsis" else ([], [])
        )
    except codegen.CodegenError as e:
        raise FirmwareError(str(e)) from None
    enc = encoder.write_encoder(
        src_dir,
        codec_model,
        int(meta["k"]),
        np.asarray(meta["int8_thresholds"]),
        tuple(meta["remote_shape"]),
    )
    frame_static = (
        0 if plan["free_after_invoke"] >= enc["frame_bound_bytes"] else enc["frame_bound_bytes"]
    )
    sources = mcu.Sources(
        c_files=tuple(sorted(glob.glob(os.path.join(src_dir, "*.c")))) + tuple(extra_src),
        include_dirs=(src_dir, *extra_inc),
        defines=(f"AGILENN_FRAME_STATIC_BYTES={frame_static}",),
    )
    enc["frame_buffer"] = "arena (free after invoke)" if frame_static == 0 else "static"
    enc["frame_static_bytes"] = frame_static
    return sources, plan, enc


def reference_outputs(model: bytes, images_q: np.ndarray) -> dict[str, np.ndarray]:
    """TFLite interpreter and TFLite Micro outputs for int8 images: what the C must equal."""
    lite = tflite.interpreter(model)
    runner = TFLMRunner(model)
    out: dict[str, np.ndarray] = {}
    for name, fn in (("tflite", lambda x: tflite.invoke(lite, x)), ("tflm", runner.run_int8)):
        logits, feats = zip(*(fn(images_q[i : i + 1]) for i in range(len(images_q))), strict=True)
        out[f"{name}_logits"] = np.concatenate(logits)
        out[f"{name}_features"] = np.concatenate(feats)
    return out


def _compare(dev: mcu.DeviceOutputs, ref: dict[str, Any], frames_py: list[bytes], cdc) -> dict:
    n = len(frames_py)
    res: dict[str, Any] = {}
    for name in ("tflite", "tflm"):
        res[f"logits_equal_{name}"] = int(
            np.sum(np.all(dev.logits == ref[f"{name}_logits"], axis=-1))
        )
        res[f"features_equal_{name}"] = int(
            np.sum(np.all(dev.features == ref[f"{name}_features"], axis=(1, 2, 3)))
        )
    res["logits_max_diff_tflite"] = int(
        np.abs(dev.logits.astype(np.int32) - ref["tflite_logits"]).max(initial=0)
    )
    res["frames_equal_python"] = sum(a == b for a, b in zip(dev.frames, frames_py, strict=True))
    decoded = 0
    for i, frame in enumerate(dev.frames):
        try:
            decoded += bool(np.array_equal(cdc.decode(frame), ref["indices"][i]))
        except codec.FrameError:
            pass
    res["frames_decoded_by_server"] = decoded
    res["samples"] = n
    # TFLite Micro is the reference: TF's interpreter rounds FULLY_CONNECTED's requantisation
    # differently from TFLM's reference kernels and CMSIS-NN (see README), so its logits may
    # differ by one step; everything else must be identical.
    exact = ("logits_equal_tflm", "features_equal_tflm", "features_equal_tflite")
    exact += ("frames_equal_python", "frames_decoded_by_server")
    res["all_identical"] = all(res[k] == n for k in exact) and res["logits_max_diff_tflite"] <= 1
    return res


def _speed(dev: mcu.DeviceOutputs, names: Sequence[str]) -> dict[str, Any]:
    ins = dev.layer_ticks.mean(0) * mcu.INSTRUCTIONS_PER_TICK
    enc = float(dev.encoder_ticks.mean()) * mcu.INSTRUCTIONS_PER_TICK
    total = float(ins.sum()) + enc
    ms = {
        f"ms_at_{mhz}mhz": [total * cpi / (mhz * 1e3) for cpi in CPI_RANGE]
        for mhz in cost.CLOCKS_MHZ
    }
    return {
        "instructions_per_layer": {n: float(v) for n, v in zip(names, ins, strict=True)},
        "instructions_encoder": enc,
        "instructions_encoder_std": float(dev.encoder_ticks.std()) * mcu.INSTRUCTIONS_PER_TICK,
        "instructions_total": total,
        "instruction_resolution": mcu.INSTRUCTIONS_PER_TICK,
        "cpi_range": list(CPI_RANGE),
        **ms,
        "stack_bytes_max": int(dev.stack_bytes.max()),
    }


def check(
    export_dir: str,
    out_dir: str,
    backends: Sequence[str] = BACKENDS,
    cmsis_root: str | None = None,
    num_samples: int = 200,
    targets: Sequence[str] = TARGETS,
) -> dict[str, Any]:
    """Generate, build and run the firmware for each back-end and target; write the report."""
    model, meta, exp_report = _read_export(export_dir)
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise FirmwareError(f"unknown targets {bad}; expected some of {TARGETS}")
    workdir = exp_report["workdir"]
    config = layout.read_config(workdir)
    images, _ = inference.held_out_images(config, num_samples)
    if len(images) < num_samples:
        raise FirmwareError(f"only {len(images)} held-out images, {num_samples} requested")
    images_q = quantize(images, meta["quant"]["input"])
    ref = reference_outputs(model, images_q)
    thresholds = np.asarray(meta["int8_thresholds"])
    ref["indices"] = indices_from_int8(ref["tflite_features"], thresholds)
    shape = tuple(int(d) for d in meta["remote_shape"])
    codec_model = _codec_model(export_dir)
    cdc = codec.Codec(codec_model, int(meta["k"]), "ctx", shape)
    t0 = time.time()
    frames_py = [cdc.encode(i) for i in ref["indices"]]
    py_encode_ms = (time.time() - t0) * 1e3 / len(frames_py)
    report: dict[str, Any] = {
        "export_dir": os.path.abspath(export_dir),
        "workdir": workdir,
        "samples": len(images),
        "remote_shape": list(shape),
        "tflm": {
            "arena_bytes": exp_report["budget"]["arena_bytes"],
            "model_bytes": exp_report["budget"]["flash_bytes"],
        },
        "frames": _frame_sizes(cdc, ref["indices"], frames_py),
        "python_encode_ms": py_encode_ms,
        "backends": {},
    }
    for backend in backends:
        bdir = os.path.join(out_dir, backend)
        src, plan, enc = generate_sources(model, meta, codec_model, bdir, backend, cmsis_root)
        entry: dict[str, Any] = {"plan": plan, "encoder": enc}
        names = [layer["name"] for layer in plan["layers"]]
        for target in targets:
            missing = mcu.missing_tools(target)
            if missing:
                raise FirmwareError(
                    f"cannot build for {target}: {', '.join(missing)} not found (Debian packages: "
                    f"{' '.join(mcu.DEBIAN_PACKAGES)})"
                )
            if target == "host":
                cmd = [mcu.build_host(src, bdir)]
            else:
                elf, map_file = mcu.build_m7(src, bdir)
                cmd = mcu.qemu_command(elf)
                fp = mcu.footprint(map_file, FOOTPRINT_GROUPS)
                entry["footprint"] = fp
                entry["elf"] = elf
            t0 = time.time()
            dev = mcu.run_program(
                cmd, images_q, int(meta["num_classes"]), shape, len(names), timeout=1800
            )
            result = _compare(dev, ref, frames_py, cdc)
            result["run_seconds"] = time.time() - t0
            if target == "m7":
                result["speed"] = _speed(dev, names)
                lib = {k: fp[k] for k in LIBRARY_GROUPS}
                result["library_flash_bytes"] = sum(v["flash"] for v in lib.values())
                result["library_static_ram_bytes"] = sum(v["ram"] for v in lib.values())
                result["library_ram_bytes"] = (
                    result["library_static_ram_bytes"] + result["speed"]["stack_bytes_max"]
                )
            entry[target] = result
        report["backends"][backend] = entry
    os.makedirs(out_dir, exist_ok=True)
    layout.write_json(os.path.join(out_dir, REPORT_FILE), report)
    failures = [
        f"{b}/{t}"
        for b, e in report["backends"].items()
        for t in targets
        if not e[t]["all_identical"]
    ]
    if failures:
        raise FirmwareError(
            f"device outputs or frames differ from the reference on {', '.join(failures)}; "
            f"see {os.path.join(out_dir, REPORT_FILE)}"
        )
    return report


def _frame_sizes(cdc: codec.Codec, indices: np.ndarray, frames: list[bytes]) -> dict[str, Any]:
    """Mean frame bytes per coder on the same samples, and ctx's ideal code length."""
    out: dict[str, Any] = {}
    for name in ("ctx", "zstd", "range"):
        c = codec.Codec(cdc.model, cdc.k, name, cdc.shape)
        sizes = [len(f) for f in frames] if name == "ctx" else [len(c.encode(i)) for i in indices]
        out[name] = {"mean_bytes": float(np.mean(sizes)), "std_bytes": float(np.std(sizes))}
    ideal = cdc.model.context.code_lengths(indices) / 8
    out["ctx"]["ideal_payload_bytes"] = float(np.mean(ideal))
    out["header_crc_bytes"] = codec.HEADER.size + codec.CRC.size
    out["ctx_vs_zstd"] = out["ctx"]["mean_bytes"] / out["zstd"]["mean_bytes"] - 1.0
    return out


def format_report(r: dict[str, Any]) -> str:
    f = r["frames"]
    lines = [
        f"AgileNN firmware ({r['samples']} held-out samples, remote {r['remote_shape']})",
        f"  frames: ctx {f['ctx']['mean_bytes']:.1f} B (ideal payload "
        f"{f['ctx']['ideal_payload_bytes']:.1f} B + {f['header_crc_bytes']} B header/CRC), "
        f"zstd-19 {f['zstd']['mean_bytes']:.1f} B, range {f['range']['mean_bytes']:.1f} B "
        f"(ctx vs zstd {100 * f['ctx_vs_zstd']:+.1f}%)",
        f"  TFLM for comparison: arena {r['tflm']['arena_bytes'] / 1024:.1f} KB, model "
        f"{r['tflm']['model_bytes'] / 1024:.1f} KB (plus the interpreter's code)",
    ]
    for backend, e in r["backends"].items():
        lines.append(
            f"  [{backend}] arena {e['plan']['arena_bytes'] / 1024:.1f} KB, frame buffer: "
            f"{e['encoder']['frame_buffer']}"
        )
        for target in TARGETS:
            if target not in e:
                continue
            t = e[target]
            n = t["samples"]
            lines.append(
                f"    {target:<5} logits=TFLM {t['logits_equal_tflm']}/{n} (=TFLite "
                f"{t['logits_equal_tflite']}/{n}, max diff {t['logits_max_diff_tflite']}), "
                f"features=TFLM {t['features_equal_tflm']}/{n}, =TFLite "
                f"{t['features_equal_tflite']}/{n}, "
                f"frames=Python {t['frames_equal_python']}/{n}, decoded "
                f"{t['frames_decoded_by_server']}/{n} ({t['run_seconds']:.1f} s)"
            )
        if "m7" in e:
            t, s = e["m7"], e["m7"]["speed"]
            per = ", ".join(f"{k}={v / 1e3:.0f}k" for k, v in s["instructions_per_layer"].items())
            lines.append(
                f"    instructions: {per}, encoder={s['instructions_encoder'] / 1e3:.0f}k,"
                f" total {s['instructions_total'] / 1e6:.2f} M"
            )
            lines.append(
                "    est. time (CPI "
                + "-".join(f"{c:g}" for c in s["cpi_range"])
                + "): "
                + ", ".join(
                    f"{s[f'ms_at_{m}mhz'][0]:.2f}-{s[f'ms_at_{m}mhz'][1]:.2f} ms @ {m} MHz"
                    for m in sorted(cost.CLOCKS_MHZ, reverse=True)
                )
            )
            fp = e["footprint"]
            parts = ", ".join(
                f"{g} {fp[g]['flash'] / 1024:.1f}/{fp[g]['ram'] / 1024:.1f}" for g in LIBRARY_GROUPS
            )
            lines.append(
                f"    library flash {t['library_flash_bytes'] / 1024:.1f} KB, RAM "
                f"{t['library_ram_bytes'] / 1024:.1f} KB (static "
                f"{t['library_static_ram_bytes'] / 1024:.1f} + stack {s['stack_bytes_max']} B); "
                f"flash/RAM KB by part: {parts}"
            )
    return "\n".join(lines)
