"""AgileNN on CIFAR-10 with the paper's hyper-parameters (the base config; variants override it).

Command (GPU/TPU; data through tfds, downloaded on first use):
    python -m launch.main --config=experiments/configs/cifar10.py --workdir=/tmp/agilenn_cifar10
Expected runtime: ~6-8 h on one A100/H100 (50 reference epochs + 200 AgileNN epochs at 96x96).
Expected result: ~92-94% test accuracy (paper: ~94% with an ImageNet-pretrained reference; ours is
trained from scratch), achieved skewness >= 0.8 with k=5 of 24 channels, 3-bit indices.
"""

import ml_collections

from agilenn_jax.models.mobilenet import MOBILENETV2_STAGES
from experiments.configs.common import sgd

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
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
        remote_width=1.0,
        remote_stages=MOBILENETV2_STAGES,
        remote_head_channels=1280,
        remote_dropout=0.2,
        temperature=5.0,
        reference_width=1.0,
        reference_stages=MOBILENETV2_STAGES,
        reference_head_channels=1280,
        depthwise_impl="auto",  # auto: 9-tap MACs on CPU (much faster there), grouped conv else
    )
    c.xai = dict(
        method="ig",  # ig | saliency
        steps=2,
        rule="trapezoid",  # trapezoid (m=2 == authors' code) | riemann
        target="loss",  # loss | logit
        trust_correct_only=True,
    )
    c.loss = dict(lam=0.8, rho=0.8, disorder="channel")  # disorder: channel | element
    c.preselect = dict(enabled=True, num_samples=5000)
    c.reference_train = sgd(epochs=50)
    c.train = sgd(epochs=200)
    c.eval_batch_size = 256
    c.lock()
    return c
