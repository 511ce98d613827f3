"""The method comparison on synthetic method_summary.json files: group stats, the latency rule
by hand, the fairness band, the over-budget marker, broken summaries listed (never fatal), the
written files, and the CLI end to end including its clean failure on nothing usable."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from agilenn_jax import compare
from agilenn_jax.serving.client import LINK_PRESETS
from tests.conftest import ROOT

SEEDS = (0, 1, 2)
# (method, variant): (accuracy per seed, bytes per seed, offload, device ms at 216, over budget)
SPEC = {
    ("agilenn", ""): ((0.94, 0.95, 0.96), (200.0, 210.0, 220.0), 1.0, 4.0, []),
    ("deepcod", "rate=0.01"): ((0.90, 0.91, 0.92), (400.0, 400.0, 400.0), 1.0, 12.0, []),
    ("deepcod", "rate=0.05"): ((0.80, 0.81, 0.82), (100.0, 110.0, 120.0), 1.0, 12.0, []),
    ("spinn", "b=2,exit"): ((0.93, 0.94, 0.95), (500.0, 500.0, 500.0), 0.6, 20.0, []),
    ("edge_only", "png"): ((0.97, 0.97, 0.97), (1500.0, 1500.0, 1500.0), 1.0, 0.0, []),
    ("local_only", ""): ((0.70, 0.72, 0.74), (0.0, 0.0, 0.0), 0.0, 90.0, ["flash"]),
}


def _summary(method, variant, seed, acc, sent, offload, ms216, over, dataset="digits"):
    scale = {64: 216 / 64, 128: 216 / 128, 216: 1.0}
    return {
        "method": method,
        "variant": variant,
        "dataset": dataset,
        "seed": seed,
        "workdir": f"/w/{method}/{seed}",
        "samples": 500,
        "accuracy": acc,
        "bytes_per_sample": sent,
        "raw_image_bytes": 1728,
        "offload_fraction": offload,
        "device": {
            "macs": 100_000 + seed,
            "flash_bytes": 27_000,
            "arena_bytes": 18_000,
            "over_budget": over,
            "ms_at_mhz": {str(c): ms216 * s for c, s in scale.items()},
            "encode_ms_at_mhz": {str(c): 0.5 * s for c, s in scale.items()},
            "source": "synthetic",
        },
        "server_ms": 1.0 + seed,
    }


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    for (method, variant), (accs, sent, offload, ms216, over) in SPEC.items():
        for seed in SEEDS:
            s = _summary(method, variant, seed, accs[seed], sent[seed], offload, ms216, over)
            _write(str(root / f"{method}{variant}" / f"s{seed}" / compare.SUMMARY_FILE), s)
    _write(str(root / "corrupt" / compare.SUMMARY_FILE), "{not json")
    broken = _summary("spinn", "", 0, 0.9, 1.0, 1.0, 1.0, [])
    del broken["accuracy"], broken["device"]["ms_at_mhz"]["128"]
    _write(str(root / "missing" / compare.SUMMARY_FILE), broken)
    return root


def _group(summary, label, dataset="digits"):
    return next(g for g in summary["datasets"][dataset]["groups"] if g["label"] == label)


def test_groups_latency_band_and_unusable(runs_dir):
    explicit = str(runs_dir / "agilenn" / "s0" / compare.SUMMARY_FILE)  # also under runs_dir
    runs, problems = compare.collect([str(runs_dir), explicit, str(runs_dir / "nope.json")])
    assert len(runs) == 18  # the file named twice counts once
    why = {os.path.basename(os.path.dirname(p)) or p: w for p, w in problems}
    assert "not valid JSON" in why["corrupt"]
    assert "accuracy" in why["missing"] and "device.ms_at_mhz.128" in why["missing"]
    assert any(p.endswith("nope.json") and "no such file" in w for p, w in problems)

    summary = compare.compare(runs, band=0.10, paper_dataset="CIFAR-10")
    ag = _group(summary, "agilenn")
    assert summary["datasets"]["digits"]["reference"] == "agilenn" and ag["is_reference"]
    assert ag["n"] == 3 and ag["seeds"] == [0, 1, 2]
    acc = ag["metrics"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.95) and acc["std"] == pytest.approx(0.01)
    assert ag["metrics"]["bytes_per_sample"]["std"] == pytest.approx(10.0)
    rates = [1728 / b for b in (200.0, 210.0, 220.0)]
    assert ag["metrics"]["compression"]["mean"] == pytest.approx(statistics.fmean(rates))
    assert ag["metrics"]["compression"]["std"] == pytest.approx(statistics.stdev(rates))

    # SPINN on BLE 270k at 216 MHz by hand: 60% offloaded, 500 bytes, 15 ms RTT; encoding,
    # network and server are per offloaded sample, so all three are weighted by 0.6.
    spinn = _group(summary, "spinn/b=2,exit")["metrics"]
    network = 0.6 * (500 * 8 / 270e3 + 0.015) * 1e3
    server = 0.6 * statistics.fmean([1.0, 2.0, 3.0])
    assert LINK_PRESETS["ble_270k"].bandwidth_bps == 270e3
    assert spinn["network_ms_ble_270k"]["mean"] == pytest.approx(network)
    assert spinn["server_ms"]["mean"] == pytest.approx(server)
    assert spinn["total_ms_216mhz_ble_270k"]["mean"] == pytest.approx(
        20 + 0.6 * 0.5 + network + server
    )
    assert spinn["total_ms_64mhz_ble_270k"]["mean"] == pytest.approx(
        (20 + 0.6 * 0.5) * 216 / 64 + network + server
    )
    local = _group(summary, "local_only")["metrics"]
    assert local["compression"] is None and local["network_ms_wifi_6m"]["mean"] == 0.0
    assert local["total_ms_216mhz_wifi_6m"]["mean"] == pytest.approx(90.0)  # nothing to encode

    # Band: deepcod rate=0.01 -4 pts in, rate=0.05 -14 pts out, local_only -23 pts out.
    assert _group(summary, "deepcod/rate=0.01")["within_band"] is True
    assert _group(summary, "deepcod/rate=0.05")["within_band"] is False
    assert _group(summary, "edge_only/png")["within_band"] is True
    assert _group(summary, "local_only")["within_band"] is False
    wifi = "total_ms_216mhz_wifi_6m"
    ratio = spinn[wifi]["mean"] / ag["metrics"][wifi]["mean"]
    assert _group(summary, "spinn/b=2,exit")["speedup_vs_agilenn"] == pytest.approx(ratio)
    assert _group(summary, "spinn/b=2,exit")["paper_speedup"] == pytest.approx(72 / 21)


def test_build_writes_everything(runs_dir, tmp_path):
    out = str(tmp_path / "out")
    built = compare.build([str(runs_dir)], out, paper_dataset="SVHN")
    text = open(built["md"]).read()
    assert text == built["markdown"]
    assert "local_only **DOES NOT FIT: flash**" in text
    assert "| NO (-14.0 pts) |" in text and "| yes (-4.0 pts) |" in text
    assert "## Unusable runs" in text and "not valid JSON" in text
    assert "missing field(s): accuracy" in text
    assert "| paper [P] | SVHN | MCUNet | 98 | – | – | – | 98 | 95 |" in text
    assert "72.3% fewer than DeepCOD" in text
    assert "95.00 ± 1.00" in text  # AgileNN's accuracy in %
    for name in (
        "latency_breakdown.png",
        "latency_vs_link.png",
        "latency_vs_clock.png",
        "accuracy_vs_compression.png",
    ):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 1000 and f"]({name})" in text
    with open(built["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["method"] for r in rows} == set(compare.METHODS)
    ag = next(r for r in rows if r["method"] == "agilenn")
    assert float(ag["accuracy_mean"]) == pytest.approx(0.95) and ag["is_reference"] == "True"
    data = json.load(open(built["json"]))
    assert len(data["unusable"]) == 2 and data["paper_dataset"] == "SVHN"
    assert _group(data, "local_only")["over_budget"] == ["flash"]


def test_single_seed_no_agilenn_and_no_compression_plot(tmp_path):
    s = _summary("local_only", "", 0, 0.7, 0.0, 0.0, 90.0, [], dataset="other")
    _write(str(tmp_path / "one.json"), s)
    built = compare.build([str(tmp_path / "one.json")], str(tmp_path / "out"))
    text = built["markdown"]
    assert "No AgileNN run for other" in text and "— (no AgileNN)" in text
    row = next(line for line in text.splitlines() if line.startswith("| local_only | 1 |"))
    assert "±" not in row  # n=1: no fake "± 0"
    assert "accuracy_vs_compression.png skipped" in text
    assert not os.path.exists(tmp_path / "out" / "accuracy_vs_compression.png")
    with pytest.raises(ValueError, match="no usable"):
        compare.build([str(tmp_path / "nothing")], str(tmp_path / "out2"))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.compare", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_runs_and_fails_cleanly(runs_dir, tmp_path):
    out = str(tmp_path / "cli")
    r = _cli(f"--runs={runs_dir},{tmp_path / 'missing_dir'}", f"--out={out}", "--band=0.05")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "# Method comparison" in r.stdout and "within band (±5 pts)" in r.stdout
    assert "18 usable run(s), 3 unusable" in r.stdout
    assert os.path.getsize(os.path.join(out, "compare.csv")) > 0

    bad = tmp_path / "bad"
    _write(str(bad / "a" / compare.SUMMARY_FILE), "{not json")
    _write(str(bad / "b" / compare.SUMMARY_FILE), json.dumps({"method": "agilenn"}))
    r = _cli(f"--runs={bad}", f"--out={tmp_path / 'cli_bad'}")
    assert r.returncode != 0
    assert "error: no usable method_summary.json" in r.stderr and "not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
