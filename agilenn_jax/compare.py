"""The paper's method comparison (Fig 16, 17, 22, 23): AgileNN vs Edge-only, MCUNet-style
local-only, DeepCOD-style and SPINN-style, from one ``method_summary.json`` per run.

Runs are grouped by (dataset, method, variant) and averaged over seeds (mean ± sample std). The
latency at each MCU clock and link is computed, not measured, so that every method is priced by
the same deterministic rule: local (device ms) + compress (encode ms) + network (offload fraction
× (bytes·8 / bandwidth + RTT)) + server (offload fraction × server ms). The paper's fairness rule
(a baseline within 10 accuracy points of AgileNN) is a column, not a filter: a baseline outside
it is still shown, marked. A bad summary is one line under "Unusable runs", never a crash.

The module is over 400 lines because the paper's numbers live here as constants (transcribed
once from shared/reference/paper_results.md, which is never read at run time) beside the four
plots that put them next to ours.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from agilenn_jax import layout
from agilenn_jax.serving.client import LINK_PRESETS, Link

SUMMARY_FILE = "method_summary.json"
METHODS = ("agilenn", "deepcod", "spinn", "edge_only", "local_only")  # the paper's order
CLOCKS_MHZ = (64, 128, 216)
HEADLINE = (216, "wifi_6m")  # the paper's setting for Fig 16 and the speed-ups
PAPER_NAMES = {
    "agilenn": "AgileNN",
    "deepcod": "DeepCOD",
    "spinn": "SPINN",
    "edge_only": "Edge-only",
    "local_only": "MCUNet",
}
PAPER_DATASETS = ("CIFAR-10", "CIFAR-100", "SVHN", "ImageNet-200")
PARTS = ("local", "compress", "network", "server")
# One colour per method in every plot, ours and the paper's; variants of a method differ by line.
COLORS = {"agilenn": "C0", "deepcod": "C1", "spinn": "C2", "edge_only": "C4", "local_only": "C3"}
_LINES = ("-", "--", ":", "-.")

# Fig 16 [P] (read off the plot, about ±2-5% of the axis): 216 MHz, WiFi 6 Mbps.
# (local, compress, network, remote, total, accuracy %) in ms; None = "–" (nothing sent),
# "~0" = 0.0, "≈x" = x.
PAPER_FIG16: dict[str, dict[str, tuple[float | None, ...]]] = {
    "CIFAR-10": {
        "agilenn": (14, 1.5, 5, 0.0, 21, 94.3),
        "deepcod": (47.5, 1, 5, 0.6, 55, 94.9),
        "spinn": (64, 2, 6, 0.0, 72, 95.2),
        "edge_only": (0, 3, 74, 1, 78, 95.6),
        "local_only": (139, None, None, None, 139, 93.8),
    },
    "CIFAR-100": {
        "agilenn": (16, 2, 5, 0.0, 24, 73.9),
        "deepcod": (50, 1.5, 6.5, 1.5, 60, 75),
        "spinn": (67, 2.5, 8, 0.0, 78, 73.8),
        "edge_only": (0, 4, 86, 2, 93, 75.4),
        "local_only": (306, None, None, None, 306, 65.8),
    },
    "SVHN": {
        "agilenn": (11, 1.5, 2, 0.3, 15, 95.3),
        "deepcod": (21, 1.5, 7.5, 0.6, 31, 95.2),
        "spinn": (27, 2, 8, 1.5, 38.5, 95.4),
        "edge_only": (0, 3, 71.5, 2, 77, 96.2),
        "local_only": (98, None, None, None, 98, 95),
    },
    "ImageNet-200": {
        "agilenn": (63, 9, 22, 3, 97, 60),
        "deepcod": (213, 11, 25, 4, 254, 61.6),
        "spinn": (248, 14, 29, 3, 294, 61.5),
        "edge_only": (0, 20, 368, 3, 391, 62),
        "local_only": (507, None, None, None, 507, 53),
    },
}
# Fig 22 / Fig 23 [P] (read off the plots): total latency in ms at 64/128/216 MHz (on WiFi), then
# on BT 270 kbps / BT 2 Mbps / WiFi 6 Mbps (at 216 MHz). No Edge-only in these figures.
# CIFAR-100 MCUNet at 64 MHz is ">1000" in the paper: stored as 1000, a lower bound.
PAPER_FIG22_23_AXES = (*CLOCKS_MHZ, "ble_270k", "ble_2m", "wifi_6m")
PAPER_FIG22_23: dict[str, dict[str, tuple[float, ...]]] = {
    "CIFAR-100": {
        "agilenn": (64, 33, 20, 116, 35, 23),
        "deepcod": (184, 92, 56, 168, 74, 59),
        "spinn": (242, 123, 75, 212, 95, 77),
        "local_only": (1000, 520, 306, 309, 309, 309),
    },
    "SVHN": {
        "agilenn": (44, 22.5, 13, 51, 19, 14.5),
        "deepcod": (82, 45, 29, 161, 47, 30.5),
        "spinn": (105, 56, 36, 177, 55, 37),
        "local_only": (418, 208, 122, 123, 123, 123),
    },
}
# Fig 17 [P] (read off the plot): accuracy % vs compression rate (×), AgileNN and DeepCOD.
PAPER_FIG17: dict[str, dict[str, tuple[float, ...]]] = {
    "CIFAR-100": {
        "rate": (30, 35, 40, 45, 50),
        "agilenn": (73.0, 65.0, 58.0, 44, 31.8),
        "deepcod": (70.2, 64.8, 47.3, 23.9, 15.4),
    },
    "SVHN": {
        "rate": (50, 100, 150, 200, 250),
        "agilenn": (95.0, 88.6, 79.8, 68.5, 59.4),
        "deepcod": (91.8, 71.9, 56.1, 34.2, 20.2),
    },
}
# Table 2 [T] (printed): AgileNN sends this many % fewer bytes than DeepCOD.
PAPER_TABLE2_LESS_DATA = {"CIFAR-10": 43.7, "CIFAR-100": 15.8, "SVHN": 72.3, "ImageNet-200": 20.8}

_TOP = ("method", "variant", "dataset", "seed", "accuracy", "bytes_per_sample")
_TOP += ("raw_image_bytes", "offload_fraction", "server_ms", "device")
_DEVICE = ("macs", "flash_bytes", "arena_bytes", "over_budget", "ms_at_mhz", "encode_ms_at_mhz")


@dataclasses.dataclass(frozen=True)
class Run:
    """One validated method_summary.json (clock-keyed dicts use int MHz)."""

    path: str
    method: str
    variant: str
    dataset: str
    seed: int
    accuracy: float
    bytes_per_sample: float
    raw_image_bytes: float
    offload_fraction: float
    server_ms: float
    macs: float
    flash_bytes: float
    arena_bytes: float
    over_budget: tuple[str, ...]
    ms_at_mhz: dict[int, float]
    encode_ms_at_mhz: dict[int, float]


def _num(value: Any, name: str, hi: float | None = None) -> float:
    """A finite number >= 0 (and <= hi): anything else is a broken summary, said by name."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (hi is not None and value > hi):
        bound = f"in [0, {hi}]" if hi is not None else ">= 0"
        raise ValueError(f"{name} = {value!r} is not a number {bound}")
    return float(value)


