"""AgileNN with the paper's hyper-parameters: one file, the dataset and the scale as arguments.

    --config=experiments/configs/paper.py[:dataset=cifar10|cifar100|svhn|tiny_imagenet,
                                           scale=paper|cpu|untrained]

(a bare value works too: ``paper.py:svhn,cpu``). Defaults: cifar10, paper.

scale=paper (GPU/TPU; tfds data downloaded on first use; 96x96 input, full-width MobileNetV2
stacks, 50 reference + 200 AgileNN epochs, rho=0.8, k=5 of 24 channels, 8 centroids):
    python -m launch.main --config=experiments/configs/paper.py --workdir=/tmp/agilenn_cifar10
  cifar10: ~6-8 h on one A100/H100; ~92-94% test accuracy expected (paper ~94% with an
    ImageNet-pretrained reference; ours is trained from scratch unless
    --config.model.reference_arch=efficientnet_lite0, the ImageNet-pretrained EfficientNet-Lite0
    from PyPI), skewness >= 0.8, 3-bit indices.
  cifar100: ~6-8 h; ~70-74% (paper ~74%).
  svhn (cropped digits, no horizontal flip): ~8-10 h (73k train images); ~95-96% (paper ~96%).
  tiny_imagenet: an ImageFolder evaluated on its val/ folder. Prepare it first: flatten
    train/<wnid>/images/ into train/<wnid>/, sort val/images/ into val/<wnid>/ by
    val_annotations.txt, remove the unlabelled test/ folder (it would count as one more class):
        python -m launch.main --config=experiments/configs/paper.py:dataset=tiny_imagenet \\
            --workdir=/tmp/agilenn_tin --config.data.path=/data/tiny-imagenet-200
    ~12 h; ~55-60% top-1 on val (the paper reports ImageNet-scale results with a pretrained
    reference; ours trains it from scratch).

scale=cpu (2 CPU cores): same method, losses and quantizer; the input stays at its stored size
(the extractor keeps 32x32, so the feature map is the paper's 32x32x24), narrow MobileNetV2
stacks, 3 reference + 4 AgileNN epochs. cifar10 reads the shared ImageFolder tarball (train
only, so it evaluates on a seeded 10% hold-out):
    python -m launch.main --config=experiments/configs/paper.py:scale=cpu --workdir=/tmp/c10cpu
  Expected ~20 min on 2 cores with launch.main's host tuning (~5 min reference stage, measured
  on commit 04099fd; 12.8-14.9 min of AgileNN training over the 5 seeds below, commit d8b56cb;
  roughly 1.5-1.8x that with AGILENN_HOST_TUNING=0, an estimate).
  Expected result (seeds 0-4, 45k train / 5k val, README "CIFAR-10 on CPU: lambda = 0.5 with
  the gain"): 0.634 +- 0.013 val accuracy, skewness 0.876 +- 0.024 (rho = 0.8, >= 0.85 on every
  seed), disorder violations <= 0.0054 on every seed, 3,925 +- 540 B per sample to the server.
  Plain CE on the same model and budget (--config.loss.lam=1.0): 0.628 +- 0.022, skewness
  0.25, violations 1.000, 3,620 B. So the objective holds at plain CE's accuracy (paired +0.6
  +- 1.7 points; under it on 2 of 5 seeds). What each default is for (the README sections of
  "CIFAR-10 on CPU" have every ablation): importance as the authors' code measures it
  (xai.aggregate=l1, sum |IG| over H, W; with |sum IG| violations were 0.770 +- 0.370), the
  k-means codebook term (loss.codebook_weight=1, +1.7 points), lam = 0.5 with unit_ce (+1.6
  points over 0.3 on every seed) and the per-channel gain before the quantizer
  (model.channel_gain_max=8: +1.4 points at lam 0.5, higher on every seed). The 80% floor on
  the offloaded channels (loss.alive_weight=1, loss.alive_rate=0.8) is an option: with the
  gain at lam 0.3 it broke the ordering on 2 of 5 seeds. Far below the paper's ~94%: 7 epochs
  instead of 250, ~10x narrower networks, no pretrained reference.
  The other datasets at scale=cpu are untested (tfds data; tiny_imagenet at 64x64 costs ~4x).

scale=untrained: the paper's networks at 96x96 (the extractor 96x96x3 -> 32x32x24, k=5),
0 epochs, no pre-selection, cifar10 from the shared tarball with a 1% (500-image) hold-out: a
checkpoint of the paper-scale device model for export and firmware size/speed checks (its
accuracy is chance; what matters is the shapes):
    python -m launch.main --config=experiments/configs/paper.py:scale=untrained \
        --workdir=/tmp/agilenn_paper_untrained
  ~3-4 min on 2 cores (loading and resizing the tarball, one evaluation pass).

remote=ours|authors (any dataset and scale): the remote NN. ``ours`` (default) is the standard
MobileNetV2 stage layout on the 32x32 feature map: 48 MFLOP per sample at full width (XLA's count
on 32x32x19 features). ``authors`` keeps stride 1 in the second stage as the authors' code does:
179 MFLOP, 3.7x the remote's cost. The paper-scale configs use ``ours``: the extra resolution
is compute on the server the paper does not account for, and our quick-start and CPU results
are all with it; ``remote=authors`` is there to match the authors' network when comparing.

Sweeps (``get_sweep``; run with ``python -m launch.sweep --config=...:sweep=NAME --root=DIR``,
``seeds=N`` seeds each, default 3; every point is a full run of the chosen dataset and scale):
  lam         loss.lam 0.1..0.9 (the paper's lambda ablation), 9 points x seeds
  temperature model.temperature 1..10 (the combiner's T), 10 points x seeds
  alpha       model.fixed_alpha 0.1..0.9 (Fig 18: alpha frozen instead of trained), 9 points x seeds
  rho_split   loss.rho {0.7, 0.8, 0.9} x model.split_ratio {0.1, 0.2, 0.3} (k = 2/5/7 of 24;
              model.k=-1 so the ratio applies), 9 points x seeds
  xai_method  xai.method ig | saliency
  ig_steps    xai.steps {2, 4, 8} x xai.rule {trapezoid, riemann} (beyond the paper)
  centroids   model.num_centroids {4, 8, 16} (2/3/4-bit indices; beyond the paper)
E.g. ``--config=experiments/configs/paper.py:scale=cpu,sweep=rho_split,seeds=1`` is 9 runs of
~1 h on 2 cores.
"""

