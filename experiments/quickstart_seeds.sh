#!/usr/bin/env bash
# The README's quick-start numbers: train, export and serve the quick start once per seed, then
# print mean ± std over seeds (and write workdirs/quickstart_seeds/summary.json).
#
#   bash experiments/quickstart_seeds.sh [SEED ...]     # default: 0 1 2
#
# Expected runtime: ~10 min per seed on 2 CPU cores (training ~5-8 min, export + firmware +
# 500 socket samples per link ~3 min). The firmware step needs the MCU toolchain (see README);
# CMSIS-NN is taken from $AGILENN_CMSIS_NN (default ../shared/third_party/CMSIS-NN) when present. Each seed's workdir resumes if interrupted; finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=workdirs/quickstart_seeds
SEEDS=("${@:-0}")
[ $# -eq 0 ] && SEEDS=(0 1 2)
mkdir -p "$ROOT"
CMSIS="${AGILENN_CMSIS_NN:-../shared/third_party/CMSIS-NN}"
FW_ARGS=(--backends=portable)
[ -d "$CMSIS" ] && FW_ARGS=(--backends=portable,cmsis --cmsis_root="$CMSIS")
for s in "${SEEDS[@]}"; do
  wd="$ROOT/seed$s"
  [ -f "$wd/results.json" ] || python3 -m launch.main --config=experiments/configs/quickstart.py \
      --workdir="$wd" --config.seed="$s" 2>"$wd.train.log"
done
for s in "${SEEDS[@]}"; do
  wd="$ROOT/seed$s"
  [ -f "$wd/export/export_report.json" ] || python3 -m launch.export --workdir="$wd" \
      --num_verify=200 >"$wd.export.log" 2>&1
  [ -f "$wd/export/firmware/firmware_report.json" ] || python3 -m launch.firmware \
      --export_dir="$wd/export" "${FW_ARGS[@]}" >"$wd.firmware.log" 2>&1
  [ -f "$wd/keys.json" ] || python3 -m launch.keys --out="$wd/keys.json" --device_ids=0 >/dev/null
  for link in wifi_6m ble_270k; do
    [ -f "$wd/export/device_report_$link.json" ] && continue
    rm -f "$wd/port"
    python3 -m launch.serve --workdir="$wd" --port=0 --ready_file="$wd/port" \
        --keys_file="$wd/keys.json" >"$wd.serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do [ -s "$wd/port" ] && break; sleep 0.2; done
    python3 -m launch.device --export_dir="$wd/export" --port="$(cat "$wd/port")" \
        --keys_file="$wd/keys.json" --device_id=0 --num_samples=500 --link="$link" \
        >"$wd.device_$link.log" 2>&1 || true
    kill -TERM "$pid"; wait "$pid" || true
  done
done
python3 - "$ROOT" "${SEEDS[@]}" <<'PY'
import json, os, sys
import numpy as np
root, seeds = sys.argv[1], sys.argv[2:]
def load(path):
    with open(path) as f:
        return json.load(f)
rows = {}
def add(name, values):
    rows[name] = values
res = [load(os.path.join(root, f"seed{s}", "results.json")) for s in seeds]
for key in ("test_accuracy", "remote_only_accuracy", "local_only_accuracy", "reference_accuracy",
            "achieved_skewness", "disorder_violation_rate", "alpha",
            "remote_entropy_bits_per_sample", "train_seconds"):
    add(key, [r[key] for r in res])
exp = [load(os.path.join(root, f"seed{s}", "export", "export_report.json")) for s in seeds]
add("flash_kb", [e["budget"]["flash_bytes"] / 1024 for e in exp])
add("arena_kb", [e["budget"]["arena_bytes"] / 1024 for e in exp])
add("int8_index_agreement", [e["verification"]["tflm"]["index_agreement"] for e in exp])
add("int8_accuracy_drop", [e["verification"]["accuracy_drop_int8"] for e in exp])
fws = [load(os.path.join(root, f"seed{s}", "export", "firmware", "firmware_report.json"))
       for s in seeds]
add("frame_bytes/ctx_firmware", [f["frames"]["ctx"]["mean_bytes"] for f in fws])
add("frame_bytes/ctx_ideal_payload", [f["frames"]["ctx"]["ideal_payload_bytes"] for f in fws])
add("frame_bytes/zstd19", [f["frames"]["zstd"]["mean_bytes"] for f in fws])
for backend in fws[0]["backends"]:
    m7 = [f["backends"][backend]["m7"] for f in fws]
    add(f"{backend}/all_identical", [float(m["all_identical"]) for m in m7])
    add(f"{backend}/m7_minstructions", [m["speed"]["instructions_total"] / 1e6 for m in m7])
    add(f"{backend}/m7_encoder_kinstructions", [m["speed"]["instructions_encoder"] / 1e3 for m in m7])
    add(f"{backend}/ms_216mhz_cpi_lo", [m["speed"]["ms_at_216mhz"][0] for m in m7])
    add(f"{backend}/ms_216mhz_cpi_hi", [m["speed"]["ms_at_216mhz"][1] for m in m7])
    add(f"{backend}/library_flash_kb", [m["library_flash_bytes"] / 1024 for m in m7])
    add(f"{backend}/library_ram_kb", [m["library_ram_bytes"] / 1024 for m in m7])
for link in ("wifi_6m", "ble_270k"):
    dev = [load(os.path.join(root, f"seed{s}", "export", f"device_report_{link}.json")) for s in seeds]
    add(f"{link}/socket_accuracy", [d["accuracy"] for d in dev])
    add(f"{link}/same_as_offline", [d["same_predictions_as_offline"] for d in dev])
    add(f"{link}/fallbacks", [d["fallbacks"] for d in dev])
    add(f"{link}/total_ms", [d["latency_ms"]["total_ms"] for d in dev])
    add(f"{link}/transmit_ms", [d["latency_ms"]["transmit_ms"] for d in dev])
    if link == "wifi_6m":
        for coder in sorted(dev[0]["coder_bytes_per_sample"]):
            add(f"bytes/{coder}", [d["coder_bytes_per_sample"][coder] for d in dev])
        add("bytes/entropy", [d["empirical_entropy_bytes_per_sample"] for d in dev])
        add("server_ms", [d["latency_ms"]["server_ms"] for d in dev])
summary = {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
               "values": v} for k, v in rows.items()}
summary["seeds"] = [int(s) for s in seeds]
with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"quick start over seeds {seeds}: mean ± std (sample std)")
for k, v in rows.items():
    print(f"  {k:<34} {np.mean(v):10.4f} ± {summary[k]['std']:.4f}   {np.round(v, 4).tolist()}")
PY
