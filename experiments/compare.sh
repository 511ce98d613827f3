#!/usr/bin/env bash
# The method comparison end to end: per method and seed, train (launch.main), export (int8,
# TFLM-verified), serve + run the device over the socket (launch.device writes the run's
# method_summary.json), then launch.compare builds the table and plots.
#
#   bash experiments/compare.sh DATASET ROOT "METHODS" "SEEDS" [N_SAMPLES]
#   bash experiments/compare.sh digits workdirs/compare_digits \
#       "edge_only local_only deepcod spinn agilenn" "0 1 2"
#
# DATASET is compare.py's (digits | cifar10 ...; cifar10 runs at scale=cpu). Extra config
# overrides for every run: $EXTRA (e.g. EXTRA="--config.train.epochs=2"). An AgileNN run that
# already exists elsewhere (the quick start's seeds) is reused from $AGILENN_ROOT/seed$S.
# Every step is skipped when its output exists, so a rerun resumes.
# Expected runtime (digits, 2 cores): ~2-4 min per baseline run, ~5 min per AgileNN run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=$1; ROOT=$2; METHODS=($3); SEEDS=($4); N=${5:-500}
SCALE=cpu
mkdir -p "$ROOT"
for m in "${METHODS[@]}"; do
  for s in "${SEEDS[@]}"; do
    wd="$ROOT/$m/seed$s"
    if [ "$m" = agilenn ] && [ -n "${AGILENN_ROOT:-}" ]; then wd="$AGILENN_ROOT/seed$s"; fi
    mkdir -p "$(dirname "$wd")"
    [ -f "$wd/results.json" ] || python3 -m launch.main \
        --config="experiments/configs/compare.py:method=$m,dataset=$DATASET,scale=$SCALE" \
        --workdir="$wd" --config.seed="$s" ${EXTRA:-} >"$wd.train.log" 2>&1
    [ -f "$wd/export/export_report.json" ] || python3 -m launch.export --workdir="$wd" \
        --num_verify=200 --allow_over_budget >"$wd.export.log" 2>&1
    [ -f "$wd/export/method_summary.json" ] && continue
    port=0; pid=
    if [ "$m" != local_only ]; then
      rm -f "$wd/port"
      python3 -m launch.serve --workdir="$wd" --port=0 --ready_file="$wd/port" \
          >"$wd.serve.log" 2>&1 &
      pid=$!
      for _ in $(seq 900); do [ -s "$wd/port" ] && break; sleep 0.2; done
      port=$(cat "$wd/port")
    fi
    python3 -m launch.device --export_dir="$wd/export" --port="$port" --num_samples="$N" \
        --link=wifi_6m >"$wd.device.log" 2>&1 || echo "device run failed: $wd.device.log"
    if [ -n "$pid" ]; then kill -TERM "$pid"; wait "$pid" || true; fi
    echo "$m seed $s: $(python3 -c "import json; r=json.load(open('$wd/export/method_summary.json')); print(f\"accuracy {r['accuracy']:.4f}, {r['bytes_per_sample']:.1f} B/sample\")")"
  done
done
RUNS=$(printf "%s," "$ROOT" ${AGILENN_ROOT:+"$AGILENN_ROOT"}); RUNS=${RUNS%,}
python3 -m launch.compare --runs="$RUNS" --out="$ROOT/compare"
