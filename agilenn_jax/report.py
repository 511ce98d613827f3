"""A sweep's results in one place: ``ROOT/results.csv``, ``ROOT/report.md`` and PNG plots.

Points and their overrides come from ``ROOT/sweep.json`` (written by ``agilenn_jax.sweep``);
without it, every workdir under ROOT with a config is a point and its overrides are the config
keys that differ between them. Seeds are averaged: one table row per setting of the other
overrides, mean ± sample std over its finished seeds. An unfinished point or an unreadable
results.json is one line in report.md, never a crash: a report of a sweep still running is
useful.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import statistics
from typing import Any

from agilenn_jax import layout
from agilenn_jax.sweep import STATUS_FILE, SWEEP_FILE

METRICS = (
    "test_accuracy",
    "remote_only_accuracy",
    "local_only_accuracy",
    "achieved_skewness",
    "disorder_violation_rate",
    "alpha",
    "remote_entropy_bits_per_sample",
)
CSV_EXTRAS = (
    "reference_accuracy",
    "trusted_skewness",
    "trusted_violation_rate",
    "k",
    "train_seconds",
)
CSV_FILE = "results.csv"
REPORT_FILE = "report.md"
# The x axis of the line plots: the paper's ablations are read along rho first.
PREFERRED_X = ("loss.rho", "loss.lam", "model.temperature", "xai.steps", "model.num_centroids")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclasses.dataclass
class Point:
    """One workdir of the sweep: its overrides and its results (None with a ``problem``)."""

    name: str
    overrides: dict[str, Any]
    results: dict[str, Any] | None = None
    problem: str | None = None

    @property
    def status(self) -> str:
        if self.results is not None:
            return "finished"
        return "unfinished" if self.problem and self.problem.startswith("unfinished") else "bad"


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = _hashable(value)
    return out


def _recover(root: str, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Overrides from each workdir's config.json: the keys whose values differ between them."""
    configs: dict[str, dict[str, Any]] = {}
    for name in sorted(os.listdir(root)):
        workdir = os.path.join(root, name)
        if not os.path.isdir(workdir):
            continue
        for source in (layout.CONFIG_FILE, layout.RESULTS_FILE):
            path = os.path.join(workdir, source)
            if not os.path.exists(path):
                continue
            try:
                with open(path) as f:
                    data = json.load(f)
                data = data.get("config", data) if source == layout.RESULTS_FILE else data
                configs[name] = _flatten(data)
                break
            except (OSError, ValueError, AttributeError) as e:
                notes.append(f"point {name}: {source} unreadable: {e}")
    keys = sorted({k for c in configs.values() for k in c})
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    return {n: {k: c.get(k) for k in varying} for n, c in configs.items()}


