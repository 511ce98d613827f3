"""AgileNN training: reference pre-training, Algorithm-1 pre-selection, joint training, evaluation.

Steps are pure ``train_step(state, batch, rng) -> (state, metrics)`` functions compiled with
``jax.jit`` over a 1-D data-parallel ``Mesh`` of all devices (state replicated, batch sharded on
its leading axis), with the state donated. Every stage checkpoints with orbax and resumes from
its workdir automatically.
"""

from __future__ import annotations

import functools
import json
import logging as pylogging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agilenn_jax import input_pipeline, losses, xai
from agilenn_jax.checkpoint import Checkpointer, CheckpointError
from agilenn_jax.models import AgileNN, ExtractorWithReference, ReferenceNN, split_channels
from agilenn_jax.models.agilenn import count_params, feature_shape

MODES = ("all", "pretrain_reference", "train", "evaluate")
REFERENCE_DIR = "reference"
AGILENN_DIR = "agilenn"


class TrainState(struct.PyTreeNode):
    """Trainable params, BN statistics, optimizer state and the frozen (non-trained) variables."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    frozen: Any
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


# --------------------------------------------------------------------------- models and config


def num_local_channels(config: ml_collections.ConfigDict) -> int:
    m = config.model
    return split_channels(int(m.extractor_channels[-1]), int(m.k), float(m.split_ratio))


def build_agilenn(config: ml_collections.ConfigDict) -> AgileNN:
    m = config.model
    return AgileNN(
        num_classes=config.data.num_classes,
        k=num_local_channels(config),
        extractor_channels=tuple(m.extractor_channels),
        extractor_strides=tuple(m.extractor_strides),
        local_bn=m.local_bn,
        num_centroids=m.num_centroids,
        quantizer_softness=m.quantizer_softness,
        remote_width=m.remote_width,
        remote_stages=tuple(tuple(s) for s in m.remote_stages),
        remote_head_channels=m.remote_head_channels,
        remote_dropout=m.remote_dropout,
        temperature=m.temperature,
        depthwise_impl=m.depthwise_impl,
    )


def build_reference(config: ml_collections.ConfigDict) -> ExtractorWithReference:
    m = config.model
    return ExtractorWithReference(
        num_classes=config.data.num_classes,
        extractor_channels=tuple(m.extractor_channels),
        extractor_strides=tuple(m.extractor_strides),
        width=m.reference_width,
        stages=tuple(tuple(s) for s in m.reference_stages),
        head_channels=m.reference_head_channels,
        dropout=m.remote_dropout,
        depthwise_impl=m.depthwise_impl,
    )


def build_reference_nn(config: ml_collections.ConfigDict) -> ReferenceNN:
    """The reference NN alone (same hyper-parameters as inside ``build_reference``)."""
    m = config.model
    return ReferenceNN(
        config.data.num_classes,
        width=m.reference_width,
        stages=tuple(tuple(s) for s in m.reference_stages),
        head_channels=m.reference_head_channels,
        dropout=m.remote_dropout,
        depthwise_impl=m.depthwise_impl,
    )


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fail before any work on values that would otherwise break deep inside jit."""
    m, x, lo = config.model, config.xai, config.loss
    num_local_channels(config)
    if len(m.extractor_channels) != len(m.extractor_strides):
        raise ValueError("model.extractor_channels and model.extractor_strides differ in length")
    if m.num_centroids < 2 or m.num_centroids > 256:
        raise ValueError(f"model.num_centroids must be in [2, 256], got {m.num_centroids}")
    if m.temperature <= 0:
        raise ValueError(f"model.temperature must be > 0, got {m.temperature}")
    if not 0.0 <= lo.lam <= 1.0:
        raise ValueError(f"loss.lam must be in [0, 1], got {lo.lam}")
    if not 0.0 < lo.rho <= 1.0:
        raise ValueError(f"loss.rho must be in (0, 1], got {lo.rho}")
    if lo.disorder not in losses.DISORDER_MODES:
        raise ValueError(f"loss.disorder must be one of {losses.DISORDER_MODES}")
    if x.method not in xai.METHODS or x.rule not in xai.RULES or x.target not in xai.TARGETS:
        raise ValueError(
            f"xai.method/rule/target must be in {xai.METHODS}/{xai.RULES}/{xai.TARGETS}, got "
            f"{x.method}/{x.rule}/{x.target}"
        )
    for name in ("train", "reference_train"):
        tc = config[name]
        if tc.epochs < 0 or tc.batch_size <= 0 or tc.lr <= 0:
            raise ValueError(f"{name}: epochs >= 0, batch_size > 0 and lr > 0 are required")
        if tc.batch_size % jax.device_count():
            raise ValueError(
                f"{name}.batch_size={tc.batch_size} must be divisible by the "
                f"{jax.device_count()} devices of the data-parallel mesh"
            )