def _parse(path: str, data: Any) -> Run:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    device = data.get("device")
    missing = [k for k in _TOP if k not in data]
    if isinstance(device, dict):
        missing += [f"device.{k}" for k in _DEVICE if k not in device]
        for table in ("ms_at_mhz", "encode_ms_at_mhz"):
            if isinstance(device.get(table), dict):
                missing += [
                    f"device.{table}.{c}" for c in CLOCKS_MHZ if str(c) not in device[table]
                ]
    elif device is not None:
        raise ValueError("device is not an object")
    if missing:
        raise ValueError("missing field(s): " + ", ".join(missing))
    if data["method"] not in METHODS:
        raise ValueError(f"unknown method {data['method']!r} (expected one of {METHODS})")
    seed = data["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed = {seed!r} is not an integer")
    if not isinstance(data["dataset"], str) or not data["dataset"]:
        raise ValueError(f"dataset = {data['dataset']!r} is not a name")
    over = device["over_budget"]
    if not isinstance(over, list) or not all(isinstance(x, str) for x in over):
        raise ValueError(f"device.over_budget = {over!r} is not a list of strings")
    tables = {}
    for table in ("ms_at_mhz", "encode_ms_at_mhz"):
        if not isinstance(device[table], dict):
            raise ValueError(f"device.{table} is not an object")
        tables[table] = {c: _num(device[table][str(c)], f"device.{table}.{c}") for c in CLOCKS_MHZ}
    raw = _num(data["raw_image_bytes"], "raw_image_bytes")
    if raw == 0:
        raise ValueError("raw_image_bytes = 0: no compression rate")
    return Run(
        path=path,
        method=data["method"],
        variant=str(data["variant"]),
        dataset=data["dataset"],
        seed=seed,
        accuracy=_num(data["accuracy"], "accuracy (a fraction)", hi=1.0),
        bytes_per_sample=_num(data["bytes_per_sample"], "bytes_per_sample"),
        raw_image_bytes=raw,
        offload_fraction=_num(data["offload_fraction"], "offload_fraction", hi=1.0),
        server_ms=_num(data["server_ms"], "server_ms"),
        macs=_num(device["macs"], "device.macs"),
        flash_bytes=_num(device["flash_bytes"], "device.flash_bytes"),
        arena_bytes=_num(device["arena_bytes"], "device.arena_bytes"),
        over_budget=tuple(over),
        ms_at_mhz=tables["ms_at_mhz"],
        encode_ms_at_mhz=tables["encode_ms_at_mhz"],
    )


