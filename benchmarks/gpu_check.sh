#!/usr/bin/env bash
# One-call GPU check: the paper config (96x96, full-width networks) on one accelerator, unattended,
# in <= 8 minutes. Prints the throughput table (images/s, peak memory) of every step, trains for
# as many epochs as fit in the remaining budget with per-epoch accuracy, and projects the time of
# the paper's full schedule (50 reference + 200 AgileNN epochs) from the measured images/s.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR default: $OUT or /tmp/gpu_check
#
# Settings (environment): BUDGET_S (total seconds, default 420), CIFAR10 (the ImageFolder tarball;
# default ../shared/datasets/cifar10_train_jpeg.tar.gz; without it the run trains on the digits
# upsampled to 96x96 and says so), DTYPE (float32 | bfloat16, default bfloat16), ALLOW_CPU=1 to
# run without a GPU (for testing this script; CONFIG then defaults to the quick start).
# Needs the project's Python environment already installed (the GPU machine has no network).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
BUDGET_S="${BUDGET_S:-420}"
DTYPE="${DTYPE:-bfloat16}"
CIFAR10="${CIFAR10:-../shared/datasets/cifar10_train_jpeg.tar.gz}"
mkdir -p "$OUT_DIR"
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'PY' | tee "$OUT_DIR/devices.txt"
import os, jax
devs = jax.devices()
print(f"jax {jax.__version__}: {len(devs)} x {devs[0].device_kind} ({devs[0].platform})")
if devs[0].platform == "cpu" and os.environ.get("ALLOW_CPU") != "1":
    raise SystemExit("no GPU visible to jax: install jax with CUDA support (jax[cuda12]) "
                     "or set ALLOW_CPU=1 to test this script on the CPU")
PY

if [ "${ALLOW_CPU:-0}" = "1" ] && [ -z "${CONFIG:-}" ]; then
  CONFIG="experiments/configs/quickstart.py:size=fast"
fi
CONFIG="${CONFIG:-experiments/configs/paper.py}"
DATA_ARGS=()
if [[ "$CONFIG" == *paper.py* ]]; then
  if [ -f "$CIFAR10" ]; then
    DATA_ARGS=(--config.data.source=imagefolder "--config.data.path=$CIFAR10"
               --config.data.eval_split=val --config.data.val_fraction=0.02)
  else
    echo "no CIFAR-10 tarball at $CIFAR10: training on the digits at 96x96 (accuracy is not CIFAR's)"
    DATA_ARGS=(--config.data.source=digits --config.data.name=digits --config.data.eval_split=val
               --config.data.val_fraction=0.28 --config.data.pad=1 --config.data.flip=False)
  fi
fi
COMMON=("--config=$CONFIG" "${DATA_ARGS[@]}" "--config.model.dtype=$DTYPE"
        --config.data.on_device=True)

echo "== throughput ($DTYPE, on-device data)"
python3 benchmarks/throughput.py "${COMMON[@]}" --iters=10 --ig_steps=2 --json="$OUT_DIR/throughput.json" \
  | tee "$OUT_DIR/throughput.txt"

LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
EPOCHS=$(python3 - "$OUT_DIR/throughput.json" "$LEFT" <<'PY'
import json, sys
t = json.load(open(sys.argv[1])); left = float(sys.argv[2])
n = t["train_samples"]
# Leave a third of what is left for data loading, compilation and the evaluations.
per_epoch = n / t["images_per_s"]["reference"] + n / t["images_per_s"]["agilenn_m2"]
print(max(1, int(left * 0.66 / per_epoch)))
PY
)
echo "== training: $EPOCHS reference + $EPOCHS AgileNN epoch(s) in the ${LEFT}s left"
python3 -m launch.main "${COMMON[@]}" --workdir="$OUT_DIR/run" \
  "--config.reference_train.epochs=$EPOCHS" "--config.train.epochs=$EPOCHS" \
  --config.reference_train.eval_every_epochs=1 --config.train.eval_every_epochs=1 \
  --config.preselect.num_samples=1000 2>&1 \
  | grep -E "val/accuracy|test/accuracy|AgileNN results|accuracy \(combined\)|skewness|violation|train seconds" \
  | tee "$OUT_DIR/train.txt" || true

python3 - "$OUT_DIR/throughput.json" <<'PY' | tee "$OUT_DIR/projection.txt"
import json, sys
t = json.load(open(sys.argv[1])); n = t["train_samples"]; ips = t["images_per_s"]
ref_h = 50 * n / ips["reference"] / 3600
agile_h = 200 * n / ips["agilenn_m2"] / 3600
print(f"projected full schedule on this device ({n} training images/epoch, step time only): "
      f"50 reference epochs {ref_h:.2f} h + 200 AgileNN epochs {agile_h:.2f} h = "
      f"{ref_h + agile_h:.2f} h")
PY
echo "gpu_check done in $(( $(date +%s) - START )) s; outputs in $OUT_DIR"
