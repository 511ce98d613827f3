"""The generic fit loop shared by both stages: steps, metrics, progress, checkpoints, evaluation.

Progress lines (steps/s, %, ETA) come from ``clu.periodic_actions.ReportProgress``, metrics are
``clu.metrics`` collections merged on device and written through the clu writer (TensorBoard +
log lines). A run is a pure function of (seed, step): batch order and augmentation depend on
(seed, epoch, batch) and the step RNG is ``fold_in(seed, step)``, so a resumed run matches an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import Mesh

from agilenn_jax import input_pipeline
from agilenn_jax.checkpoint import Checkpointer
from agilenn_jax.device_data import DeviceData
from agilenn_jax.training.sharding import (
    jit_eval_step,
    jit_train_step,
    process_shard,
    shard_batch,
)
from agilenn_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage of one run shares: data, its pipeline, the mesh, the writer."""

    data: input_pipeline.Data
    pipeline: input_pipeline.Pipeline
    mesh: Mesh
    writer: metric_writers.MetricWriter
    seed: int
    eval_batch_size: int
    device_data: DeviceData | None = None  # data.on_device: train batches made on the mesh


@dataclasses.dataclass(frozen=True)
class Stage:
    """One optimisation stage: its steps, its optimiser settings and where it checkpoints."""

    name: str
    train_step: Callable
    eval_step: Callable
    optim: ml_collections.ConfigDict  # epochs, batch_size, log/eval/checkpoint cadence, ...
    checkpointer: Checkpointer
    meta: dict[str, Any]  # saved beside every checkpoint (e.g. Algorithm 1's channel order)


def steps_per_epoch(batch_size: int, data: input_pipeline.Data) -> int:
    n = len(data.train) // batch_size
    if n == 0:
        raise input_pipeline.DatasetError(
            f"batch size {batch_size} exceeds the {len(data.train)} training samples"
        )
    return n


def evaluate(eval_fn: Callable, state: TrainState, ctx: Context, split) -> Any:
    """Merge a jitted ``eval_fn``'s metric collections over every sample of ``split``."""
    total = None
    for batch in ctx.pipeline.eval_batches(split, ctx.eval_batch_size, process_shard()):
        m = eval_fn(state, shard_batch(batch, ctx.mesh))
        total = m if total is None else total.merge(m)
    return total


def train_batches(ctx: Context, batch_size: int, epoch: int, start: int) -> Iterator[dict]:
    """Epoch ``epoch``'s global batches on the mesh from batch ``start`` on.

    Made on the devices from the uint8 split (``data.on_device``), else read by tf.data on the
    host (this process's rows only) and shipped to the devices batch by batch.
    """
    if ctx.device_data is not None:
        return ctx.device_data.train_batches(batch_size, epoch, start)
    batches = ctx.pipeline.train_batches(ctx.data.train, batch_size, epoch, start, process_shard())
    return (shard_batch(batch, ctx.mesh) for batch in batches)


def _own_copy(state: TrainState) -> TrainState:
    """Fresh buffers for an asynchronous save: the next step donates (reuses) the state's."""
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)


def fit(state: TrainState, stage: Stage, ctx: Context) -> tuple[TrainState, bool]:
    """Train ``state`` to ``stage.optim.epochs`` epochs; returns (state, done).

    ``done`` is False when ``optim.stop_after_steps`` ended this invocation early (time-sliced
    jobs); the checkpoint then holds the exact point to continue from.
    """
    tc, name, ckpt, writer = stage.optim, stage.name, stage.checkpointer, ctx.writer
    per_epoch = steps_per_epoch(tc.batch_size, ctx.data)
    total = tc.epochs * per_epoch
    jstep = jit_train_step(stage.train_step, ctx.mesh)
    jeval = jit_eval_step(stage.eval_step, ctx.mesh)
    merge = jax.jit(lambda a, b: a.merge(b))
    step = int(state.step)
    base_rng = jax.random.key(ctx.seed)
    report = periodic_actions.ReportProgress(
        num_train_steps=total, writer=writer, every_steps=tc.log_every_steps, every_secs=None
    )
    logging.info(
        "[%s] %d steps/epoch, %d epochs, starting at step %d", name, per_epoch, tc.epochs, step
    )
    window = None
    run_steps = 0

    def save() -> None:
        flush()  # a non-finite state raises here, before it can become "the last checkpoint"
        ckpt.save(step, _own_copy(state), stage.meta)

    def flush() -> None:
        nonlocal window
        if window is None:
            return
        scalars = {k: float(v) for k, v in window.compute().items()}
        window = None
        bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
        if bad:
            ckpt.wait()
            raise FloatingPointError(
                f"[{name}] non-finite {bad} by step {step}; the last good checkpoint "
                f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept"
            )
        writer.write_scalars(step, {f"{name}/train/{k}": v for k, v in scalars.items()})

    while step < total:
        epoch, start = divmod(step, per_epoch)
        for batch in train_batches(ctx, tc.batch_size, epoch, start):
            rng = jax.random.fold_in(base_rng, step)
            state, m = jstep(state, batch, rng)
            window = m if window is None else merge(window, m)
            step += 1
            run_steps += 1
            report(step)
            if step % tc.log_every_steps == 0:
                flush()
            if tc.stop_after_steps > 0 and run_steps >= tc.stop_after_steps and step < total:
                save()
                ckpt.wait()
                logging.info("[%s] stopped after %d steps at step %d", name, run_steps, step)
                return state, False
            if tc.checkpoint_every_steps > 0 and step % tc.checkpoint_every_steps == 0:
                save()
        if (epoch + 1) % tc.get("checkpoint_every_epochs", 1) == 0 or step >= total:
            save()
        if (epoch + 1) % tc.eval_every_epochs == 0 or step >= total:
            with report.timed("eval"):
                scalars = evaluate(jeval, state, ctx, ctx.data.eval).compute()
            writer.write_scalars(
                step, {f"{name}/{ctx.data.eval_name}/{k}": float(v) for k, v in scalars.items()}
            )
        writer.flush()
    save()  # no-op unless nothing was saved: 0 epochs still leaves a checkpoint (untrained runs)
    ckpt.wait()
    return state, True
