"""``data.on_device``: the training split kept on the accelerators as uint8, batches made there.

Why: the host path (``input_pipeline.Pipeline``) decodes, augments and resizes every batch with
tf.data on the CPUs and ships it to the devices as float32, which at accelerator speeds can
starve the step. Here the stored uint8 images go to the devices once per run, and one jitted
function turns (epoch, batch) into the global batch where it is consumed: no per-batch copy.

Placement: the split is replicated over the 1-D data-parallel mesh (every device holds all N
images: sharding it would need a cross-device gather for every batch). A batch is built under
``shard_map``: device d makes only rows d*B/D:(d+1)*B/D of the global batch, so the result is
sharded along the batch axis exactly like ``sharding.shard_batch``'s and no device repeats
another's work. Multi-process runs work the same way: every process already holds the whole
split (``input_pipeline.load``) and puts it on its own devices; the batch function is one
global computation over the mesh.

Randomness: ``data_key = fold_in(key(seed), DATA_STREAM)`` (apart from the training step's
``fold_in(key(seed), step)``), ``(perm_key, aug_key) = split(fold_in(data_key, epoch))``.
The epoch's order is ``permutation(perm_key, N)``; the sample at position ``p = batch*B + row``
of that order is cropped and flipped with ``fold_in(aug_key, p)``. A batch is thus a pure
function of (seed, epoch, batch): the same whatever the device count or the step a run resumed
at. It is not the host path's sequence (that uses numpy and tf's stateless RNGs).

Preprocessing equals the host path's: zero-pad ``pad`` pixels and crop back at a uniform
offset in [0, 2*pad] per axis, flip left-right with probability 1/2 (``flip``), scale to [0, 1],
bilinear resize to ``image_size``, normalise. The resize is ``jax.image.resize`` bilinear with
``antialias=False`` at HIGHEST precision: half-pixel centres and edge clamping like
``tf.image.resize(method="bilinear")`` (whose antialias is off too), measured within ~1e-6 of
it (float32 rounding: JAX applies the weights as matrix products, TF per pixel).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agilenn_jax.input_pipeline import DatasetError, Split

try:  # jax >= 0.6
    from jax import shard_map as _shard_map
except ImportError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map

DATA_STREAM = 0x64617461  # "data": keeps the data keys apart from fold_in(key(seed), step)
# The replicated uint8 split may take at most this fraction of a device's memory (where the
# backend reports it; CPU does not): the rest is for the model, its optimiser state and steps.
MAX_MEMORY_FRACTION = 0.5


def _data_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), DATA_STREAM)


def epoch_keys(seed: int, epoch) -> tuple[jax.Array, jax.Array]:
    """(permutation key, augmentation key) of ``epoch``: a pure function of (seed, epoch)."""
    k = jax.random.split(jax.random.fold_in(_data_key(seed), epoch))
    return k[0], k[1]


def augment_one(x: jax.Array, key: jax.Array, pad: int, flip: bool) -> jax.Array:
    """One uint8 [h, w, 3] image: zero-pad by ``pad``, random crop back to h x w, random flip."""
    h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    if pad:
        x = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)))
        off = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
        x = jax.lax.dynamic_slice(x, (off[0], off[1], 0), (h, w, c))
    if flip:
        x = jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)
    return x


def preprocess(images: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """uint8 [B, h, w, 3] -> float32 [B, S, S, 3]: scale, bilinear resize, normalise."""
    x = images.astype(jnp.float32) / 255.0
    s = int(cfg.image_size)
    if x.shape[1:3] != (s, s):
        x = jax.image.resize(
            x,
            (x.shape[0], s, s, x.shape[3]),
            method="bilinear",
            antialias=False,  # tf.image.resize's default; antialiasing only matters downscaling
            precision=jax.lax.Precision.HIGHEST,  # no TF32/bf16 passes on GPU/TPU
        )
    mean = jnp.asarray(cfg.mean, jnp.float32)
    std = jnp.asarray(cfg.std, jnp.float32)
    return (x - mean) / std


def _put_replicated(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """``x`` on every device of ``mesh`` (each process supplies its own devices' copies)."""
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P()), lambda idx: x[idx])


def check_memory(nbytes: int, mesh: Mesh, fraction: float = MAX_MEMORY_FRACTION) -> None:
    """Refuse a split that would take over ``fraction`` of a device's memory (where known)."""
    for d in mesh.local_devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # backends without memory stats (CPU returns None, some raise)
            stats = {}
        limit = stats.get("bytes_limit")
        if limit and nbytes > fraction * limit:
            raise DatasetError(
                f"data.on_device: the uint8 training split needs {nbytes / 2**30:.2f} GiB on "
                f"every device, over {fraction:.0%} of {d}'s {limit / 2**30:.2f} GiB; use "
                "--config.data.on_device=False (the host tf.data pipeline)"
            )


