#!/usr/bin/env bash
# Issue 11's CIFAR-10 objective ablation at a CPU budget: one reference per seed, shared by every
# variant of that seed (a copy of its checkpoint), so variants differ only in the AgileNN stage.
#
#   bash experiments/cifar10_objective.sh ROOT "SEEDS" EPOCHS VARIANT...
#   e.g. bash experiments/cifar10_objective.sh workdirs/c10abl "0" 2 lam0.8 lam0.3 lam0.3u ce
#
# VARIANT names (the AgileNN stage's overrides on paper.py:scale=cpu):
#   ce        loss.lam=1.0: plain CE on the same model (no IG in training), the accuracy bar
#   lamL      loss.lam=L (the paper's lam * CE + (1 - lam) * (skew + disorder))
#   lamLu     loss.lam=L, loss.unit_ce=True (the same loss divided by lam: CE keeps its step size)
# and any of these suffixes, each after a "-" (e.g. lam0.3u-el-all):
#   el        loss.disorder=element (every violating pair gets a gradient, not only max/min)
#   log       loss.disorder=log (max(0, log max(I2) - log min(I1)): pulls a weak local channel
#             up 1/I1 times harder)
#   mgM       loss.disorder_margin=M (e.g. mg0.05): local channels must lead offloaded ones by M.
#             Without it a variant runs the paper's margin 0 (paper.py defaults to 0.05 since
#             this ablation; passing 0 keeps the README's rows reproducible)
#   dwW       loss.disorder_weight=W (e.g. dw10): the ordering hinge weighted W times
#   rcMU      loss.reference_ce_weight=MU (e.g. rc0.5): the frozen reference's CE on the features
#             joins the XAI terms, so the extractor cannot escape them by confusing the reference
#   rR        loss.rho=R (e.g. r0.95): the skewness target
#   xN        preselect.exclude=(N,): Algorithm 1 may not keep extractor channel N on the device
#   kN        model.k=N local channels (default 5 of 24; Algorithm 1 keeps the N most frequent)
#   all       xai.trust_correct_only=False (the XAI terms on every sample, not only where the
#             frozen reference is right)
#   trkLR     xai.reference_lr=LR (e.g. trk0.01): the reference takes an SGD step of its own CE
#             on the features every step, so it follows the extractor (default: frozen)
#   logit     xai.target=logit (IG of the true-class logit instead of the CE loss, whose
#             gradient fades on samples the reference is confident about)
#   l1        xai.aggregate=l1: a channel's importance is the sum of |IG| over H, W (the authors'
#             code) instead of |sum of IG| (net, which every row without it uses)
#   cbW       loss.codebook_weight=W (e.g. cb1): a k-means term on the quantizer's centroids
#             (paper.py defaults to 1 since this ablation; without the suffix a variant runs 0,
#             so every earlier row stays reproducible)
#   kaW       loss.alive_weight=W (e.g. ka1): a floor on each offloaded channel's rate of non-zero
#             values (and of values under the clip at 6), on its output BN's gamma and beta
#             (losses.alive_loss; 0 without the suffix)
#   krR       loss.alive_rate=R (e.g. kr0.4): that floor (paper.py: 0.2); above 0.5 only the
#             BN's beta moves (losses.alive_loss), so kr0.8 keeps ~80% of values non-zero
#   gainG     model.channel_gain_max=G (e.g. gain8): each offloaded channel times
#             clip(1 / running mean, 1, G) before the quantizer (quantizer.ChannelGain;
#             paper.py defaults to 8 since this ablation; without the suffix a variant runs 0)
#   kall      loss.alive_channels=all: the floor on every channel, the local ones too
#   ceilT     loss.ceiling_weight=1, loss.local_ceiling=T (e.g. ceil5): each local channel's
#             output-BN beta held at or under T (losses.ceiling_loss)
#   ltT       loss.local_top=T (e.g. lt4, with kall): the floor's top end on the local channels
#             at T instead of the clip at 6, a ceiling that keeps them from climbing to it
#   eff       the ImageNet-pretrained EfficientNet-Lite0 reference (its own reference run,
#             ROOT/ref_eff_sSEED: ~18 min; its AgileNN runs ~13.5 min at 2 epochs)
# Each run writes ROOT/NAME_sSEED/results.json; finished runs are skipped, unfinished ones resume.
# launch.main applies its host tuning itself (agilenn_jax/host_tuning.py: 1.5-1.8x on this
# config, README "Benchmarks"). Expected runtime on 2 cores (commit 04099fd): ~5 min per
# reference (3 epochs), ~3 min per AgileNN epoch (~2 min with ce) plus ~1 min of pre-selection
# and evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$1
SEEDS=($2)
EPOCHS=$3
shift 3
CFG=experiments/configs/paper.py:scale=cpu
mkdir -p "$ROOT"
for s in "${SEEDS[@]}"; do
  for v in "$@"; do
    IFS=- read -r base suffixes <<<"$v"
    args=(--config.seed="$s")
    refargs=(--config.seed="$s")
    margin=0
    aggregate=net
    codebook=0
    gain=0
    ref="$ROOT/ref_s$s"
    for x in ${suffixes//-/ }; do
      case $x in
        el) args+=(--config.loss.disorder=element) ;;
        log) args+=(--config.loss.disorder=log) ;;
        mg*) margin="${x:2}" ;;
        cb*) codebook="${x:2}" ;;
        gain*) gain="${x:4}" ;;
        kall) args+=(--config.loss.alive_channels=all) ;;
        lt*) args+=(--config.loss.local_top="${x:2}") ;;
        ceil*) args+=(--config.loss.ceiling_weight=1 --config.loss.local_ceiling="${x:4}") ;;
        ka*) args+=(--config.loss.alive_weight="${x:2}") ;;
        kr*) args+=(--config.loss.alive_rate="${x:2}") ;;
        rc*) args+=(--config.loss.reference_ce_weight="${x:2}") ;;
        dw*) args+=(--config.loss.disorder_weight="${x:2}") ;;
        r[0-9]*) args+=(--config.loss.rho="${x:1}") ;;
        x[0-9]*) args+=(--config.preselect.exclude="(${x:1},)") ;;
        k[0-9]*) args+=(--config.model.k="${x:1}") ;;
        all) args+=(--config.xai.trust_correct_only=False) ;;
        trk*) args+=(--config.xai.reference_lr="${x:3}") ;;
        logit) args+=(--config.xai.target=logit) ;;
        l1) aggregate=l1 ;;
        eff)
          args+=(--config.model.reference_arch=efficientnet_lite0)
          refargs+=(--config.model.reference_arch=efficientnet_lite0)
          ref="$ROOT/ref_eff_s$s"
          ;;
        *) echo "unknown suffix $x in $v" >&2; exit 2 ;;
      esac
    done
    if [ ! -f "$ref/reference.done" ]; then
      python3 -m launch.main --config="$CFG" --workdir="$ref" --mode=pretrain_reference \
          "${refargs[@]}" 2>"$ref.log"
      touch "$ref/reference.done"
    fi
    args+=(--config.loss.disorder_margin="$margin" --config.xai.aggregate="$aggregate"
        --config.loss.codebook_weight="$codebook" --config.model.channel_gain_max="$gain")
    case $base in
      ce) args+=(--config.loss.lam=1.0) ;;
      lam*u) args+=(--config.loss.lam="${base:3:-1}" --config.loss.unit_ce=True) ;;
      lam*) args+=(--config.loss.lam="${base:3}" --config.loss.unit_ce=False) ;;
      *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    wd="$ROOT/${v}_s$s"
    [ -f "$wd/results.json" ] && continue
    mkdir -p "$wd"
    [ -d "$wd/reference" ] || cp -r "$ref/reference" "$wd/reference"
    echo "$(date +%T) $wd: ${args[*]}"
    python3 -m launch.main --config="$CFG" --workdir="$wd" --config.train.epochs="$EPOCHS" \
        --config.train.eval_every_epochs="$EPOCHS" "${args[@]}" 2>"$wd.log"
  done
done