def read_summary(path: str) -> tuple[Run | None, str | None]:
    """``(run, None)``, or ``(None, why not)`` for a missing, unreadable or incomplete file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None, "no such file or directory"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    except ValueError as e:  # JSONDecodeError and bad UTF-8 both are ValueErrors
        return None, f"not valid JSON: {e}"
    try:
        return _parse(path, data), None
    except ValueError as e:
        return None, str(e)


def collect(paths: Sequence[str]) -> tuple[list[Run], list[tuple[str, str]]]:
    """(usable runs, [(path, problem)]): each path is a summary file or a directory searched
    recursively for ``method_summary.json``; a file named twice counts once, and a second file
    for the same (dataset, method, variant, seed) is a problem, not a fourth seed."""
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f == SUMMARY_FILE
            )
            files += found
            if not found:
                problems.append((path, f"directory holds no {SUMMARY_FILE}"))
        else:
            files.append(path)
    runs: list[Run] = []
    seen: dict[str, str] = {}
    keys: dict[tuple, str] = {}
    for path in files:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen[real] = path
        run, problem = read_summary(path)
        if run is None:
            problems.append((path, problem or "unusable"))
            continue
        key = (run.dataset, run.method, run.variant, run.seed)
        if key in keys:
            problems.append((path, f"same dataset/method/variant/seed as {keys[key]}; skipped"))
            continue
        keys[key] = path
        runs.append(run)
    return runs, problems


def latency(run: Run, mhz: int, link: Link) -> dict[str, float]:
    """The breakdown in ms, deterministic (no packet loss): what the paper's Fig 16 stacks.
    ``bytes_per_sample``, ``encode_ms_at_mhz`` and ``server_ms`` are per *offloaded* sample, so
    all three are weighted by the offload fraction (SPINN's early exits skip them)."""
    share = run.offload_fraction
    parts = {
        "local": run.ms_at_mhz[mhz],
        "compress": share * run.encode_ms_at_mhz[mhz],
        "network": share * (run.bytes_per_sample * 8 / link.bandwidth_bps + link.rtt_s) * 1e3,
        "server": share * run.server_ms,
    }
    parts["total"] = sum(parts.values())
    return parts


def run_metrics(run: Run) -> dict[str, float | None]:
    """Every per-run number a group averages (None where it has no meaning: the compression
    rate of a run that sends nothing)."""
    sent = run.bytes_per_sample
    m: dict[str, float | None] = {
        "accuracy": run.accuracy,
        "bytes_per_sample": sent,
        "compression": run.raw_image_bytes / sent if sent > 0 else None,
        "offload_fraction": run.offload_fraction,
        "macs": run.macs,
        "flash_bytes": run.flash_bytes,
        "arena_bytes": run.arena_bytes,
        "server_ms_measured": run.server_ms,
    }
    any_link = next(iter(LINK_PRESETS.values()))
    for mhz in CLOCKS_MHZ:
        m[f"local_ms_{mhz}mhz"] = run.ms_at_mhz[mhz]
        m[f"compress_ms_{mhz}mhz"] = run.encode_ms_at_mhz[mhz]
    for name, link in LINK_PRESETS.items():
        m[f"network_ms_{name}"] = latency(run, CLOCKS_MHZ[0], link)["network"]
    m["server_ms"] = latency(run, CLOCKS_MHZ[0], any_link)["server"]
    for mhz in CLOCKS_MHZ:
        for name, link in LINK_PRESETS.items():
            m[f"total_ms_{mhz}mhz_{name}"] = latency(run, mhz, link)["total"]
    return m


def _stat(values: list[float | None]) -> dict[str, Any] | None:
    """mean, sample std (None for one value: a single seed has no spread to show) and n."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _label(method: str, variant: str) -> str:
    return f"{method}/{variant}" if variant else method


def _sort(key: tuple[str, str, str]) -> tuple:
    dataset, method, variant = key
    return dataset, METHODS.index(method), variant


def _paper_ratio(method: str, paper_dataset: str) -> float:
    rows = PAPER_FIG16[paper_dataset]
    return rows[method][4] / rows["agilenn"][4]


def compare(runs: Sequence[Run], band: float = 0.10, paper_dataset: str = "CIFAR-10") -> dict:
    """The JSON-able comparison: per dataset, one entry per (method, variant) group with the
    stats of every :func:`run_metrics` number, the fairness band and the speed-ups.

    The AgileNN reference of a dataset is its variant "" group if any, else its first variant
    in sorted order; every other group is measured against it."""
    if paper_dataset not in PAPER_DATASETS:
        raise ValueError(f"paper_dataset {paper_dataset!r} not one of {PAPER_DATASETS}")
    if not band >= 0:
        raise ValueError(f"band = {band} must be >= 0 (absolute accuracy, 0.10 = 10 points)")
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.method, run.variant), []).append(run)
    headline = f"total_ms_{HEADLINE[0]}mhz_{HEADLINE[1]}"
    datasets: dict[str, dict[str, Any]] = {}
    for key in sorted(groups, key=_sort):
        dataset, method, variant = key
        members = sorted(groups[key], key=lambda r: r.seed)
        per_run = [run_metrics(r) for r in members]
        entry = {
            "dataset": dataset,
            "method": method,
            "variant": variant,
            "label": _label(method, variant),
            "n": len(members),
            "seeds": [r.seed for r in members],
            "paths": [r.path for r in members],
            "over_budget": sorted({x for r in members for x in r.over_budget}),
            "over_budget_runs": sum(bool(r.over_budget) for r in members),
            "metrics": {k: _stat([m[k] for m in per_run]) for k in per_run[0]},
            "paper_speedup": _paper_ratio(method, paper_dataset),
        }
        datasets.setdefault(dataset, {"reference": None, "groups": []})["groups"].append(entry)
    for block in datasets.values():
        agilenn = [g for g in block["groups"] if g["method"] == "agilenn"]
        ref = next((g for g in agilenn if g["variant"] == ""), agilenn[0] if agilenn else None)
        block["reference"] = ref["label"] if ref else None
        for g in block["groups"]:
            g["is_reference"] = g is ref
            g["accuracy_delta"] = g["within_band"] = g["speedup_vs_agilenn"] = None
            if ref is None or g is ref:
                continue
            delta = g["metrics"]["accuracy"]["mean"] - ref["metrics"]["accuracy"]["mean"]
            g["accuracy_delta"] = delta
            g["within_band"] = abs(delta) <= band + 1e-9  # 0.8 - 0.7 is 0.10000000000000009
            g["speedup_vs_agilenn"] = g["metrics"][headline]["mean"] / max(
                ref["metrics"][headline]["mean"], 1e-12
            )
    links = {
        n: {"bandwidth_bps": k.bandwidth_bps, "rtt_s": k.rtt_s} for n, k in LINK_PRESETS.items()
    }
    return {
        "band": band,
        "paper_dataset": paper_dataset,
        "clocks_mhz": list(CLOCKS_MHZ),
        "links": links,
        "headline": {"mhz": HEADLINE[0], "link": HEADLINE[1]},
        "datasets": datasets,
    }


def _cell(stat: dict | None, scale: float = 1.0, digits: int | None = None) -> str:
    """``mean ± std`` (just the mean for one seed); digits follow the mean's size."""
    if stat is None:
        return "—"
    mean = stat["mean"] * scale
    d = digits if digits is not None else (1 if abs(mean) >= 100 else 2)
    text = f"{mean:.{d}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std'] * scale:.{d}f}"


def _name_cell(g: dict) -> str:
    if not g["over_budget"]:
        return g["label"]
    runs = f" ({g['over_budget_runs']}/{g['n']} runs)" if g["over_budget_runs"] < g["n"] else ""
    return f"{g['label']} **DOES NOT FIT: {', '.join(g['over_budget'])}**{runs}"


def _band_cell(g: dict, has_ref: bool) -> str:
    if g["is_reference"]:
        return "reference"
    if not has_ref:
        return "— (no AgileNN)"
    pts = 100 * g["accuracy_delta"]
    return f"{'yes' if g['within_band'] else 'NO'} ({pts:+.1f} pts)"


def _table(block: dict, band: float) -> list[str]:
    """The per-dataset markdown table, one row per group."""
    names = list(LINK_PRESETS)
    head = ["method/variant", "n", "accuracy %", "bytes/sample", "compression ×", "offload"]
    head += ["MACs (M)", "flash KB", "arena KB"]
    head += [f"device ms {c} MHz" for c in CLOCKS_MHZ] + [f"network ms {n}" for n in names]
    head += ["server ms"] + [f"total ms {HEADLINE[0]} MHz {n}" for n in names]
    head.append(f"within band (±{100 * band:g} pts)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for g in block["groups"]:
        m = g["metrics"]
        cells = [
            _name_cell(g),
            str(g["n"]),
            _cell(m["accuracy"], 100),
            _cell(m["bytes_per_sample"]),
        ]
        cells += [_cell(m["compression"], digits=1), _cell(m["offload_fraction"])]
        cells += [_cell(m["macs"], 1e-6, 3), _cell(m["flash_bytes"], 1 / 1024, 1)]
        cells += [_cell(m["arena_bytes"], 1 / 1024, 1)]
        cells += [_cell(m[f"local_ms_{c}mhz"]) for c in CLOCKS_MHZ]
        cells += [_cell(m[f"network_ms_{n}"]) for n in names] + [_cell(m["server_ms"])]
        cells += [_cell(m[f"total_ms_{HEADLINE[0]}mhz_{n}"]) for n in names]
        cells.append(_band_cell(g, block["reference"] is not None))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _breakdown(summary: dict) -> list[str]:
    """Ours at the headline clock and link beside the paper's Fig 16 rows, with speed-ups."""
    mhz, link = HEADLINE
    paper = summary["paper_dataset"]
    lines = [
        f"## Latency breakdown at {mhz} MHz on {link} (ms), beside the paper's Fig 16 ({paper})",
        "",
        "Speed-up = this row's total / AgileNN's total (same dataset). The paper's rows are "
        "read off its plot [P] and measured on another data set and input size: compare shapes "
        "and ratios, not milliseconds.",
        "",
        "| source | dataset | method/variant | local | compress | network | server | total "
        "| accuracy % | speed-up vs AgileNN | paper's speed-up |",
        "|" + " --- |" * 11,
    ]
    for dataset, block in summary["datasets"].items():
        for g in block["groups"]:
            m = g["metrics"]
            parts = [m[f"local_ms_{mhz}mhz"], m[f"compress_ms_{mhz}mhz"], m[f"network_ms_{link}"]]
            parts += [m["server_ms"], m[f"total_ms_{mhz}mhz_{link}"], m["accuracy"]]
            cells = ["ours", dataset, _name_cell(g), *(_cell(s) for s in parts[:-1])]
            speed = "1 (reference)" if g["is_reference"] else "—"
            if g["speedup_vs_agilenn"] is not None:
                speed = f"{g['speedup_vs_agilenn']:.2f}×"
            cells += [_cell(parts[-1], 100), speed, f"{g['paper_speedup']:.2f}×"]
            lines.append("| " + " | ".join(cells) + " |")
    for method, row in PAPER_FIG16[paper].items():
        cells = ["paper [P]", paper, PAPER_NAMES[method]]
        cells += ["–" if v is None else f"{v:g}" for v in row[:5]] + [f"{row[5]:g}", "—"]
        lines.append("| " + " | ".join(cells) + f" | {_paper_ratio(method, paper):.2f}× |")
    return lines


def _less_data(block: dict, paper: str) -> list[str]:
    """Table 2's measure: how many % fewer bytes AgileNN sends than each DeepCOD variant."""
    ref = next((g for g in block["groups"] if g["is_reference"]), None)
    if ref is None:
        return []
    out = []
    mine = ref["metrics"]["bytes_per_sample"]["mean"]
    for g in block["groups"]:
        theirs = g["metrics"]["bytes_per_sample"]["mean"]
        if g["method"] != "deepcod" or not theirs:
            continue
        less = 100 * (1 - mine / theirs)
        word = "fewer" if less >= 0 else "more"
        out.append(
            f"- {ref['label']} sends {abs(less):.1f}% {word} bytes than {g['label']} "
            f"(paper Table 2 [T], {paper}: {PAPER_TABLE2_LESS_DATA[paper]:g}% fewer than DeepCOD)."
        )
    return out


def markdown(summary: dict, problems: Sequence[tuple[str, str]], plot_notes: Sequence[str]) -> str:
    """compare.md: one table per dataset, the Fig 16 breakdown, plots, unusable runs."""
    links = ", ".join(
        f"{n} = {v['bandwidth_bps'] / 1e6:g} Mbps + {1e3 * v['rtt_s']:g} ms RTT"
        for n, v in summary["links"].items()
    )
    lines = [
        "# Method comparison",
        "",
        "Cells are mean ± sample std over seeds (n-1); a cell without ± is a single seed (n=1). "
        "Latency is computed, not measured: local = device ms, compress = encode ms, network = "
        "offload × (bytes·8/bandwidth + RTT), server = offload × measured server ms. "
        f"Links: {links}.",
        f"Within band: |accuracy − AgileNN's| ≤ {100 * summary['band']:g} points (the paper's "
        "fairness rule for latency).",
    ]
    for dataset, block in summary["datasets"].items():
        lines += ["", f"## {dataset}", ""]
        if block["reference"] is None:
            lines += [f"No AgileNN run for {dataset}: no fairness band and no speed-ups.", ""]
        else:
            lines += [f"AgileNN reference: `{block['reference']}`.", ""]
        lines += _table(block, summary["band"])
        less = _less_data(block, summary["paper_dataset"])
        lines += ["", *less] if less else []
    lines += ["", *_breakdown(summary)]
    if plot_notes:
        lines += ["", "## Plots", "", *plot_notes]
    lines += ["", "## Unusable runs", ""]
    lines += [f"- `{p}`: {why}" for p, why in problems] or ["none"]
    return "\n".join(lines) + "\n"


def write_csv(path: str, summary: dict) -> None:
    """One row per group, flat columns: each metric's mean and std (empty for one seed)."""
    groups = [g for block in summary["datasets"].values() for g in block["groups"]]
    names = list(groups[0]["metrics"]) if groups else []
    head = ["dataset", "method", "variant", "n", "seeds", "over_budget", "is_reference"]
    head += ["within_band", "accuracy_delta", "speedup_vs_agilenn", "paper_speedup"]
    head += [f"{k}_{s}" for k in names for s in ("mean", "std")]
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        for g in groups:
            row = [g["dataset"], g["method"], g["variant"], g["n"], " ".join(map(str, g["seeds"]))]
            row += [";".join(g["over_budget"]), g["is_reference"]]
            row += [g[k] for k in ("within_band", "accuracy_delta", "speedup_vs_agilenn")]
            row.append(g["paper_speedup"])
            for k in names:
                s = g["metrics"][k]
                row += ["", ""] if s is None else [s["mean"], "" if s["std"] is None else s["std"]]
            writer.writerow(["" if v is None else v for v in row])
    os.replace(path + ".tmp", path)


def _series(summary: dict) -> list[tuple[str, dict, dict]]:
    """(legend label, group, line style) for every group; the dataset is named only when there
    are several; a method keeps its colour, its variants cycle through line styles."""
    several = len(summary["datasets"]) > 1
    out, count = [], {}
    for d, block in summary["datasets"].items():
        for g in block["groups"]:
            i = count[g["method"]] = count.get(g["method"], -1) + 1
            style = {"color": COLORS[g["method"]], "linestyle": _LINES[i % len(_LINES)]}
            out.append((f"{d}: {g['label']}" if several else g["label"], g, style))
    return out


def _paper_fig22_dataset(paper: str) -> str:
    return paper if paper in PAPER_FIG22_23 else "CIFAR-100"


def plot(out: str, summary: dict) -> tuple[list[str], list[str]]:
    """Write the four PNGs (ours left, the paper's right); returns (files, skipped notes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    files, skipped = [], []
    series = _series(summary)
    paper, mhz, link = summary["paper_dataset"], *HEADLINE
    names = list(LINK_PRESETS)

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        files.append(name)

    # Fig 16's shape: stacked local / compress / network / server.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = (f"local_ms_{mhz}mhz", f"compress_ms_{mhz}mhz", f"network_ms_{link}", "server_ms")
    ours = [[g["metrics"][k]["mean"] for k in keys] for _, g, _ in series]
    theirs = [[v or 0.0 for v in row[:4]] for row in PAPER_FIG16[paper].values()]
    for ax, labels, rows, title in (
        (axes[0], [s for s, _, _ in series], ours, f"ours, {mhz} MHz, {link}"),
        (
            axes[1],
            [PAPER_NAMES[k] for k in PAPER_FIG16[paper]],
            theirs,
            f"paper Fig 16, {paper} [P]",
        ),
    ):
        bottom = [0.0] * len(rows)
        for i, part in enumerate(PARTS):
            heights = [r[i] for r in rows]
            ax.bar(range(len(rows)), heights, bottom=bottom, label=part)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("latency (ms)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    save(fig, "latency_breakdown.png")

    # Fig 23 (links) and Fig 22 (clocks): total latency per method, ours and the paper's.
    p22 = _paper_fig22_dataset(paper)
    for name, xs, key, idx, xlabel in (
        (
            "latency_vs_link.png",
            names,
            lambda x: f"total_ms_{mhz}mhz_{x}",
            (3, 4, 5),
            f"link ({mhz} MHz)",
        ),
        (
            "latency_vs_clock.png",
            list(CLOCKS_MHZ),
            lambda x: f"total_ms_{x}mhz_{link}",
            (0, 1, 2),
            f"MCU clock, MHz ({link})",
        ),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        pos = range(len(xs))
        for label, g, style in series:
            stats = [g["metrics"][key(x)] for x in xs]
            axes[0].errorbar(
                pos,
                [s["mean"] for s in stats],
                yerr=[s["std"] or 0.0 for s in stats],
                marker="o",
                capsize=3,
                label=label,
                **style,
            )
        for method, row in PAPER_FIG22_23[p22].items():
            axes[1].plot(
                pos, [row[i] for i in idx], "o-", color=COLORS[method], label=PAPER_NAMES[method]
            )
        if idx[0] == 0 and p22 == "CIFAR-100":
            axes[1].annotate(
                ">1000", (0, 1000), textcoords="offset points", xytext=(6, -4), fontsize=8
            )
        for ax, title in (
            (axes[0], "ours"),
            (axes[1], f"paper Fig {22 if idx[0] == 0 else 23}, {p22} [P]"),
        ):
            ax.set_xticks(pos, [str(x) for x in xs])
            ax.set_yscale("log")  # local-only is 10x the rest: linear would flatten them
            ax.yaxis.set_major_formatter(ticker.LogFormatter())
            ax.yaxis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(2, 0.5)))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("total latency (ms)")
            ax.set_title(title)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        save(fig, name)

    # Fig 17: accuracy vs compression rate, AgileNN and DeepCOD.
    curves: dict[str, list[dict]] = {}
    for _, g, _ in series:
        if g["method"] in ("agilenn", "deepcod") and g["metrics"]["compression"] is not None:
            curves.setdefault(f"{g['dataset']}: {g['method']}", []).append(g)
    datasets = list(summary["datasets"])
    if not curves:
        skipped.append(
            "accuracy_vs_compression.png skipped: no agilenn or deepcod run sends bytes."
        )
        return files, skipped
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, members in curves.items():
        members.sort(key=lambda g: g["metrics"]["compression"]["mean"])
        c = [g["metrics"]["compression"] for g in members]
        a = [g["metrics"]["accuracy"] for g in members]
        axes[0].errorbar(
            [s["mean"] for s in c],
            [100 * s["mean"] for s in a],
            xerr=[s["std"] or 0.0 for s in c],
            yerr=[100 * (s["std"] or 0.0) for s in a],
            marker="o",
            capsize=3,
            label=label,
            color=COLORS[members[0]["method"]],
            linestyle=_LINES[datasets.index(members[0]["dataset"]) % len(_LINES)],
        )
    for line, (dataset, table) in zip(_LINES, PAPER_FIG17.items(), strict=False):
        for method in ("agilenn", "deepcod"):
            label = f"{dataset}: {PAPER_NAMES[method]}"
            axes[1].plot(
                table["rate"], table[method], "o" + line, color=COLORS[method], label=label
            )
    for ax, title in ((axes[0], "ours"), (axes[1], "paper Fig 17 [P]")):
        ax.set_xlabel("compression rate (raw image bytes / bytes sent)")
        ax.set_ylabel("accuracy %")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "accuracy_vs_compression.png")
    return files, skipped


def build(
    paths: Sequence[str],
    out: str,
    band: float = 0.10,
    paper_dataset: str = "CIFAR-10",
    plots: bool = True,
) -> dict[str, Any]:
    """Write compare.md, compare.csv, compare.json and the PNGs into ``out``; returns their
    paths, the markdown and the problems. ValueError when no run is usable."""
    runs, problems = collect(paths)
    if not runs:
        listed = "; ".join(f"{p}: {why}" for p, why in problems[:5]) or "no paths given"
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"no usable {SUMMARY_FILE} among {list(paths)}: {listed}{more}")
    summary = compare(runs, band, paper_dataset)
    os.makedirs(out, exist_ok=True)
    files, notes = [], []
    if plots:
        try:
            files, notes = plot(out, summary)
        except ImportError:
            notes = ["Plots skipped: matplotlib is not installed (pip install matplotlib)."]
    notes = [f"![{f[:-4]}]({f})" for f in files] + notes
    text = markdown(summary, problems, notes)
    summary["unusable"] = [{"path": p, "problem": why} for p, why in problems]
    summary["plots"] = files
    paths_out = {k: os.path.join(out, f"compare.{k}") for k in ("md", "csv", "json")}
    with open(paths_out["md"] + ".tmp", "w") as f:
        f.write(text)
    os.replace(paths_out["md"] + ".tmp", paths_out["md"])
    write_csv(paths_out["csv"], summary)
    layout.write_json(paths_out["json"], summary)
    return {
        **paths_out,
        "plots": [os.path.join(out, f) for f in files],
        "markdown": text,
        "runs": len(runs),
        "problems": problems,
    }