class DeviceData:
    """The training split on the mesh and the jitted functions that make its batches."""

    def __init__(
        self,
        cfg: ml_collections.ConfigDict,
        seed: int,
        split: Split,
        mesh: Mesh,
        memory_fraction: float = MAX_MEMORY_FRACTION,
    ):
        if len(mesh.axis_names) != 1:
            raise ValueError(f"data.on_device needs a 1-D data-parallel mesh, got {mesh}")
        if split.images.dtype != np.uint8 or split.images.ndim != 4:
            raise DatasetError(f"expected uint8 [N, h, w, 3] images, got {split.images.dtype}")
        check_memory(split.images.nbytes + split.labels.nbytes, mesh, memory_fraction)
        self.cfg, self.seed, self.mesh = cfg, int(seed), mesh
        self.axis = mesh.axis_names[0]
        self.num_samples = len(split)
        self.images = _put_replicated(split.images, mesh)
        self.labels = _put_replicated(split.labels.astype(np.int32), mesh)
        n = self.num_samples
        self._permutation = jax.jit(
            lambda epoch: jax.random.permutation(epoch_keys(self.seed, epoch)[0], n),
            out_shardings=NamedSharding(mesh, P()),
        )
        self._batch_fns: dict[int, Callable] = {}
        logging.info(
            "data.on_device: %d uint8 train images %s (%.1f MiB) on each of %d device(s)",
            n,
            split.images.shape[1:],
            split.images.nbytes / 2**20,
            mesh.size,
        )

    def permutation(self, epoch: int) -> jax.Array:
        """The epoch's sample order (int32 [N], replicated), from (seed, epoch) alone."""
        return self._permutation(epoch)

    def batch_fn(self, batch_size: int) -> Callable:
        """Jitted ``(images_u8, labels, perm, epoch, batch) -> {"image", "label"}``, sharded.

        ``batch`` counts batches within the epoch; ``perm`` is ``permutation(epoch)`` (made
        once per epoch, not per batch). Compiled once per batch size.
        """
        if batch_size not in self._batch_fns:
            self._batch_fns[batch_size] = self._make_batch_fn(batch_size)
        return self._batch_fns[batch_size]

    def _make_batch_fn(self, batch_size: int) -> Callable:
        d = self.mesh.size
        if batch_size % d:
            raise ValueError(f"batch size {batch_size} must be divisible by the {d} devices")
        local = batch_size // d
        cfg, seed = self.cfg, self.seed
        pad, flip = int(cfg.pad), bool(cfg.flip)

        def rows(images, labels, perm, epoch, batch):
            pos = batch * batch_size + jax.lax.axis_index(self.axis) * local + jnp.arange(local)
            idx = perm[pos]
            x = images[idx]
            if cfg.augment and (pad or flip):
                aug_key = epoch_keys(seed, epoch)[1]
                keys = jax.vmap(lambda p: jax.random.fold_in(aug_key, p))(pos)
                x = jax.vmap(functools.partial(augment_one, pad=pad, flip=flip))(x, keys)
            return {"image": preprocess(x, cfg), "label": labels[idx]}

        fn = _shard_map(
            rows, mesh=self.mesh, in_specs=(P(), P(), P(), P(), P()), out_specs=P(self.axis)
        )
        # Explicit, so a 1-device mesh too reports P(data) like ``sharding.shard_batch``.
        return jax.jit(fn, out_shardings=NamedSharding(self.mesh, P(self.axis)))

    def batch(self, batch_size: int, epoch: int, index: int, perm=None) -> dict[str, jax.Array]:
        """Global batch ``index`` of epoch ``epoch`` (``perm``: that epoch's, if already made)."""
        perm = self.permutation(epoch) if perm is None else perm
        return self.batch_fn(batch_size)(self.images, self.labels, perm, epoch, index)

    def train_batches(
        self, batch_size: int, epoch: int, start_batch: int = 0
    ) -> Iterator[dict[str, jax.Array]]:
        """Epoch ``epoch``'s full batches from ``start_batch`` on, as global sharded arrays."""
        n_batches = self.num_samples // batch_size
        if n_batches == 0:
            raise DatasetError(
                f"batch size {batch_size} exceeds the {self.num_samples} training samples"
            )
        perm = self.permutation(epoch)
        for i in range(start_batch, n_batches):
            yield self.batch(batch_size, epoch, i, perm)
