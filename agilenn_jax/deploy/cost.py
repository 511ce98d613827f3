"""STM32F746 budgets and a cycle model of the device part (estimates, not measurements).

Cycle model for int8 CMSIS-NN kernels on a Cortex-M7 (dual-issue, SIMD SMLAD = 2 MACs/cycle):
1x1 / regular conv and dense kernels reach about half of the SMLAD peak once im2col,
requantisation and loads are paid (1.0 cycle/MAC); 3x3 depthwise kernels reuse less data per
load (2.0 cycles/MAC); element-wise / pooling ops cost ~2 cycles per element touched. The
CMSIS-NN paper (Lai, Suda, Chandra 2018, arXiv:1801.06601) reports 4.6x throughput over naive
int8 kernels at these rates; calibrate against a real board's DWT cycle counter before quoting
absolute latency.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from agilenn_jax.models import num_local_channels
from agilenn_jax.models.layers import same_output_size

FLASH_BUDGET = 1024 * 1024  # STM32F746: 1 MB flash
SRAM_BUDGET = 320 * 1024  # 320 KB SRAM
CLOCKS_MHZ = (216, 128, 64)
CYCLES_PER_MAC = {"CONV_2D": 1.0, "FULLY_CONNECTED": 1.0, "DEPTHWISE_CONV_2D": 2.0}
CYCLES_PER_ELEMENT = 2.0


def layer_macs(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """MACs (or touched elements) per device layer, from the architecture."""
    m = config.model
    k = num_local_channels(config)
    s = int(config.data.image_size)
    cin, rows = 3, []
    for i, (c, st) in enumerate(zip(m.extractor_channels, m.extractor_strides, strict=True)):
        s = same_output_size(s, st)
        rows.append({"layer": f"dw{i}", "op": "DEPTHWISE_CONV_2D", "macs": s * s * cin * 9})
        rows.append({"layer": f"pw{i}", "op": "CONV_2D", "macs": s * s * cin * int(c)})
        cin = int(c)
    rows.append({"layer": "local_gap", "op": "SUM", "elements": s * s * k})
    rows.append(
        {"layer": "local_dense", "op": "FULLY_CONNECTED", "macs": k * int(config.data.num_classes)}
    )
    return rows


def tflite_layer_macs(model: bytes) -> list[dict[str, Any]]:
    """MACs (or touched elements) per operator of any TFLite model, from its tensor shapes:
    what ``latency_estimate`` prices for a baseline's device part (``layer_macs`` derives the
    same from AgileNN's config)."""
    from agilenn_jax.deploy.tflite import interpreter

    it = interpreter(model)
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in it.get_tensor_details()}
    rows = []
    for i, op in enumerate(it._get_ops_details()):
        kind, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        out = int(np.prod(shapes[outs[0]])) if outs else 0
        name = f"{i}:{kind.lower()}"
        if kind == "CONV_2D":  # weights [Cout, kh, kw, Cin]
            _, kh, kw, cin = shapes[ins[1]]
            rows.append({"layer": name, "op": kind, "macs": out * kh * kw * cin})
        elif kind == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, C]
            _, kh, kw, _ = shapes[ins[1]]
            rows.append({"layer": name, "op": kind, "macs": out * kh * kw})
        elif kind == "FULLY_CONNECTED":  # weights [out, in]
            rows.append({"layer": name, "op": kind, "macs": out * shapes[ins[1]][1]})
        elif kind not in ("RESHAPE", "SLICE", "SQUEEZE", "EXPAND_DIMS"):  # views cost nothing
            touched = max(out, *(int(np.prod(shapes[t])) for t in ins if t >= 0 and t in shapes))
            rows.append({"layer": name, "op": kind, "elements": touched})
    return rows


def latency_estimate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Cycles per layer (added to ``rows``) and the total in ms at each MCU clock."""
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


def budget(flash_bytes: int, arena_bytes: int) -> tuple[dict[str, int], list[str]]:
    """The flash / SRAM report and the names of the budgets that are exceeded."""
    report = {
        "flash_bytes": flash_bytes,
        "flash_budget_bytes": FLASH_BUDGET,
        "flash_headroom_bytes": FLASH_BUDGET - flash_bytes,
        "arena_bytes": arena_bytes,
        "sram_budget_bytes": SRAM_BUDGET,
        "sram_headroom_bytes": SRAM_BUDGET - arena_bytes,
    }
    over = [
        name
        for name, headroom in (
            ("flash", report["flash_headroom_bytes"]),
            ("SRAM arena", report["sram_headroom_bytes"]),
        )
        if headroom < 0
    ]
    return report, over
