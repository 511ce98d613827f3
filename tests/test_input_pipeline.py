import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from agilenn_jax import input_pipeline
from experiments.configs import cifar10

SHARED_CIFAR = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "datasets", "cifar10_train_jpeg.tar.gz"
)


def _cfg(**kw) -> ml_collections.ConfigDict:
    c = cifar10.get_config().data
    with c.unlocked():
        for k, v in kw.items():
            c[k] = v
    return c


def _make_folder(root, n_per_class=6, size=10):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "frog"):
        d = os.path.join(root, "train", cls)
        os.makedirs(d)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(
                os.path.join(d, f"{i}.png")
            )


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
