"""Is the EfficientNet-Lite0 port right? Linear probes and ImageNet labels on real CIFAR-10.

    python benchmarks/reference_probe.py [--train_per_class=200] [--test_per_class=100]
        [--size=128] [--ref_size=64] [--norm=tf|imagenet] [--rows=pretrained --rows=random ...]

Without torch the port cannot be compared with PyTorch's outputs, so it is checked by what only
correct ImageNet weights can do: (1) a logistic-regression probe on the frozen pooled 1280-d
features of real CIFAR-10 images (the shared ImageFolder tarball, resized) must beat the same
probe on a randomly initialised network by a wide margin; (2) the untouched ImageNet classifier
must name an ImageNet class that matches the CIFAR class (airliner for airplane, tabby for cat,
...) far above chance. Rows at ``--ref_size`` (64: the stem leaves the 32x32 map the reference
sees) compare ImageNet's strides with the first stride-2 block at stride 1.

Measured (2 shared CPU cores, seed 0, 2,000 train / 1,000 test images, chance top-5 ~0.098):

    --norm=imagenet     input  blocks see  strides   probe acc  ImageNet top-5 match  seconds
    pretrained            128        64px  1222121       0.669                 0.349     83.3
    random init           128        64px  1222121       0.272                 0.096    104.0
    pretrained             64        32px  1222121       0.532                 0.127     22.8
    pretrained             64        32px  1122121       0.583                 0.066     28.4
    random init            64        32px  1222121       0.265                 0.025     57.9
    --norm=tf: pretrained 128        64px  1222121       0.731                 0.460     52.0

(seconds include compilation and a loaded machine.) ``tf``, the TF-Lite checkpoint's own
preprocessing ((x - 127) / 128), scores higher than ImageNet mean/std: the weights are the TF
ones, and the default here.
"""

import os
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from agilenn_jax.models import efficientnet_lite as eff  # noqa: E402

_DATA = flags.DEFINE_string(
    "data", "../shared/datasets/cifar10_train_jpeg.tar.gz", "CIFAR-10 ImageFolder tarball."
)
_TRAIN = flags.DEFINE_integer("train_per_class", 200, "Probe training images per class.")
_TEST = flags.DEFINE_integer("test_per_class", 100, "Probe test images per class.")
_SIZE = flags.DEFINE_integer("size", 128, "Input size of the ImageNet-style rows.")
_REF_SIZE = flags.DEFINE_integer("ref_size", 64, "Input size whose stem output is 32x32.")
_NORM = flags.DEFINE_enum(
    "norm", "tf", ["tf", "imagenet"], "TF-Lite's (x-127)/128 (the checkpoint's), or ImageNet's."
)
_SEED = flags.DEFINE_integer("seed", 0, "Random-init seed.")
ROWS = ("pretrained", "random", "pretrained_ref", "pretrained_ref_stride1", "random_ref")
_ROWS = flags.DEFINE_multi_enum(
    "rows", list(ROWS), ROWS, "Rows to run (_ref: at --ref_size; stride1: block 1 at stride 1)."
)

NORMS = {
    "imagenet": (np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255),
    "tf": (np.full(3, 127.0), np.full(3, 128.0)),
}
# ImageNet-1k class indices that match each CIFAR-10 class (folder names, sorted).
IMAGENET_MATCH = {
    "airplane": [403, 404, 405, 895, 908],
    "automobile": [407, 436, 468, 511, 609, 627, 656, 661, 717, 751, 817],
    "bird": [*range(7, 25), *range(80, 101), *range(127, 147)],
    "cat": [281, 282, 283, 284, 285],
    "deer": [350, 351, 352, 353],
    "dog": list(range(151, 269)),
    "frog": [30, 31, 32],
    "horse": [339, 603],
    "ship": [403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914],
    "truck": [555, 569, 675, 717, 734, 864, 867],
}