def make_optimizer(tc: ml_collections.ConfigDict, steps_per_epoch: int):
    """SGD + momentum, cosine schedule, decoupled weight decay on kernels only (SGDW)."""
    total = max(1, int(tc.epochs * steps_per_epoch))
    warm = int(tc.warmup_epochs * steps_per_epoch)
    if warm:
        sched = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warm, max(total, warm + 1))
    else:
        sched = optax.cosine_decay_schedule(tc.lr, total)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return optax.chain(
        optax.trace(decay=tc.momentum),
        optax.add_decayed_weights(tc.weight_decay, decay_mask),
        optax.scale_by_learning_rate(sched),
    )


def _init_variables(module, image_size: int, seed: int) -> dict[str, Any]:
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
    return jax.jit(functools.partial(module.init, train=False))(rngs, x)


def _new_state(module, variables, tx, frozen) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        frozen=frozen,
        apply_fn=module.apply,
        tx=tx,
    )


# --------------------------------------------------------------------------- steps


def _apply_grads(state: TrainState, grads, batch_stats) -> TrainState:
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def reference_train_step(state: TrainState, batch: dict, rng: jax.Array):
    """Plain CE step of extractor + reference NN."""

    def loss_fn(params):
        logits, upd = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        ce = jnp.mean(losses.cross_entropy(logits, batch["label"]))
        return ce, (logits, upd["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": _accuracy(logits, batch["label"])}
    return _apply_grads(state, grads, stats), metrics


def reference_logits_fn(reference: ReferenceNN, frozen: dict) -> Callable[[jax.Array], jax.Array]:
    """Frozen reference NN (inference-mode BN) on AgileNN's features.

    Algorithm 1 permutes the extractor's output channels; ``inv_perm`` undoes that before the
    reference, so the reference sees the channel order it was trained on and IG is w.r.t. the
    permuted features directly.
    """
    variables = {"params": frozen["params"], "batch_stats": frozen["batch_stats"]}
    inv_perm = frozen["inv_perm"]
    return lambda f: reference.apply(variables, f[..., inv_perm], train=False)


def _attribute(reference: ReferenceNN, frozen, features, labels, xc: ml_collections.ConfigDict):
    attr, ref_logits = xai.attribute(
        reference_logits_fn(reference, frozen),
        features,
        labels,
        method=xc.method,
        steps=xc.steps,
        rule=xc.rule,
        target=xc.target,
    )
    return xai.channel_importance(attr), ref_logits


def make_agilenn_train_step(config: ml_collections.ConfigDict, use_xai: bool = True):
    """The AgileNN step: forward, inline IG of the frozen reference, loss, grads through IG.

    ``use_xai=False`` gives the plain CE step on the same model (the benchmark's baseline).
    """
    k = num_local_channels(config)
    reference = build_reference_nn(config)
    xc, lc = config.xai, config.loss

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        labels = batch["label"]

        def loss_fn(params):
            out, upd = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            if not use_xai:
                ce = jnp.mean(losses.cross_entropy(out["logits"], labels))
                return ce, (out, upd["batch_stats"], {"ce": ce})
            imp, ref_logits = _attribute(reference, state.frozen, out["features"], labels, xc)
            ref_ok = (jnp.argmax(ref_logits, -1) == labels).astype(jnp.float32)
            trust = ref_ok if xc.trust_correct_only else jnp.ones_like(ref_ok)
            loss, parts = losses.agilenn_loss(
                out["logits"], labels, imp, trust, k, lc.rho, lc.lam, lc.disorder
            )
            parts.update(
                skewness=jnp.mean(jnp.sum(imp[:, :k], -1)),
                violation_rate=jnp.mean(losses.disorder_violations(imp, k)),
                trusted_fraction=jnp.mean(trust),
            )
            return loss, (out, upd["batch_stats"], parts)

        (loss, (out, stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {
            "loss": loss,
            "accuracy": _accuracy(out["logits"], labels),
            "local_accuracy": _accuracy(out["local_logits"], labels),
            "remote_accuracy": _accuracy(out["remote_logits"], labels),
            "alpha": out["alpha"],
            **parts,
        }
        return _apply_grads(state, grads, stats), metrics

    return train_step


def make_agilenn_eval_step(config: ml_collections.ConfigDict):
    """Sums over the real (mask == 1) samples of a batch: accuracies, importance, index counts."""
    k = num_local_channels(config)
    reference = build_reference_nn(config)
    num_centroids = config.model.num_centroids

    def eval_step(state: TrainState, batch: dict) -> dict[str, jax.Array]:
        labels, mask = batch["label"], batch["mask"]
        out = state.apply_fn(state.variables(), batch["image"], train=False)
        imp, ref_logits = _attribute(reference, state.frozen, out["features"], labels, config.xai)
        hit = lambda logits: jnp.sum((jnp.argmax(logits, -1) == labels) * mask)  # noqa: E731
        onehot = jax.nn.one_hot(out["indices"], num_centroids, dtype=jnp.float32)
        counts = jnp.einsum("bhwcl,b->cl", onehot, mask)  # [C - k, L]
        return {
            "count": jnp.sum(mask),
            "correct": hit(out["logits"]),
            "local_correct": hit(out["local_logits"]),
            "remote_correct": hit(out["remote_logits"]),
            "reference_correct": hit(ref_logits),
            "skewness": jnp.sum(jnp.sum(imp[:, :k], -1) * mask),
            "violations": jnp.sum(losses.disorder_violations(imp, k) * mask),
            "importance": jnp.sum(imp * mask[:, None], 0),
            "index_counts": counts,
        }

    return eval_step


def reference_eval_step(state: TrainState, batch: dict) -> dict[str, jax.Array]:
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    correct = (jnp.argmax(logits, -1) == batch["label"]) * batch["mask"]
    return {"count": jnp.sum(batch["mask"]), "correct": jnp.sum(correct)}


# --------------------------------------------------------------------------- parallelism


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def jit_train_step(step_fn, mesh: Mesh):
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(
        step_fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0
    )


def jit_eval_step(step_fn, mesh: Mesh):
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step_fn, in_shardings=(rep, data), out_shardings=rep)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


# --------------------------------------------------------------------------- loops


class Progress:
    """Periodic progress lines with throughput and ETA (logged, so they land in files too)."""

    def __init__(self, name: str, total_steps: int, start_step: int):
        self.name, self.total, self.t0, self.s0 = name, total_steps, time.time(), start_step

    def line(self, step: int, epoch: int, epochs: int, scalars: dict[str, float]) -> str:
        dt = time.time() - self.t0
        rate = (step - self.s0) / dt if dt > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        vals = " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
        pct = 100.0 * step / max(1, self.total)
        return (
            f"[{self.name}] epoch {epoch}/{epochs} step {step}/{self.total} ({pct:.0f}%) "
            f"{rate:.2f} steps/s eta {eta_s} | {vals}"
        )


def _evaluate(eval_fn, state, pipeline, split, batch_size, mesh) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    for batch in pipeline.eval_batches(split, batch_size):
        out = jax.device_get(eval_fn(state, shard_batch(batch, mesh)))
        for key, v in out.items():
            sums[key] = sums.get(key, 0) + np.asarray(v, np.float64)
    return sums


def fit(
    name: str,
    state: TrainState,
    step_fn,
    eval_fn,
    tc: ml_collections.ConfigDict,
    data: input_pipeline.Data,
    pipeline: input_pipeline.Pipeline,
    ckpt: Checkpointer,
    writer,
    mesh: Mesh,
    seed: int,
    eval_batch_size: int,
    meta: dict[str, Any],
) -> tuple[TrainState, bool]:
    """Train ``state`` to ``tc.epochs`` epochs, resuming from ``ckpt``; returns (state, done).

    ``done`` is False when ``tc.stop_after_steps`` ended this invocation early (time-sliced
    jobs); the checkpoint then holds the exact point to continue from.
    """
    steps_per_epoch = _steps_per_epoch(tc, data)
    total = tc.epochs * steps_per_epoch
    jstep, jeval = jit_train_step(step_fn, mesh), jit_eval_step(eval_fn, mesh)
    step = int(state.step)
    progress = Progress(name, total, step)
    base_rng = jax.random.key(seed)
    window: list[dict[str, jax.Array]] = []
    run_steps = 0
    logging.info(
        "[%s] %d steps/epoch, %d epochs, starting at step %d",
        name,
        steps_per_epoch,
        tc.epochs,
        step,
    )

    def flush(epoch: int) -> None:
        if not window:
            return
        host = jax.device_get(window)
        scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        bad = [k for k, v in scalars.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"[{name}] non-finite {bad} at step {step}; the last good checkpoint "
                f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept"
            )
        writer.write_scalars(step, {f"{name}/train/{k}": v for k, v in scalars.items()})
        logging.info(progress.line(step, epoch, tc.epochs, scalars))
        window.clear()

    while step < total:
        epoch, start = divmod(step, steps_per_epoch)
        for batch in pipeline.train_batches(data.train, tc.batch_size, epoch, start):
            rng = jax.random.fold_in(base_rng, step)
            state, metrics = jstep(state, shard_batch(batch, mesh), rng)
            window.append(metrics)
            step += 1
            run_steps += 1
            if run_steps == 1:  # rate and ETA from here on: compilation is not throughput
                jax.block_until_ready(metrics)
                progress = Progress(name, total, step)
            if step % tc.log_every_steps == 0:
                flush(epoch + 1)
            if tc.stop_after_steps > 0 and run_steps >= tc.stop_after_steps and step < total:
                flush(epoch + 1)
                ckpt.save(step, state, meta)
                logging.info(
                    "[%s] stopping after %d steps at step %d (checkpointed)", name, run_steps, step
                )
                return state, False
            if tc.checkpoint_every_steps > 0 and step % tc.checkpoint_every_steps == 0:
                ckpt.save(step, state, meta)
        flush(epoch + 1)
        ckpt.save(step, state, meta)
        if (epoch + 1) % tc.eval_every_epochs == 0 or step >= total:
            sums = _evaluate(jeval, state, pipeline, data.eval, eval_batch_size, mesh)
            acc = float(sums["correct"] / sums["count"])
            writer.write_scalars(step, {f"{name}/{data.eval_name}/accuracy": acc})
            logging.info("[%s] epoch %d %s accuracy %.4f", name, epoch + 1, data.eval_name, acc)
        writer.flush()
    return state, True


# --------------------------------------------------------------------------- stages


def _steps_per_epoch(tc, data) -> int:
    if data is None:  # restoring for inference: the schedule length does not shape the state
        return 1
    n = len(data.train) // tc.batch_size
    if n == 0:
        raise input_pipeline.DatasetError(
            f"batch size {tc.batch_size} exceeds the {len(data.train)} training samples"
        )
    return n


def reference_state_template(config, data, mesh) -> TrainState:
    module = build_reference(config)
    tx = make_optimizer(config.reference_train, _steps_per_epoch(config.reference_train, data))
    variables = _init_variables(module, config.data.image_size, config.seed)
    return replicate(_new_state(module, variables, tx, {}), mesh)


def pretrain_reference(config, data, pipeline, workdir, writer, mesh) -> tuple[TrainState, bool]:
    """Stage 1: extractor + reference NN trained with CE (resumes from workdir/reference)."""
    state = reference_state_template(config, data, mesh)
    ckpt = Checkpointer(os.path.join(workdir, REFERENCE_DIR), config.train.max_to_keep)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)
        logging.info("[reference] resumed from step %d", int(state.step))
    return fit(
        "reference",
        state,
        reference_train_step,
        reference_eval_step,
        config.reference_train,
        data,
        pipeline,
        ckpt,
        writer,
        mesh,
        config.seed,
        config.eval_batch_size,
        {"stage": "reference"},
    )


def load_reference(config, data, workdir, mesh) -> TrainState:
    ckpt = Checkpointer(os.path.join(workdir, REFERENCE_DIR))
    if ckpt.latest_step() is None:
        raise CheckpointError(
            f"no reference checkpoint in {ckpt.directory}: run --mode=pretrain_reference (or "
            "--mode=all) with this workdir first"
        )
    state, _ = ckpt.restore(reference_state_template(config, data, mesh))
    return state


def preselect_channels(
    config, ref_state: TrainState, data, pipeline, mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1: rank channels by how often each is in a sample's top-k importance.

    Returns ``(perm, freq)``: ``perm[j]`` is the extractor channel that moves to position j (the
    k most frequent first), ``freq`` the top-k appearance frequency of each original channel.
    """
    k = num_local_channels(config)
    module = build_reference(config)
    reference = build_reference_nn(config)
    c = int(config.model.extractor_channels[-1])
    ident = {
        "params": ref_state.params["reference"],
        "batch_stats": ref_state.batch_stats["reference"],
        "inv_perm": jnp.arange(c),
    }

    def fn(state, batch):
        f = module.apply(state.variables(), batch["image"], method="features")
        imp, _ = _attribute(reference, ident, f, batch["label"], config.xai)
        top = jax.lax.top_k(imp, k)[1]
        hits = jnp.sum(jax.nn.one_hot(top, c) * batch["mask"][:, None, None], axis=(0, 1))
        return {"hits": hits, "importance": jnp.sum(imp * batch["mask"][:, None], 0)}

    n = min(len(data.train), int(config.preselect.num_samples))
    subset = input_pipeline.Split(data.train.images[:n], data.train.labels[:n])
    sums = _evaluate(
        jit_eval_step(fn, mesh), ref_state, pipeline, subset, config.eval_batch_size, mesh
    )
    freq = sums["hits"] / n
    # Most frequent first; ties broken by mean importance.
    perm = np.lexsort((-sums["importance"], -freq))
    return perm.astype(np.int32), freq


def permute_extractor_outputs(params: dict, batch_stats: dict, perm: np.ndarray, n_blocks: int):
    """Reorder the extractor's output channels: last pointwise kernel and its BN, by ``perm``."""
    params, batch_stats = dict(params), dict(batch_stats)  # new top level; inputs untouched
    pw, bn = f"pw{n_blocks - 1}", f"pw{n_blocks - 1}_bn"
    ex, exs = dict(params["extractor"]), dict(batch_stats["extractor"])
    ex[pw] = {"kernel": ex[pw]["kernel"][..., perm]}
    ex[bn] = {name: v[perm] for name, v in ex[bn].items()}
    exs[bn] = {name: v[perm] for name, v in exs[bn].items()}
    params["extractor"], batch_stats["extractor"] = ex, exs
    return params, batch_stats


def agilenn_state_template(config, data, mesh) -> TrainState:
    module = build_agilenn(config)
    tx = make_optimizer(config.train, _steps_per_epoch(config.train, data))
    variables = _init_variables(module, config.data.image_size, config.seed)
    ref_vars = _init_variables(build_reference(config), config.data.image_size, config.seed)
    c = int(config.model.extractor_channels[-1])
    frozen = {
        "params": ref_vars["params"]["reference"],
        "batch_stats": ref_vars["batch_stats"]["reference"],
        "inv_perm": jnp.arange(c, dtype=jnp.int32),
    }
    return replicate(_new_state(module, variables, tx, frozen), mesh)


def init_agilenn_from_reference(config, ref_state, perm, template) -> TrainState:
    """AgileNN's extractor starts from the pre-trained one (channels permuted); reference frozen."""
    n_blocks = len(config.model.extractor_channels)
    ref_params, ref_stats = permute_extractor_outputs(
        ref_state.params, ref_state.batch_stats, perm, n_blocks
    )
    params = dict(template.params, extractor=ref_params["extractor"])
    stats = dict(template.batch_stats, extractor=ref_stats["extractor"])
    frozen = {
        "params": ref_state.params["reference"],
        "batch_stats": ref_state.batch_stats["reference"],
        "inv_perm": jnp.asarray(np.argsort(perm), jnp.int32),
    }
    return template.replace(
        params=params, batch_stats=stats, opt_state=template.tx.init(params), frozen=frozen
    )


def train_agilenn(config, data, pipeline, workdir, writer, mesh) -> tuple[TrainState, bool, dict]:
    """Stage 2: pre-selection (fresh runs only), then joint training with inline IG."""
    ckpt = Checkpointer(os.path.join(workdir, AGILENN_DIR), config.train.max_to_keep)
    template = agilenn_state_template(config, data, mesh)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(template)
        logging.info("[agilenn] resumed from step %d", int(state.step))
    else:
        ref_state = load_reference(config, data, workdir, mesh)
        c = int(config.model.extractor_channels[-1])
        if config.preselect.enabled:
            perm, freq = preselect_channels(config, ref_state, data, pipeline, mesh)
            logging.info(
                "[agilenn] Algorithm 1 top-k frequencies %s -> order %s",
                np.round(freq, 3).tolist(),
                perm.tolist(),
            )
        else:
            perm, freq = np.arange(c, dtype=np.int32), np.zeros(c)
        state = replicate(init_agilenn_from_reference(config, ref_state, perm, template), mesh)
        meta = {
            "stage": "agilenn",
            "channel_perm": perm.tolist(),
            "topk_frequency": np.asarray(freq).tolist(),
        }
    state, done = fit(
        "agilenn",
        state,
        make_agilenn_train_step(config),
        make_agilenn_eval_step(config),
        config.train,
        data,
        pipeline,
        ckpt,
        writer,
        mesh,
        config.seed,
        config.eval_batch_size,
        meta,
    )
    return state, done, meta


def load_agilenn(config, data, workdir, mesh) -> tuple[TrainState, dict]:
    ckpt = Checkpointer(os.path.join(workdir, AGILENN_DIR))
    if ckpt.latest_step() is None:
        raise CheckpointError(
            f"no AgileNN checkpoint in {ckpt.directory}: train first (--mode=all or --mode=train)"
        )
    return ckpt.restore(agilenn_state_template(config, data, mesh))


# --------------------------------------------------------------------------- results


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def evaluate_agilenn(config, state, data, pipeline, mesh) -> dict[str, Any]:
    """Offline evaluation: accuracies, achieved skewness, violation rate, bitrate proxies."""
    jeval = jit_eval_step(make_agilenn_eval_step(config), mesh)
    s = _evaluate(jeval, state, pipeline, data.eval, config.eval_batch_size, mesh)
    n = s["count"]
    k = num_local_channels(config)
    h, w, c = feature_shape(
        config.data.image_size, config.model.extractor_channels, config.model.extractor_strides
    )
    counts = s["index_counts"]  # [C - k, L]
    per_channel = sum(entropy_bits(row) for row in counts) * h * w
    module = build_agilenn(config)
    params = state.params
    return {
        "eval_split": data.eval_name,
        "eval_samples": int(n),
        "test_accuracy": float(s["correct"] / n),
        "local_only_accuracy": float(s["local_correct"] / n),
        "remote_only_accuracy": float(s["remote_correct"] / n),
        "reference_accuracy": float(s["reference_correct"] / n),
        "achieved_skewness": float(s["skewness"] / n),
        "disorder_violation_rate": float(s["violations"] / n),
        "mean_channel_importance": (s["importance"] / n).round(5).tolist(),
        "alpha": float(jax.nn.sigmoid(params["alpha_logit"] / module.temperature)),
        "k": k,
        "num_channels": c,
        "remote_symbols_per_sample": int(h * w * (c - k)),
        "remote_entropy_bits_per_sample": entropy_bits(counts.sum(0)) * h * w * (c - k),
        "remote_entropy_bits_per_sample_per_channel_model": per_channel,
        "index_histogram": counts.sum(0).astype(np.int64).tolist(),
        "num_params": {
            "extractor": count_params(params["extractor"]),
            "local": count_params(params["local"]),
            "quantizer": count_params(params["quantizer"]),
            "remote": count_params(params["remote"]),
            "combiner": 1,
            "reference": count_params(state.frozen["params"]),
        },
    }


RESULT_ROWS = (
    ("test_accuracy", "accuracy (combined)"),
    ("local_only_accuracy", "local NN only"),
    ("remote_only_accuracy", "remote NN only"),
    ("reference_accuracy", "reference NN (frozen)"),
    ("achieved_skewness", "achieved skewness (rho target)"),
    ("disorder_violation_rate", "disorder violation rate"),
    ("alpha", "alpha"),
    ("remote_symbols_per_sample", "remote symbols / sample"),
    ("remote_entropy_bits_per_sample", "remote entropy bits / sample"),
    ("train_seconds", "train seconds"),
)


def format_results(results: dict[str, Any]) -> str:
    lines = [
        f"AgileNN results ({results.get('eval_split')}, {results.get('eval_samples')} samples)"
    ]
    for key, label in RESULT_ROWS:
        if key in results:
            v = results[key]
            lines.append(f"  {label:<34} {v:.4f}" if isinstance(v, float) else f"  {label:<34} {v}")
    lines.append(f"  {'params':<34} {results.get('num_params')}")
    return "\n".join(lines)


def write_json(path: str, obj: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)  # never leaves a half-written file behind


class _DropLibraryInfo(pylogging.Filter):
    """Orbax logs several INFO lines per save; keep its warnings, drop the chatter."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "all") -> dict[str, Any]:
    """Run ``mode`` in ``workdir`` (resuming whatever is there); returns the results dict."""
    from clu import metric_writers

    quiet_library_logs()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    mesh = make_mesh()
    logging.info("mesh: %d %s device(s)", mesh.size, jax.devices()[0].platform)
    data = input_pipeline.load(config.data, config.seed)
    logging.info("data: %d train / %d %s samples", len(data.train), len(data.eval), data.eval_name)
    pipeline = input_pipeline.Pipeline(config.data, config.seed)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    t0 = time.time()
    try:
        if mode in ("all", "pretrain_reference"):
            _, done = pretrain_reference(config, data, pipeline, workdir, writer, mesh)
            if not done or mode == "pretrain_reference":
                _accumulate_seconds(workdir, time.time() - t0)
                return {"stage": "reference", "complete": done}
        if mode in ("all", "train"):
            state, done, meta = train_agilenn(config, data, pipeline, workdir, writer, mesh)
            seconds = _accumulate_seconds(workdir, time.time() - t0)
            if not done:
                return {"stage": "agilenn", "complete": False}
        else:
            state, meta = load_agilenn(config, data, workdir, mesh)
            seconds = _accumulate_seconds(workdir, 0.0)
        results = evaluate_agilenn(config, state, data, pipeline, mesh)
        results["channel_perm"] = meta.get("channel_perm")
        results["config"] = json.loads(config.to_json_best_effort())
        results["train_seconds"] = seconds
        writer.write_scalars(
            int(state.step),
            {
                f"agilenn/{data.eval_name}/{k}": v
                for k, v in results.items()
                if isinstance(v, float)
            },
        )
        write_json(os.path.join(workdir, "results.json"), results)
        print(format_results(results), flush=True)
        return results
    finally:
        writer.flush()
        writer.close()


def _accumulate_seconds(workdir: str, seconds: float) -> float:
    """Wall-clock training seconds summed over (resumed) invocations of this workdir."""
    path = os.path.join(workdir, "train_seconds.json")
    prev = 0.0
    if os.path.exists(path):
        with open(path) as f:
            prev = float(json.load(f).get("seconds", 0.0))
    if seconds:
        write_json(path, {"seconds": prev + seconds})
    return prev + seconds
