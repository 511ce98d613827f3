"""Datasets (tfds / ImageFolder / scikit-learn digits) and deterministic tf.data pipelines.

Every source is materialised once as uint8 arrays: train, and the eval split (the dataset's own
test or val/validation split, or a seeded hold-out of train for ``eval_split="val"`` when it has
none). Each epoch's pipeline is then a pure function of (seed, epoch, start batch), so a resumed
run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
from absl import logging

SOURCES = ("tfds", "imagefolder", "digits")
EVAL_SPLITS = ("test", "val")
# The dataset splits that serve each data.eval_split, in order of preference (tfds names its
# validation split "validation"; ImageFolder splits are the folder names).
_EVAL_SPLIT_NAMES = {"test": ("test",), "val": ("val", "validation")}
_CACHED_SPLITS = 4  # Pipeline keeps tf tensors for this many Split objects (train, eval, ...)


class DatasetError(ValueError):
    """A dataset could not be found or read; the message says what to pass instead."""


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass
class Data:
    train: Split
    eval: Split
    eval_name: str  # "test" or "val" (the dataset's val/validation split, or held out of train)
    num_classes: int


@dataclasses.dataclass
class _Source:
    """A dataset before materialisation: its split names and how to read one of them."""

    where: str  # for messages, e.g. "tfds dataset 'cifar10'"
    names: list[str]
    read: Callable[[str], Split]
    num_classes: int


def _tf():
    import tensorflow as tf

    # TF must never grab an accelerator JAX wants; it only feeds the host pipeline.
    tf.config.set_visible_devices([], "GPU")
    return tf


def _holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    if not 0.0 < fraction < 1.0:
        raise DatasetError(
            f"data.val_fraction must be in (0, 1) to hold out a split, got {fraction}"
        )
    perm = np.random.default_rng(seed).permutation(len(split))
    n_val = max(1, int(round(fraction * len(split))))
    val, tr = perm[:n_val], perm[n_val:]
    return Split(split.images[tr], split.labels[tr]), Split(split.images[val], split.labels[val])


def _load_digits() -> _Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, values 0..16
    img = np.repeat(img[..., None], 3, axis=-1)
    train = Split(img, d.target.astype(np.int32))
    return _Source("scikit-learn digits", ["train"], lambda name: train, 10)


def _to_split(ds, tf) -> Split:
    images, labels = [], []
    for img, lab in ds.batch(1024).as_numpy_iterator():
        images.append(img)
        labels.append(lab)
    if not images:
        raise DatasetError("dataset split is empty")
    imgs = np.concatenate(images)
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    return Split(imgs.astype(np.uint8), np.concatenate(labels).astype(np.int32))


def _broken_install(e: ImportError) -> ImportError:
    """``e`` re-raised with a message that blames the install, not the dataset."""
    module = e.name or str(e)
    msg = (
        f"tensorflow_datasets failed to import {module!r} ({e}): the Python environment is "
        "incomplete, the dataset itself was not checked. Reinstall with `pip install -e .` "
        f"(setup.cfg declares what tfds needs) or install the package providing {module!r}."
    )
    cls = ModuleNotFoundError if isinstance(e, ModuleNotFoundError) else ImportError
    return cls(msg, name=e.name, path=e.path)


def _load_tfds(cfg: ml_collections.ConfigDict) -> _Source:
    tf = _tf()
    import tensorflow_datasets as tfds

    loaded, num_classes = {}, 0
    problem = "no prepared 'train' split"
    try:
        loaded, info = tfds.load(
            cfg.name,
            data_dir=cfg.data_dir or None,
            download=bool(cfg.download),
            as_supervised=True,
            with_info=True,
        )
        num_classes = int(info.features["label"].num_classes)
    except ImportError as e:  # a broken install, not a missing dataset: say so.
        raise _broken_install(e) from e
    except Exception as e:  # tfds raises many types; all mean "not available here".
        detail = (str(e).strip().splitlines() or [""])[0]
        detail = detail if len(detail) <= 200 else detail[:199] + "…"
        problem = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        loaded = {}
    if "train" not in loaded:
        raise DatasetError(
            f"tfds dataset {cfg.name!r} is not available (data_dir={cfg.data_dir or 'default'}, "
            f"download={cfg.download}): {problem}. Pass --config.data.data_dir=DIR "
            "holding a prepared copy, or --config.data.source=imagefolder "
            "--config.data.path=ROOT for a root/split/class/img folder."
        )
    return _Source(
        f"tfds dataset {cfg.name!r}",
        list(loaded),
        lambda name: _to_split(loaded[name], tf),
        num_classes,
    )


def _extract(path: str, cache_dir: str) -> str:
    """Extract an ImageFolder tarball once into ``cache_dir``; returns the extracted root."""
    name = os.path.basename(path).split(".tar")[0]
    root = os.path.join(cache_dir, name)
    done = os.path.join(root, ".extracted")
    if not os.path.exists(done):
        os.makedirs(root, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(root, filter="data")
        open(done, "w").close()
    return root


def _load_imagefolder(cfg: ml_collections.ConfigDict) -> _Source:
    path = os.path.expanduser(cfg.path or "")
    if not path or not os.path.exists(path):
        raise DatasetError(
            f"ImageFolder path {path!r} does not exist: pass --config.data.path=ROOT (a "
            "root/split/class/img directory or a .tar.gz of one)"
        )
    if os.path.isfile(path):
        cache = os.path.expanduser(cfg.cache_dir or "~/.cache/agilenn_jax")
        path = _extract(path, cache)
    tf = _tf()
    import tensorflow_datasets as tfds

    try:
        builder = tfds.folder_dataset.ImageFolder(path)
    except ImportError as e:
        raise _broken_install(e) from e
    except Exception as e:
        raise DatasetError(f"cannot read ImageFolder at {path!r}: {e}") from None
    names = list(builder.info.splits.keys())
    if "train" not in names:
        raise DatasetError(f"ImageFolder at {path!r} has splits {names}, needs a 'train' folder")

    def read(name: str) -> Split:
        ds = builder.as_dataset(split=name, as_supervised=True, shuffle_files=False)
        if cfg.source_size:
            s = int(cfg.source_size)
            ds = ds.map(lambda x, y: (tf.cast(tf.image.resize(x, (s, s)), tf.uint8), y))
        return _to_split(ds, tf)

    return _Source(
        f"ImageFolder at {path!r}", names, read, int(builder.info.features["label"].num_classes)
    )


def load(cfg: ml_collections.ConfigDict, seed: int) -> Data:
    """Load ``cfg.source``: its train split and the eval split ``cfg.eval_split`` asks for.

    ``eval_split="test"`` needs the dataset's test split. ``eval_split="val"`` uses its val (or
    tfds ``validation``) split, else a seeded ``val_fraction`` hold-out of train. Only train and
    the chosen eval split are read.
    """
    if cfg.eval_split not in EVAL_SPLITS:
        raise DatasetError(f"data.eval_split must be 'test' or 'val', got {cfg.eval_split!r}")
    if cfg.source == "digits":
        src = _load_digits()
    elif cfg.source == "tfds":
        src = _load_tfds(cfg)
    elif cfg.source == "imagefolder":
        src = _load_imagefolder(cfg)
    else:
        raise DatasetError(f"unknown data.source {cfg.source!r}; expected one of {SOURCES}")
    if cfg.num_classes != src.num_classes:
        raise DatasetError(
            f"config data.num_classes={cfg.num_classes} but the dataset has "
            f"{src.num_classes} classes"
        )
    eval_name = next((n for n in _EVAL_SPLIT_NAMES[cfg.eval_split] if n in src.names), None)
    if eval_name is None and cfg.eval_split == "test":
        raise DatasetError(
            f"{src.where} has no test split (its splits: {sorted(src.names)}). Pass "
            "--config.data.eval_split=val to evaluate on its val split or, without one, on a "
            "seeded --config.data.val_fraction hold-out of train."
        )
    train = src.read("train")
    if eval_name is not None:
        ev = src.read(eval_name)
        logging.info(
            "data: eval_split=%s uses the %r split of %s (%d samples; %d train)",
            cfg.eval_split,
            eval_name,
            src.where,
            len(ev),
            len(train),
        )
        return Data(train, ev, cfg.eval_split, src.num_classes)
    train, ev = _holdout(train, cfg.val_fraction, seed)
    logging.info(
        "data: eval_split=val: %s has no val split (splits: %s); holding out %d of train "
        "(val_fraction=%s, seed=%d; %d train remain)",
        src.where,
        sorted(src.names),
        len(ev),
        cfg.val_fraction,
        seed,
        len(train),
    )
    return Data(train, ev, "val", src.num_classes)


class Pipeline:
    """tf.data pipelines over in-memory uint8 arrays: authors' augmentation, resize, normalise."""

    def __init__(self, cfg: ml_collections.ConfigDict, seed: int):
        self.tf = _tf()
        self.cfg = cfg
        self.seed = int(seed)
        self.mean = np.asarray(cfg.mean, np.float32)
        self.std = np.asarray(cfg.std, np.float32)
        # (split, its images, its labels, tf images, tf labels), most recently used last.
        self._tensors_cache: list[tuple] = []

    def _tensors(self, split: Split):
        """``split``'s images and labels as tf tensors, built once per Split (not per epoch).

        Keyed by the identity of the Split and of its arrays, which are never mutated in place;
        references to the last few splits are held so an id cannot be reused while cached.
        """
        for i, entry in enumerate(self._tensors_cache):
            s, images, labels, tf_images, tf_labels = entry
            if s is split and images is split.images and labels is split.labels:
                self._tensors_cache.append(self._tensors_cache.pop(i))
                return tf_images, tf_labels
        tf_images, tf_labels = self.tf.constant(split.images), self.tf.constant(split.labels)
        entry = (split, split.images, split.labels, tf_images, tf_labels)
        self._tensors_cache = [*self._tensors_cache[-(_CACHED_SPLITS - 1) :], entry]
        return tf_images, tf_labels

    def _preprocess(self, img, seed, augment: bool):
        tf = self.tf
        img = tf.cast(img, tf.float32) / 255.0
        if augment:
            h, w = img.shape[0], img.shape[1]
            p = int(self.cfg.pad)
            if p:
                img = tf.pad(img, [[p, p], [p, p], [0, 0]])
                img = tf.image.stateless_random_crop(img, (h, w, 3), seed=seed)
            if self.cfg.flip:
                img = tf.image.stateless_random_flip_left_right(img, seed=seed + 1)
        s = int(self.cfg.image_size)
        img = tf.image.resize(img, (s, s), method="bilinear")
        return (img - self.mean) / self.std

    def train_batches(
        self,
        split: Split,
        batch_size: int,
        epoch: int,
        start_batch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[dict[str, np.ndarray]]:
        """Epoch ``epoch`` of shuffled, augmented, full batches, starting at ``start_batch``.

        ``shard=(i, n)``: this process's rows i*B/n:(i+1)*B/n of every global batch of
        ``batch_size`` B, and nothing else is read or augmented. The n shards of a batch are
        exactly the rows of the unsharded batch (augmentation is keyed by the global position).
        """
        tf = self.tf
        n_batches = len(split) // batch_size
        if n_batches == 0:
            raise DatasetError(f"batch size {batch_size} exceeds the {len(split)} training samples")
        local = _local_rows(batch_size, shard)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(split))
        pos = np.arange(start_batch * batch_size, n_batches * batch_size, dtype=np.int64)
        pos = pos.reshape(-1, batch_size)[:, local].reshape(-1)
        idx = perm[pos]
        seeds = np.stack([np.full_like(pos, self.seed * 100_003 + epoch), pos], axis=-1)
        images, labels = self._tensors(split)

        def fn(i, s):
            return {
                "image": self._preprocess(tf.gather(images, i), s, bool(self.cfg.augment)),
                "label": tf.gather(labels, i),
            }

        ds = tf.data.Dataset.from_tensor_slices((idx, seeds))
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local.stop - local.start, drop_remainder=True).prefetch(2)
        yield from ds.as_numpy_iterator()

    def eval_batches(
        self, split: Split, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[dict[str, np.ndarray]]:
        """All samples in order, the last batch zero-padded; ``mask`` marks the real ones.

        ``shard=(i, n)``: this process's rows of every global batch, as in ``train_batches``.
        """
        tf = self.tf
        n = len(split)
        padded = -(-n // batch_size) * batch_size
        local = _local_rows(batch_size, shard)
        rows = np.arange(padded).reshape(-1, batch_size)[:, local].reshape(-1)
        mask = (rows < n).astype(np.float32)
        idx = np.minimum(rows, n - 1)
        images, labels = self._tensors(split)

        def fn(i, m):
            img = self._preprocess(tf.gather(images, i), tf.zeros(2, tf.int64), augment=False)
            return {"image": img, "label": tf.gather(labels, i), "mask": m}

        ds = tf.data.Dataset.from_tensor_slices((idx, mask))
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from ds.batch(local.stop - local.start).prefetch(2).as_numpy_iterator()


def _local_rows(batch_size: int, shard: tuple[int, int]) -> slice:
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count or batch_size % count:
        raise ValueError(
            f"cannot split a batch of {batch_size} into shard {index} of {count} equal parts"
        )
    per = batch_size // count
    return slice(index * per, (index + 1) * per)