def load_cifar(path: str, per_class: int) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """The first ``per_class`` images of each class folder, in one pass over the tarball."""
    found: dict[str, list[Image.Image]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or not member.name.endswith(".jpg") or len(parts) < 2:
                continue
            imgs = found.setdefault(parts[-2], [])
            if len(imgs) < per_class:
                with Image.open(tar.extractfile(member)) as im:
                    imgs.append(im.convert("RGB"))
    classes = sorted(found)
    images = [im for c in classes for im in found[c]]
    labels = np.repeat(np.arange(len(classes)), [len(found[c]) for c in classes])
    return images, labels, classes


def preprocess(images: list[Image.Image], size: int, norm: str) -> np.ndarray:
    mean, std = NORMS[norm]
    x = np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in images])
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)


def forward(module, variables, x: np.ndarray, batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, ImageNet logits) of every image, jitted, in batches."""

    @jax.jit
    def fn(v, xb):
        logits, inter = module.apply(v, xb, mutable=["intermediates"])
        return inter["intermediates"]["pooled"][0], logits

    feats, logits = [], []
    for i in range(0, len(x), batch):
        f, lg = fn(variables, jnp.asarray(x[i : i + batch]))
        feats.append(np.asarray(f))
        logits.append(np.asarray(lg))
    return np.concatenate(feats), np.concatenate(logits)


def probe(feats: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    scaler = StandardScaler().fit(feats[train])
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats[train]), labels[train])
    return float(clf.score(scaler.transform(feats[~train]), labels[~train]))


def imagenet_match(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> float:
    """Fraction of images whose ImageNet top-5 holds a class matching their CIFAR class."""
    top5 = np.argsort(-logits, axis=1)[:, :5]
    hits = [
        bool(set(t) & set(IMAGENET_MATCH[classes[y]])) for t, y in zip(top5, labels, strict=True)
    ]
    return float(np.mean(hits))


def main(argv):
    del argv
    t = time.perf_counter()
    per_class = _TRAIN.value + _TEST.value
    images, labels, classes = load_cifar(_DATA.value, per_class)
    train = np.tile(np.arange(per_class) < _TRAIN.value, len(classes))
    print(f"{len(images)} images of {classes} loaded in {time.perf_counter() - t:.1f} s")
    chance = np.mean(
        [1 - (1 - len(IMAGENET_MATCH[c]) / 1000) ** 5 for c in classes]
    )  # five uniform guesses
    base = eff.EfficientNetLite0(1000, with_stem=True)
    init = jax.jit(base.init)(jax.random.key(_SEED.value), jnp.zeros((1, 64, 64, 3)))
    pretrained = eff.load_pretrained(init)
    stride1 = list(s for *_, s in eff.LITE0_STAGES)
    stride1[1] = 1
    rows = {
        "pretrained": ("pretrained", _SIZE.value, None, pretrained),
        "random": ("random init", _SIZE.value, None, init),
        "pretrained_ref": ("pretrained", _REF_SIZE.value, None, pretrained),
        "pretrained_ref_stride1": ("pretrained", _REF_SIZE.value, tuple(stride1), pretrained),
        "random_ref": ("random init", _REF_SIZE.value, None, init),
    }
    print(f"\nnorm={_NORM.value}, probe on {train.sum()} train / {(~train).sum()} test images")
    print(f"ImageNet top-5 match by chance ~{chance:.3f}\n")
    header = f"{'weights':12s} {'input':>5s} {'blocks see':>10s} {'strides':>16s}"
    print(f"{header} {'probe acc':>9s} {'IN top-5':>8s} {'seconds':>7s}")
    x_cache: dict[int, np.ndarray] = {}
    for name, size, strides, variables in (rows[r] for r in _ROWS.value):
        t = time.perf_counter()
        if size not in x_cache:
            x_cache[size] = preprocess(images, size, _NORM.value)
        module = eff.EfficientNetLite0(1000, with_stem=True, strides=strides)
        feats, logits = forward(module, variables, x_cache[size])
        acc = probe(feats, labels, train)
        match = imagenet_match(logits[~train], labels[~train], classes)
        s = "".join(map(str, strides or [s for *_, s in eff.LITE0_STAGES]))
        print(
            f"{name:12s} {size:5d} {size // 2:>7d}px {s:>16s} {acc:9.3f} {match:8.3f} "
            f"{time.perf_counter() - t:7.1f}"
        )


if __name__ == "__main__":
    app.run(main)
