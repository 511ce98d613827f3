import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from agilenn_jax import input_pipeline
from experiments.configs import paper

SHARED_CIFAR = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "datasets", "cifar10_train_jpeg.tar.gz"
)


def _cfg(**kw) -> ml_collections.ConfigDict:
    c = paper.get_config().data
    with c.unlocked():
        for k, v in kw.items():
            c[k] = v
    return c


def _make_folder(root, n_per_class=6, size=10, split="train", seed=0):
    """root/split/{cat,dog,frog}/i.png of random images; returns them and their labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, cls in enumerate(("cat", "dog", "frog")):  # ImageFolder sorts the class names
        d = os.path.join(root, split, cls)
        os.makedirs(d)
        for i in range(n_per_class):
            img = rng.integers(0, 255, (size, size, 3), np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{i}.png"))
            images.append(img)
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


def _rows(images: np.ndarray) -> list[bytes]:
    """Images as sorted byte strings: compares two image sets regardless of order."""
    return sorted(img.tobytes() for img in images)


def _labelled(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    return {img.tobytes(): int(lab) for img, lab in zip(images, labels, strict=True)}


def _tfds_metadata(data_dir, name: str, splits: tuple[str, ...], n: int) -> None:
    """Write dataset_info.json for ``name`` with ``splits`` of ``n`` examples under data_dir.

    tfds.testing.mock_data then serves fake examples with these split names (MockPolicy.USE_CODE
    knows no split names, so a load of every split would come back empty).
    """
    builder = tfds.builder(name, data_dir=str(data_dir))
    os.makedirs(builder.data_dir)
    infos = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s in splits]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)


def test_imagefolder_with_seeded_holdout(tmp_path):
    _make_folder(str(tmp_path))
    cfg = _cfg(
        source="imagefolder",
        path=str(tmp_path),
        num_classes=3,
        eval_split="val",
        val_fraction=1 / 3,
        image_size=16,
    )
    a = input_pipeline.load(cfg, seed=1)
    b = input_pipeline.load(cfg, seed=1)
    assert (len(a.train), len(a.eval), a.eval_name) == (12, 6, "val")
    np.testing.assert_array_equal(a.eval.images, b.eval.images)  # seeded, reproducible
    pipe = input_pipeline.Pipeline(cfg, seed=1)
    batch = next(pipe.train_batches(a.train, 4, epoch=0))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    # Resuming mid-epoch yields exactly the batches an uninterrupted epoch yields.
    full = list(pipe.train_batches(a.train, 4, epoch=2))
    resumed = list(pipe.train_batches(a.train, 4, epoch=2, start_batch=1))
    for x, y in zip(full[1:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(full[0]["image"], next(pipe.train_batches(a.train, 4, 3))["image"])


def test_missing_data_errors(tmp_path):
    with pytest.raises(input_pipeline.DatasetError, match="--config.data.path"):
        input_pipeline.load(_cfg(source="imagefolder", path=str(tmp_path / "none")), 0)
    with pytest.raises(input_pipeline.DatasetError, match="data_dir"):
        input_pipeline.load(_cfg(name="cifar10", data_dir=str(tmp_path), download=False), 0)
    _make_folder(str(tmp_path / "f"))
    with pytest.raises(input_pipeline.DatasetError, match="num_classes"):
        input_pipeline.load(_cfg(source="imagefolder", path=str(tmp_path / "f"), num_classes=10), 0)


def test_digits_eval_batches_cover_every_sample_once():
    cfg = _cfg(source="digits", num_classes=10, eval_split="val", val_fraction=0.2, image_size=8)
    data = input_pipeline.load(cfg, 0)
    assert len(data.train) + len(data.eval) == 1797
    batches = list(input_pipeline.Pipeline(cfg, 0).eval_batches(data.eval, 100))
    assert sum(b["mask"].sum() for b in batches) == len(data.eval)
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(labels, data.eval.labels)


def test_imagefolder_uses_its_val_folder(tmp_path):
    root = str(tmp_path)
    train_images, train_labels = _make_folder(root)
    val_images, val_labels = _make_folder(root, n_per_class=2, split="val", seed=1)
    cfg = _cfg(source="imagefolder", path=root, num_classes=3, eval_split="val", image_size=16)
    data = input_pipeline.load(cfg, seed=0)
    assert (len(data.train), len(data.eval), data.eval_name) == (18, 6, "val")
    assert _rows(data.eval.images) == _rows(val_images)  # the val folder, not a hold-out
    assert _rows(data.train.images) == _rows(train_images)  # train untouched
    for got, want in (
        (data.eval, (val_images, val_labels)),
        (data.train, (train_images, train_labels)),
    ):
        assert got.labels.dtype == np.int32  # each image keeps its class folder's label
        assert _labelled(got.images, got.labels) == _labelled(*want)
    # eval_split="test" (the default) needs a test folder; the message names what exists.
    with pytest.raises(input_pipeline.DatasetError, match=r"'train', 'val'.*eval_split=val"):
        input_pipeline.load(_cfg(source="imagefolder", path=root, num_classes=3), 0)


def test_tfds_cifar10_offline_with_mock_data(tmp_path):
    _tfds_metadata(tmp_path, "cifar10", ("train", "test"), n=8)
    cfg = _cfg(data_dir=str(tmp_path))  # the base config: tfds cifar10, eval on test
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=8, policy=policy, data_dir=str(tmp_path)):
        data = input_pipeline.load(cfg, 0)
    assert (data.eval_name, data.num_classes, len(data.train), len(data.eval)) == ("test", 10, 8, 8)
    for split in (data.train, data.eval):
        assert split.images.dtype == np.uint8 and split.images.shape == (8, 32, 32, 3)
        assert split.labels.dtype == np.int32 and split.labels.shape == (8,)
        assert 0 <= split.labels.min() and split.labels.max() < 10
    batch = next(input_pipeline.Pipeline(cfg, 0).train_batches(data.train, 4, epoch=0))
    assert batch["image"].dtype == np.float32
    assert batch["image"].shape == (4, cfg.image_size, cfg.image_size, 3)
    assert batch["label"].shape == (4,)


def test_tfds_validation_split_serves_eval_split_val(tmp_path):
    _tfds_metadata(tmp_path, "cifar10", ("train", "validation"), n=8)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=8, policy=policy, data_dir=str(tmp_path)):
        data = input_pipeline.load(_cfg(data_dir=str(tmp_path), eval_split="val"), 0)
        assert (data.eval_name, len(data.train), len(data.eval)) == ("val", 8, 8)  # no hold-out
        with pytest.raises(input_pipeline.DatasetError, match=r"'train', 'validation'.*=val"):
            input_pipeline.load(_cfg(data_dir=str(tmp_path), eval_split="test"), 0)


def test_tfds_dependencies_are_installed():
    # tfds imports importlib_resources lazily (dataset code paths, checksums) and declares it
    # only for Python < 3.9; setup.cfg must. This reads cifar10's checksums from the package.
    assert tfds.builder("cifar10").url_infos


def test_tfds_broken_install_is_not_reported_as_missing_data(monkeypatch):
    def load(*args, **kwargs):
        raise ModuleNotFoundError(
            "No module named 'importlib_resources'", name="importlib_resources"
        )

    monkeypatch.setattr(tfds, "load", load)
    with pytest.raises(ModuleNotFoundError, match="'importlib_resources'.*pip install") as e:
        input_pipeline.load(_cfg(), 0)
    assert e.value.name == "importlib_resources"


def test_pipeline_builds_tensors_once_per_split(monkeypatch):
    rng = np.random.default_rng(0)
    split = input_pipeline.Split(
        rng.integers(0, 256, (40, 8, 8, 3), np.uint8), np.arange(40, dtype=np.int32)
    )
    pipe = input_pipeline.Pipeline(_cfg(image_size=8), seed=0)
    constant, built = tf.constant, []

    def counting_constant(value, *args, **kwargs):
        if value is split.images or value is split.labels:
            built.append(value)
        return constant(value, *args, **kwargs)

    monkeypatch.setattr(tf, "constant", counting_constant)
    epochs = [
        np.concatenate([b["label"] for b in pipe.train_batches(split, 8, epoch=e)]) for e in (0, 1)
    ]
    evaluated = np.concatenate([b["label"] for b in pipe.eval_batches(split, 16)])
    assert len(built) == 2  # images and labels, once for two epochs and an evaluation
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch still reshuffles
    for labels in (*epochs, evaluated[:40]):
        np.testing.assert_array_equal(np.sort(labels), split.labels)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHARED_CIFAR), reason="../shared CIFAR-10 tarball absent")
def test_shared_cifar10_tarball(tmp_path):
    cfg = _cfg(
        source="imagefolder",
        path=SHARED_CIFAR,
        cache_dir=str(tmp_path),
        eval_split="val",
        val_fraction=0.1,
    )
    data = input_pipeline.load(cfg, 0)
    assert (len(data.train), len(data.eval)) == (45000, 5000)
    assert data.train.images.shape[1:] == (32, 32, 3)
    assert np.bincount(data.train.labels, minlength=10).min() > 4000


def test_process_shards_are_the_rows_of_the_global_batch():
    cfg = _cfg(source="digits", num_classes=10, eval_split="val", val_fraction=0.2, image_size=8)
    data = input_pipeline.load(cfg, 0)
    pipe = input_pipeline.Pipeline(cfg, 3)
    full = list(pipe.train_batches(data.train, 64, epoch=1, start_batch=2))
    parts = [list(pipe.train_batches(data.train, 64, 1, 2, shard=(i, 4))) for i in range(4)]
    assert len(full) == len(parts[0]) and parts[0][0]["image"].shape[0] == 16
    for whole, *pieces in zip(full, *parts, strict=True):
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in pieces]))
    full_eval = list(pipe.eval_batches(data.eval, 100))
    halves = [list(pipe.eval_batches(data.eval, 100, shard=(i, 2))) for i in range(2)]
    for whole, a, b in zip(full_eval, *halves, strict=True):
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([a[key], b[key]]))
    with pytest.raises(ValueError, match="equal parts"):
        next(pipe.train_batches(data.train, 64, 0, shard=(0, 3)))
