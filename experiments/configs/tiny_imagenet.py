"""AgileNN on Tiny-ImageNet-200 read as an ImageFolder (root/train/<wnid>/*.JPEG, root/val/...).

Evaluates on the official val split (``eval_split="val"``: the ``val/`` folder; without one, a
seeded ``val_fraction`` hold-out of train). Prepare the folder first: flatten
train/<wnid>/images/ into train/<wnid>/, sort val/images/ into val/<wnid>/ by
val_annotations.txt, and remove the unlabelled test/ folder (its images would count as one
more class), then:
    python -m launch.main --config=experiments/configs/tiny_imagenet.py \
        --workdir=/tmp/agilenn_tin --config.data.path=/data/tiny-imagenet-200
Expected runtime: ~12 h on one A100/H100. Expected result: ~55-60% top-1 on val (the paper
reports ImageNet-scale results with a pretrained reference; ours trains it from scratch).
"""

from experiments.configs import cifar10


def get_config():
    c = cifar10.get_config()
    c.data.source = "imagefolder"
    c.data.name = "tiny_imagenet"
    c.data.num_classes = 200
    c.data.eval_split = "val"  # the val/ folder (Tiny-ImageNet's test labels are not public)
    c.data.pad = 8  # 64x64 images: pad-8 random crop
    c.data.mean = (0.480, 0.448, 0.398)
    c.data.std = (0.277, 0.269, 0.282)
    return c
