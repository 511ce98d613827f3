"""Training-batch production: the host tf.data path vs ``data.on_device`` (device_data.py).

    python benchmarks/input_pipeline.py [--config=experiments/configs/paper.py:scale=cpu]
        [--batch_size=0] [--batches=50] [--fake_samples=0] [--modes=host,device]

Prints images/s and ms/batch of each path making global training batches on the mesh (the
host path includes tf.data augmentation and the host-to-device copy), timed over --batches
batches after --warmup, ready on the devices at the end. No training step runs, so this is the
ceiling each path can feed. --fake_samples=N uses N random uint8 images of --fake_size pixels
instead of loading the config's dataset (loading the CIFAR-10 tarball takes minutes on 2 cores).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from agilenn_jax import device_data, input_pipeline  # noqa: E402
from agilenn_jax.training import sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/paper.py:scale=cpu", "Config."
)
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's train one).")
_BATCHES = flags.DEFINE_integer("batches", 50, "Timed batches per path.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (compilation, tf.data start).")
_FAKE = flags.DEFINE_integer("fake_samples", 0, "Random images instead of the dataset (0: load).")
_FAKE_SIZE = flags.DEFINE_integer("fake_size", 32, "Stored size of the --fake_samples images.")
_MODES = flags.DEFINE_list("modes", ["host", "device"], "Which paths to time.")


def _split(config) -> input_pipeline.Split:
    if _FAKE.value:
        rng = np.random.default_rng(0)
        s, n = _FAKE_SIZE.value, _FAKE.value
        images = rng.integers(0, 256, (n, s, s, 3), np.uint8)
        return input_pipeline.Split(images, rng.integers(0, config.data.num_classes, n, np.int32))
    t = time.perf_counter()
    split = input_pipeline.load(config.data, config.seed).train
    print(f"loaded {len(split)} train images {split.images.shape[1:]} in "
          f"{time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip
    return split


def _host(config, split, batch_size, mesh, epoch):
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    for batch in pipe.train_batches(split, batch_size, epoch, 0, sharding.process_shard()):
        yield sharding.shard_batch(batch, mesh)


def _device(config, split, batch_size, mesh, epoch):
    yield from device_data.DeviceData(config.data, config.seed, split, mesh).train_batches(
        batch_size, epoch
    )


def time_path(make, config, split, batch_size, mesh) -> tuple[float, int]:
    """(seconds, batches) for --batches batches after --warmup, over as many epochs as needed."""
    need, warm = _BATCHES.value, _WARMUP.value
    done, outs, t0, epoch = 0, [], None, 0
    while done < warm + need:
        for batch in make(config, split, batch_size, mesh, epoch):
            if done == warm:
                jax.block_until_ready(outs)
                outs, t0 = [], time.perf_counter()
            outs.append(batch)
            done += 1
            if done == warm + need:
                break
        epoch += 1
    jax.block_until_ready(outs)
    return time.perf_counter() - t0, need


def main(argv):
    del argv
    config = _CONFIG.value
    bs = _BATCH.value or config.train.batch_size
    split = _split(config)
    mesh = sharding.make_mesh()
    d = config.data
    print(
        f"{len(split)} images {split.images.shape[1]}px -> {d.image_size}px, batch {bs}, "
        f"augment={d.augment} pad={d.pad} flip={d.flip}, {mesh.size} "
        f"{jax.devices()[0].platform} device(s)"
    )
    paths = {"host": _host, "device": _device}
    for mode in _MODES.value:
        seconds, n = time_path(paths[mode], config, split, bs, mesh)
        print(
            f"{mode:>6}: {n * bs / seconds:10.0f} images/s  {1e3 * seconds / n:8.2f} ms/batch",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