import ml_collections

from agilenn_jax import sweep
from agilenn_jax.models.mobilenet import MOBILENETV2_STAGES
from experiments.configs import common

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CPU_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))
SHARED_CIFAR10 = "../shared/datasets/cifar10_train_jpeg.tar.gz"

# What each dataset changes in the cifar10 base.
DATASETS = {
    "cifar10": {},
    "cifar100": dict(
        name="cifar100",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "svhn": dict(
        name="svhn_cropped",
        flip=False,  # a flipped digit is another digit
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
    ),
    "tiny_imagenet": dict(
        source="imagefolder",
        name="tiny_imagenet",
        num_classes=200,
        eval_split="val",  # the val/ folder (Tiny-ImageNet's test labels are not public)
        pad=8,  # 64x64 images: pad-8 random crop
        mean=(0.480, 0.448, 0.398),
        std=(0.277, 0.269, 0.282),
    ),
}
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32, "tiny_imagenet": 64}
SWEEPS = ("lam", "temperature", "alpha", "rho_split", "xai_method", "ig_steps", "centroids")
ARGS = dict(
    dataset=tuple(DATASETS),
    scale=("paper", "cpu", "untrained"),
    remote=("ours", "authors"),
    sweep=("", *SWEEPS),  # get_sweep's grid; get_config ignores it
    seeds=3,  # seeds per sweep point; get_config ignores it
)