def _failures(root: str) -> dict[str, str]:
    """{point: "failed (exit code N): last log line"} from the sweep's status file, if any."""
    try:
        with open(os.path.join(root, STATUS_FILE)) as f:
            points = json.load(f)["points"]
        return {
            name: f"failed (exit code {s.get('returncode')}): "
            + (s.get("stderr_tail") or ["(no output)"])[-1]
            for name, s in points.items()
            if s.get("state") == "failed"
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def collect(root: str) -> tuple[str, list[Point], list[str]]:
    """(config, points, notes) of the sweep in ``root``; notes are problems worth a line."""
    if not os.path.isdir(root):
        raise ValueError(f"{root} is not a directory")
    notes: list[str] = []
    config, listed = "", None
    path = os.path.join(root, SWEEP_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
            config = str(data.get("config", ""))
            listed = {str(name): dict(o) for name, o in data["points"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            notes.append(f"{SWEEP_FILE} unreadable ({e}); overrides recovered from config.json")
    if listed is None:
        listed = _recover(root, notes)
    if not listed:
        raise ValueError(f"{root} has no {SWEEP_FILE} and no run workdirs: nothing to report")
    status = _failures(root)
    points = []
    for name, overrides in listed.items():
        results, problem = layout.read_results(os.path.join(root, name))
        if results is None and problem.startswith("unfinished") and name in status:
            problem = f"unfinished, {status[name]}"
        overrides = {k: _hashable(v) for k, v in overrides.items()}
        points.append(Point(name, overrides, results, problem))
    return config, points, notes


def _sort_key(values: tuple) -> tuple:
    return tuple(
        (0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v)) for v in values
    )


def group(points: list[Point]) -> tuple[list[str], dict[tuple, list[Point]]]:
    """(group keys, {values: finished points}): overrides other than ``seed``, one entry per
    setting, sorted by value."""
    keys = sorted({k for p in points for k in p.overrides if k != "seed"})
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(tuple(p.overrides.get(k) for k in keys), [])
        if p.results is not None:
            groups[tuple(p.overrides.get(k) for k in keys)].append(p)
    return keys, dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


def _number(results: dict[str, Any], key: str) -> float | None:
    value = results.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def stats(points: list[Point], metric: str) -> tuple[float, float, int] | None:
    """(mean, sample std (0 for one seed), n) of ``metric`` over finished points, or None."""
    values = [v for p in points if (v := _number(p.results, metric)) is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def _cell(mean: float, std: float) -> str:
    """``mean ± std``, both with the mean's precision (bits per sample need no 4 decimals)."""
    digits = 1 if abs(mean) >= 100 else 4
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_csv(path: str, points: list[Point]) -> None:
    """One row per point: name, status, every override, the metrics (empty when unfinished)."""
    keys = sorted({k for p in points for k in p.overrides})
    columns = ["name", "status", *keys, *METRICS, *CSV_EXTRAS]
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for p in points:
            row = [p.name, p.status, *(p.overrides.get(k, "") for k in keys)]
            for metric in (*METRICS, *CSV_EXTRAS):
                value = p.results.get(metric, "") if p.results else ""
                row.append("" if isinstance(value, dict | list) else value)
            writer.writerow(row)
    os.replace(path + ".tmp", path)


def _varying(keys: list[str], groups: dict[tuple, list[Point]]) -> list[str]:
    finished = [values for values, members in groups.items() if members]
    return [k for i, k in enumerate(keys) if len({repr(v[i]) for v in finished}) > 1]


def _label(keys: list[str], values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={values[k]}" for k in keys) or "all points"


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot(root: str, keys: list[str], groups: dict[tuple, list[Point]]) -> list[str]:
    """Write the PNGs; returns their file names.

    Line plots (test accuracy and achieved skewness, mean ± std over seeds) take one swept key as
    the x axis (loss.rho when swept, else the first numeric one) and draw one line per setting
    of the other swept keys; the scatter of accuracy vs remote entropy bits is always drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    varying = _varying(keys, groups)
    rows = [(dict(zip(keys, v, strict=True)), m) for v, m in groups.items() if m]
    if varying:
        columns = {k: [r[k] for r, _ in rows] for k in varying}
        x_key = next((k for k in PREFERRED_X if k in varying), None)
        x_key = x_key or next((k for k in varying if _numeric(columns[k])), varying[0])
        line_keys = [k for k in varying if k != x_key]
        categories = sorted({r[x_key] for r, _ in rows}, key=lambda v: _sort_key((v,)))
        numeric = _numeric(categories)
        for metric, stem in (("test_accuracy", "accuracy"), ("achieved_skewness", "skewness")):
            fig, ax = plt.subplots(figsize=(6, 4))
            lines: dict[str, list[tuple[Any, tuple[float, float, int]]]] = {}
            for r, members in rows:
                s = stats(members, metric)
                if s is not None:
                    lines.setdefault(_label(line_keys, r), []).append((r[x_key], s))
            for label, series in lines.items():
                series.sort(key=lambda item: _sort_key((item[0],)))
                xs = [x if numeric else categories.index(x) for x, _ in series]
                ax.errorbar(
                    xs,
                    [s[0] for _, s in series],
                    yerr=[s[1] for _, s in series],
                    marker="o",
                    capsize=3,
                    linestyle="-" if numeric else "none",  # categories have no order to join
                    label=label,
                )
            if not numeric:
                ax.set_xticks(range(len(categories)), [str(c) for c in categories])
            ax.set_xlabel(x_key)
            ax.set_ylabel(f"{metric} (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            if line_keys and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            name = f"{stem}_vs_{_UNSAFE.sub('_', x_key)}.png"
            fig.tight_layout()
            fig.savefig(os.path.join(root, name), dpi=120)
            plt.close(fig)
            files.append(name)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r, members in rows:
        pts = [
            (
                _number(p.results, "remote_entropy_bits_per_sample"),
                _number(p.results, "test_accuracy"),
            )
            for p in members
        ]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=_label(varying, r), s=18)
    ax.set_xlabel("remote entropy (bits per sample)")
    ax.set_ylabel("test_accuracy")
    ax.grid(alpha=0.3)
    if varying and len(rows) <= 12 and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "accuracy_vs_entropy.png"), dpi=120)
    plt.close(fig)
    files.append("accuracy_vs_entropy.png")
    return files


def build(root: str, plots: bool = True) -> dict[str, Any]:
    """Write ``results.csv``, ``report.md`` and (``plots``) the PNGs into ``root``; returns
    their paths and the point counts."""
    config, points, notes = collect(root)
    write_csv(os.path.join(root, CSV_FILE), points)
    keys, groups = group(points)
    varying = _varying(keys, groups)
    fixed = [k for k in keys if k not in varying]
    finished = sum(p.results is not None for p in points)
    lines = [f"# Sweep report: `{config or root}`", ""]
    lines.append(f"{len(points)} points: {finished} finished, {len(points) - finished} not.")
    if fixed:
        first = next((dict(zip(keys, v, strict=True)) for v in groups), {})
        lines.append("Same in every row: " + ", ".join(f"`{k}={first[k]}`" for k in fixed) + ".")
    lines += [
        "Each cell is mean ± std over seeds (sample std, n-1; 0 for n=1); n = finished seeds.",
        "",
        "| " + " | ".join([*varying, "n", *METRICS]) + " |",
        "|" + " --- |" * (len(varying) + 1 + len(METRICS)),
    ]
    for values, members in groups.items():
        if not members:
            continue
        row = dict(zip(keys, values, strict=True))
        cells = [str(row[k]) for k in varying] + [str(len(members))]
        for metric in METRICS:
            s = stats(members, metric)
            cells.append("—" if s is None else _cell(s[0], s[1]))
        lines.append("| " + " | ".join(cells) + " |")
    problems = notes + [f"point {p.name}: {p.problem}" for p in points if p.problem]
    if problems:
        lines += ["", "## Not in the table", ""] + [f"- {line}" for line in problems]
    files: list[str] = []
    if plots and finished:
        try:
            files = plot(root, keys, groups)
        except ImportError:
            lines += ["", "Plots skipped: matplotlib is not installed (pip install matplotlib)."]
    if files:
        lines += ["", "## Plots", ""] + [f"![{f[:-4]}]({f})" for f in files]
    report_path = os.path.join(root, REPORT_FILE)
    with open(report_path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(report_path + ".tmp", report_path)
    return {
        "csv": os.path.join(root, CSV_FILE),
        "report": report_path,
        "plots": [os.path.join(root, f) for f in files],
        "points": len(points),
        "finished": finished,
        "problems": problems,
    }
