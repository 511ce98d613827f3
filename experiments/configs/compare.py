"""The paper's comparison: AgileNN and its four baselines on the same data, one file.

    --config=experiments/configs/compare.py:method=agilenn|edge_only|local_only|deepcod|spinn,
                                            dataset=digits|cifar10|cifar100|svhn|tiny_imagenet,
                                            scale=cpu|paper

Every method trains with the same data, optimiser and epochs as AgileNN's joint stage of the
same dataset/scale (``method=agilenn`` *is* that AgileNN config: quickstart.py for digits,
paper.py otherwise). The baselines (models/baselines.py) reuse AgileNN's parts:
  edge_only   the device sends the 8-bit image (``baseline.image_codec``: png, lzw, jpeg, webp);
              the server runs a whole MobileNetV2 (stem + AgileNN's remote stages, same width).
  local_only  MCUNet-style: a whole int8 MobileNetV2 on the device (narrower), nothing sent.
  deepcod     AgileNN's extractor with all C channels quantized and sent, AgileNN's remote NN on
              them, CE + rate_weight x estimated bits/symbol; no local NN, no XAI.
  spinn       MobileNetV2 split after block ``split_block`` (device: stem + first blocks, the
              split activation quantized and sent; server: the rest) + an early-exit head.
The whole pipeline for one run (train, export with TFLM verification, socket runtime, summary)
is experiments/compare.sh; ``python -m launch.compare`` builds the table and plots.

dataset=digits (scale ignored; the quick start's data, 24x24 input, 30 epochs at lr 0.05):
    python -m launch.main --config=experiments/configs/compare.py:method=deepcod --workdir=DIR
  Measured on 2 cores, seeds 0-2 (training seconds; val accuracy of results.json, mean ± std):
    edge_only 92 ± 3 s, 0.989 ± 0.005     local_only 74 ± 3 s, 0.977 ± 0.012
    deepcod  138 ± 9 s, 0.988 ± 0.002     spinn     114 ± 6 s, 0.985 ± 0.006 (no early exit)
    agilenn: the quick start (498 ± 149 s, 0.979 ± 0.005).
  Those runs predate issue 11's quick-start speed-ups: the baselines read the digits through
  host tf.data (add --config.data.on_device=False to reproduce them; the full quick start now
  keeps them on the device, which changes the augmentation draws), and the AgileNN runs are
  workdirs/quickstart_seeds_pre11 (README, "Quick start: 3 seeds").
  experiments/compare.sh adds ~1 min per run for export and 500 socket samples.
dataset=cifar10,scale=cpu: paper.py:scale=cpu's data and networks (32x32, the shared tarball),
  train.epochs=4 for every method (AgileNN also pre-trains its reference 3 epochs). The README's
  CIFAR-10 AgileNN run predates paper.py's issue-11 defaults: --config.loss.lam=0.8
  --config.loss.unit_ce=False --config.loss.disorder_margin=0 --config.xai.aggregate=net
  --config.loss.codebook_weight=0 --config.model.channel_gain_max=0 gives it.
scale=paper (GPU; 96x96, the paper's networks, 200 epochs; edge_only/local_only/spinn use a
  stride-2 stem as ImageNet's MobileNetV2, local_only at width 0.35 to fit the MCU):
    python -m launch.main \
        --config=experiments/configs/compare.py:method=spinn,dataset=svhn,scale=paper \
        --workdir=/tmp/spinn_svhn
  Not run: no GPU was available to this project, so these runtimes are estimates, not
  measurements. A baseline's step has no IG and no reference NN; the paper puts the XAI step at
  3-4x a plain step, so one baseline run should take about a third of AgileNN's (paper.py's
  docstring) on one A100/H100, the same 200 epochs:
    dataset=cifar10   AgileNN ~6-8 h (50 + 200 epochs)   each baseline ~2-3 h
    dataset=cifar100  AgileNN ~6-8 h                     each baseline ~2-3 h
    dataset=svhn      AgileNN ~8-10 h (73k images)       each baseline ~3-4 h
    dataset=tiny_imagenet (64x64 -> 96x96, 100k images; prepare as in paper.py)
                      AgileNN ~12 h                      each baseline ~4-5 h
  Edge-only's server is a full MobileNetV2 on 96x96 images: its step is the heaviest of the
  baselines (no extractor stride 3 in front); local_only's width 0.35 must still pass the
  export's flash/arena check, which launch.export reports.

Sweep (``get_sweep``; ``seeds=N`` seeds each, default 3). The methods themselves are not a
sweep: a method is a variant of this file (its edits differ), run one by one by compare.sh.
  rate     baseline.rate_weight {0, 0.02, 0.1, 0.5} of deepcod (or spinn): the accuracy vs
           compression curve of Fig 17, 4 points x seeds
    python -m launch.sweep --config=experiments/configs/compare.py:method=deepcod,sweep=rate \
        --root=workdirs/compare_rate
"""

import ml_collections

from agilenn_jax import sweep
from agilenn_jax.models import METHODS
from agilenn_jax.training.baselines import AGILENN_ONLY
from experiments.configs import common, paper, quickstart

ARGS = dict(
    method=METHODS,
    dataset=("digits", "cifar10", "cifar100", "svhn", "tiny_imagenet"),
    scale=("cpu", "paper"),
    sweep=("", "rate"),  # get_sweep's grid; get_config ignores it
    seeds=3,  # seeds per sweep point; get_config ignores it
)
DEEPCOD_RATE_WEIGHT = 0.02  # the default point; the rate sweep spans 0..0.5
RATE_WEIGHTS = (0.0, 0.02, 0.1, 0.5)


def apply_method(c: ml_collections.ConfigDict, method: str, paper_scale: bool) -> None:
    """The edits that turn an AgileNN config into ``method``'s (same data, optimiser, epochs)."""
    c.method = method
    if method == "agilenn":
        return
    b = c.baseline
    c.reference_train.epochs = 0  # no reference NN: recorded as such in config.json
    for section, field in AGILENN_ONLY:  # baselines.validate rejects any of them set
        c[section][field] = 0.0
    c.preselect.enabled = False
    b.net_width = c.model.remote_width
    b.stem_stride = 2 if paper_scale else 1
    if method == "local_only":
        b.net_width = 0.35 if paper_scale else c.model.remote_width / 2
    if method == "deepcod":
        b.rate_weight = DEEPCOD_RATE_WEIGHT
    if method == "spinn":
        b.rate_weight = DEEPCOD_RATE_WEIGHT


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``method`` on ``dataset`` at ``scale`` (see the module docstring)."""
    a = common.parse_arg(arg, **ARGS)
    if a.dataset == "digits":
        c = quickstart.get_config()
    else:
        c = paper.get_config(f"dataset={a.dataset},scale={a.scale}")
    with c.unlocked():
        apply_method(c, a.method, paper_scale=a.dataset != "digits" and a.scale == "paper")
    c.lock()
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """``sweep=rate``: deepcod's (or spinn's) rate weights, ``seeds`` seeds each."""
    a = common.parse_arg(arg, **ARGS)
    if a.sweep != "rate":
        raise ValueError("name a sweep: sweep=rate")
    if a.method not in ("deepcod", "spinn"):
        raise ValueError(f"sweep=rate needs method=deepcod or spinn, got {a.method}")
    grid = sweep.product(**{"baseline.rate_weight": RATE_WEIGHTS})
    return sweep.with_seeds(grid, range(a.seeds))