def stride_one_second_stage(stages: tuple) -> tuple:
    """The authors' remote: their MobileNetV2 keeps stride 1 in its second stage (24 channels),
    so every later stage runs at twice the resolution (3.7x the FLOPs on a 32x32 map)."""
    return tuple(
        (t, ch, n, 1 if i == 1 else s) for i, (t, ch, n, s) in enumerate(tuple(x) for x in stages)
    )


def base() -> ml_collections.ConfigDict:
    """CIFAR-10 at the paper's scale: every other variant (and quickstart/smoke) edits this."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # agilenn | edge_only | local_only | deepcod | spinn (the paper's baselines; compare.py)
    c.method = "agilenn"
    c.data = dict(
        source="tfds",  # tfds | imagefolder | digits
        name="cifar10",
        path="",  # imagefolder: root/split/class/img directory or a .tar.gz of one
        cache_dir="",  # where an ImageFolder tarball is extracted (default ~/.cache/agilenn_jax)
        source_size=0,  # imagefolder: resize stored images to this size first (0 = keep)
        data_dir="",
        download=True,
        num_classes=10,
        eval_split="test",  # test | val (seeded hold-out of train)
        val_fraction=0.1,
        image_size=96,
        augment=True,
        on_device=False,  # uint8 dataset on the accelerator, augmentation in jitted JAX
        pad=4,
        flip=True,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
    c.model = dict(
        extractor_channels=(32, 24),
        extractor_strides=(3, 1),
        k=5,  # local channels; <= 0 means round(split_ratio * C)
        split_ratio=0.2,
        local_bn=True,
        num_centroids=8,
        quantizer_softness=1.0,
        # > 0: each offloaded channel is multiplied by clip(1 / its running mean, 1, this)
        # before the shared-codebook quantizer (quantizer.ChannelGain; the export folds it into
        # the extractor's output BN); 0: off, as the paper. The XAI terms meet rho partly by
        # shrinking the offloaded channels, which leaves them few of the 8 codes; the gain
        # spreads them back over the codebook. On CIFAR-10 at the CPU budget with lam = 0.5, 8
        # gives +1.4 +- 0.2 points over no gain, higher on each of 5 seeds, at 1.5x the bytes
        # (README "lambda = 0.5 with the gain"). At lam 0.3 it did not lift accuracy,
        # and with the 80% floor (loss.alive_*) the ordering failed on 2 of 5 seeds.
        channel_gain_max=8.0,
        remote_width=1.0,
        remote_stages=MOBILENETV2_STAGES,
        remote_head_channels=1280,
        remote_dropout=0.2,
        temperature=5.0,
        fixed_alpha=-1.0,  # -1: alpha = sigmoid(w / T) is trained; in (0, 1): frozen (Fig 18)
        reference_width=1.0,
        reference_stages=MOBILENETV2_STAGES,
        reference_head_channels=1280,
        depthwise_impl="auto",  # auto: 9-tap MACs on CPU (much faster there), grouped conv else
        dtype="float32",  # compute dtype: float32 | bfloat16 (parameters stay float32)
        reference_arch="mobilenetv2",  # mobilenetv2 (from scratch) | efficientnet_lite0
    )
    c.xai = dict(
        method="ig",  # ig | saliency
        steps=2,
        rule="trapezoid",  # trapezoid (m=2 == authors' code) | riemann | gauss_legendre
        chunk=0,  # IG points per lax.map chunk (memory); 0 = all at once (vmap, fastest)
        remat=False,  # jax.checkpoint each IG point: recompute in the outer gradient
        target="loss",  # loss | logit
        # A channel's importance over H, W: l1 = sum |IG| (the authors' code) | net = |sum IG|
        # (ours before; on CIFAR-10 its cancelling signs left one local channel weak and most
        # held-out samples out of order: README, "CIFAR-10 on CPU")
        aggregate="l1",
        trust_correct_only=True,
        # > 0: the reference takes an SGD step of its own CE on the features every AgileNN step
        # (it follows the extractor); 0: frozen, as the paper.
        reference_lr=0.0,
    )
    c.baseline = dict(  # read only by the baselines (models/baselines.py); AgileNN ignores it
        net_width=1.0,  # edge_only / local_only / spinn: MobileNetV2 width multiplier
        stem_channels=32,  # their stem conv (before the width multiplier, as MobileNetV2's)
        stem_stride=1,  # 1 for 32x32-sized inputs; 2 as ImageNet's MobileNetV2
        split_block=2,  # spinn: inverted-residual blocks on the device before the split
        exit_head=True,  # spinn: an early-exit classifier (GAP + dense) on the device
        exit_weight=0.5,  # spinn: weight of the exit head's CE in the loss
        exit_threshold=0.9,  # spinn: exit on the device when its softmax max reaches this
        rate_weight=0.0,  # deepcod / spinn: loss += rate_weight * estimated bits per symbol
        image_codec="png",  # edge_only: png | lzw | jpeg | webp | raw (serving/image_codec.py)
        image_quality=90,  # edge_only: jpeg / webp quality
    )
    # disorder: channel | element | log (losses.disorder_loss). unit_ce: the loss divided by lam,
    # so CE keeps unit weight and its learning rate whatever lam is (same minimisers as the
    # paper's lam * CE + ...).
    # lam = 1.0 is plain CE: the training step skips IG (the final evaluation still measures it).
    # lam = 0.5 with unit_ce (XAI terms weighted 1, as CE): on CIFAR-10 at the CPU budget it
    # holds skewness >= rho and violations <= 10% on 5 of 5 seeds at plain CE's accuracy
    # (README "lambda = 0.5 with the gain"). At 0.3 (weight 2.33; the default before) skewness
    # overshoots rho from step 100 by shrinking the offloaded channels and the remote NN lags:
    # 1.6 points lower on every seed (both with the gain below). The old 0.8 without unit_ce
    # fell short of rho on 2 of 3 seeds. The paper recommends lam 0.2-0.4 (its Fig 10; at 0.5
    # its skewness, 0.761, was under rho at equal accuracy).
    # disorder_margin / disorder_weight: the ordering hinge asks local channels to lead by this
    # margin, and is weighted by this much (0 and 1 in the paper; losses.agilenn_loss). A margin
    # of 0.05 cut the CIFAR-10 violation rate at the CPU budget from 0.404 +- 0.045 to 0.306 +-
    # 0.047, lower on each of 3 seeds, at equal accuracy (0.522 vs 0.520; README); the paper's
    # hinge is already satisfied at a tie.
    # reference_ce_weight: the frozen reference's CE on the features joins the XAI terms, so the
    # extractor cannot escape them by drifting until the reference is wrong (0 in the paper).
    c.loss = dict(
        lam=0.5,
        rho=0.8,
        disorder="channel",
        unit_ce=True,
        disorder_margin=0.05,
        disorder_weight=1.0,
        reference_ce_weight=0.0,
        # > 0: a k-means term pulls each quantizer centroid to the mean of the offloaded values
        # it codes (losses.codebook_loss; centroids only; 0 in the paper). On CIFAR-10 at the CPU
        # budget the XAI terms squeeze the offloaded channels into [0, 1] while the task-learned
        # centroids stayed over (0, 6); 1.0 spreads them over the data and lifts accuracy from
        # 0.604 +- 0.002 to 0.621 +- 0.005 (3 seeds, README), the objective still met.
        codebook_weight=1.0,
        # > 0: a floor on how often each channel's output BN lets values through the ReLU6 and
        # under its clip at 6 (losses.alive_loss on its gamma, beta; 0 in the paper): sum |IG|
        # gives a constant channel no importance, so the XAI terms meet rho by switching
        # offloaded channels off (4-5 of 19 on CIFAR-10 at the CPU budget), and a flat ReLU6
        # never returns. 0 here: at 0.8 (alive_weight=1, alive_rate=0.8: ~80% of offloaded
        # values non-zero) accuracy rises from 0.621 +- 0.005 to 0.630 +- 0.013, the objective
        # still met on 3 seeds, but the remote NN is sent ~2x the bytes (4,955 vs 2,520 B per
        # sample; plain CE: 0.643 +- 0.007 at 3,872 B), so it is an option, not the default
        # (README, "CIFAR-10 on CPU: an 80% floor on the offloaded channels").
        alive_weight=0.0,
        alive_rate=0.2,  # the floor at each end, as a fraction, if pre-activations are normal
        alive_channels="offloaded",  # offloaded | all
        # with alive_channels=all, the top end of the floor on the local channels: below 6 a
        # ceiling (an option; see the README's "a ceiling on the local channels")
        local_top=6.0,
        # > 0: a ceiling on each local channel's output-BN beta at local_ceiling (mean over the
        # k local channels of max(0, beta - T); losses.ceiling_loss; 0 in the paper). An
        # ablation: the failing local channel ends near the clip, but at 5 the ceiling did not
        # keep seed 4's ordering (README, "the gain without the floor")
        ceiling_weight=0.0,
        local_ceiling=5.0,
    )
    # exclude: extractor channels Algorithm 1 may not keep on the device (an ablation: is the
    # weak local channel of the CIFAR-10 runs a property of that channel or of the slot?)
    c.preselect = dict(enabled=True, num_samples=5000, exclude=())
    c.reference_train = common.sgd(epochs=50)
    c.train = common.sgd(epochs=200)
    c.eval_batch_size = 256
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's config for ``dataset`` at ``scale`` (see the module docstring)."""
    a = common.parse_arg(arg, **ARGS)
    c = base()
    c.data.update(DATASETS[a.dataset])
    if a.scale == "cpu":
        if a.dataset == "cifar10":  # the shared tarball: no network needed, train split only
            c.data.update(source="imagefolder", path=SHARED_CIFAR10, eval_split="val")
        c.data.image_size = NATIVE_SIZE[a.dataset]
        c.model.extractor_strides = (1, 1)
        common.set_networks(c, CPU_STAGES, 256, remote_width=0.5, reference_width=0.5)
        c.preselect.num_samples = 2000
        c.reference_train.epochs = 3
        c.train.epochs = 4
        common.set_optimisation(c, batch_size=128, log_every_steps=50, eval_every_epochs=2)
    if a.remote == "authors":  # stride 1 in the remote's second stage, as the authors' code
        c.model.remote_stages = stride_one_second_stage(c.model.remote_stages)
    if a.scale == "untrained":
        if a.dataset != "cifar10":
            raise ValueError("scale=untrained is defined for dataset=cifar10 (the shared tarball)")
        c.data.update(source="imagefolder", path=SHARED_CIFAR10, eval_split="val")
        c.data.val_fraction = 0.01
        c.reference_train.epochs = 0
        c.train.epochs = 0
        c.preselect.enabled = False
        c.eval_batch_size = 100
    c.lock()
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """The ablation ``sweep=NAME`` (see the module docstring), each point with ``seeds`` seeds."""
    a = common.parse_arg(arg, **ARGS)
    grids = {
        "lam": lambda: sweep.product(**{"loss.lam": [round(0.1 * i, 1) for i in range(1, 10)]}),
        "temperature": lambda: sweep.product(
            **{"model.temperature": [float(t) for t in range(1, 11)]}
        ),
        "alpha": lambda: sweep.product(
            **{"model.fixed_alpha": [round(0.1 * i, 1) for i in range(1, 10)]}
        ),
        "rho_split": lambda: sweep.product(
            **{
                "loss.rho": (0.7, 0.8, 0.9),
                "model.split_ratio": (0.1, 0.2, 0.3),
                "model.k": (-1,),
            }
        ),
        "xai_method": lambda: sweep.product(**{"xai.method": ("ig", "saliency")}),
        "ig_steps": lambda: sweep.product(
            **{"xai.steps": (2, 4, 8), "xai.rule": ("trapezoid", "riemann")}
        ),
        "centroids": lambda: sweep.product(**{"model.num_centroids": (4, 8, 16)}),
    }
    if a.sweep not in grids:
        raise ValueError(f"name a sweep: sweep=one of {list(grids)}")
    return sweep.with_seeds(grids[a.sweep](), range(a.seeds))
