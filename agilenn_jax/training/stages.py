"""The two training stages and the hand-over between them (Algorithm 1).

1. ``pretrain_reference``: extractor + reference NN with CE (``workdir/reference``).
2. ``train_agilenn``: on a fresh run, rank channels by top-k IG frequency (Algorithm 1), permute
   the pre-trained extractor's output channels so those come first, freeze the reference, then
   train AgileNN jointly (``workdir/agilenn``). A rerun resumes whichever stage is unfinished.
"""

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metrics

from agilenn_jax import input_pipeline, layout
from agilenn_jax.checkpoint import Checkpointer
from agilenn_jax.models import (
    FeatureExtractor,
    build_agilenn,
    build_reference,
    build_reference_nn,
    load_pretrained_reference,
    num_local_channels,
)
from agilenn_jax.training import evaluation, steps
from agilenn_jax.training.loop import Context, Stage, evaluate, fit, steps_per_epoch
from agilenn_jax.training.optim import make_optimizer
from agilenn_jax.training.sharding import jit_eval_step, replicate
from agilenn_jax.training.state import TrainState, init_variables, new_state


def _schedule_steps(tc: ml_collections.ConfigDict, data: input_pipeline.Data | None) -> int:
    # Restoring a finished run for evaluation: the schedule's length does not shape the state.
    return 1 if data is None else steps_per_epoch(tc.batch_size, data)


# --------------------------------------------------------------------------- stage 1


def reference_state_template(
    config: ml_collections.ConfigDict,
    data: input_pipeline.Data | None,
    mesh,
    pretrained: bool = False,
) -> TrainState:
    """The stage-1 state; ``pretrained`` loads the reference's pretrained weights (a fresh run
    of an ``efficientnet_lite0`` reference; a restore overwrites them anyway)."""
    module = build_reference(config)
    tx = make_optimizer(config.reference_train, _schedule_steps(config.reference_train, data))
    variables = init_variables(module, config.data.image_size, config.seed)
    if pretrained:
        loaded = load_pretrained_reference(config, variables)
        if loaded is not variables:
            logging.info("[reference] %s starts from ImageNet weights", config.model.reference_arch)
        variables = loaded
    return replicate(new_state(module, variables, tx, {}), mesh)


def pretrain_reference(
    config: ml_collections.ConfigDict, ctx: Context, workdir: str
) -> tuple[TrainState, bool]:
    """Stage 1: extractor + reference NN trained with CE (resumes from workdir/reference)."""
    ckpt = Checkpointer(
        os.path.join(workdir, layout.REFERENCE_DIR), config.reference_train.max_to_keep
    )
    fresh = ckpt.latest_step() is None
    state = reference_state_template(config, ctx.data, ctx.mesh, pretrained=fresh)
    if not fresh:
        state, _ = ckpt.restore(state)
        logging.info("[reference] resumed from step %d", int(state.step))
    stage = Stage(
        name="reference",
        train_step=steps.reference_train_step,
        eval_step=steps.reference_eval_step,
        optim=config.reference_train,
        checkpointer=ckpt,
        meta={"stage": "reference"},
    )
    try:
        return fit(state, stage, ctx)
    finally:
        ckpt.close()


def load_reference(
    config: ml_collections.ConfigDict, data: input_pipeline.Data | None, workdir: str, mesh
) -> TrainState:
    ckpt = Checkpointer(os.path.join(workdir, layout.REFERENCE_DIR))
    step = ckpt.require_latest(
        "reference", "run --mode=pretrain_reference (or --mode=all) with this workdir first"
    )
    state, _ = ckpt.restore(reference_state_template(config, data, mesh), step)
    return state


# --------------------------------------------------------------------------- Algorithm 1


@flax.struct.dataclass
class PreselectMetrics(metrics.Collection):
    hits: evaluation.MaskedSum.from_output("hits")  # [C] top-k appearances per channel
    importance: evaluation.MaskedSum.from_output("importance")  # [C] summed importance


def preselect_channels(
    config: ml_collections.ConfigDict, ref_state: TrainState, ctx: Context
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1: rank channels by how often each is in a sample's top-k importance.

    Returns ``(perm, freq)``: ``perm[j]`` is the extractor channel that moves to position j (the
    k most frequent first), ``freq`` the top-k appearance frequency of each original channel.
    """
    k = num_local_channels(config)
    module = build_reference(config)
    reference = build_reference_nn(config)
    c = int(config.model.extractor_channels[-1])
    # The frozen reference in identity channel order rides in the state (an argument, not a
    # closed-over constant: multi-host jit cannot close over arrays that span processes).
    ident = {
        "params": ref_state.params["reference"],
        "batch_stats": ref_state.batch_stats["reference"],
        "inv_perm": replicate(jnp.arange(c), ctx.mesh),
    }

    def fn(state, batch):
        f = module.apply(state.variables(), batch["image"], method="features")
        imp, _ = steps.channel_attribution(reference, state.frozen, f, batch["label"], config.xai)
        top = jax.lax.top_k(imp, k)[1]
        return PreselectMetrics.single_from_model_output(
            hits=jnp.sum(jax.nn.one_hot(top, c), axis=1), importance=imp, mask=batch["mask"]
        )

    n = min(len(ctx.data.train), int(config.preselect.num_samples))
    subset = input_pipeline.Split(ctx.data.train.images[:n], ctx.data.train.labels[:n])
    sums = evaluate(jit_eval_step(fn, ctx.mesh), ref_state.replace(frozen=ident), ctx, subset)
    sums = sums.compute()
    freq = np.asarray(sums["hits"], np.float64) / n
    # Most frequent first; ties broken by mean importance; excluded channels last.
    excluded = np.isin(np.arange(c), np.asarray(config.preselect.get("exclude", ()), int))
    perm = np.lexsort((-np.asarray(sums["importance"]), -freq, excluded))
    return perm.astype(np.int32), freq


def init_agilenn_from_reference(
    config: ml_collections.ConfigDict, ref_state: TrainState, perm: np.ndarray, template
) -> TrainState:
    """AgileNN's extractor starts from the pre-trained one (channels permuted); reference frozen."""
    extractor = FeatureExtractor(
        tuple(config.model.extractor_channels), tuple(config.model.extractor_strides)
    )
    ex = extractor.permute_output_channels(
        {
            "params": ref_state.params["extractor"],
            "batch_stats": ref_state.batch_stats["extractor"],
        },
        perm,
    )
    params = dict(template.params, extractor=ex["params"])
    stats = dict(template.batch_stats, extractor=ex["batch_stats"])
    frozen = {
        "params": ref_state.params["reference"],
        "batch_stats": ref_state.batch_stats["reference"],
        "inv_perm": jnp.asarray(np.argsort(perm), jnp.int32),
    }
    return template.replace(
        params=params, batch_stats=stats, opt_state=template.tx.init(params), frozen=frozen
    )


# --------------------------------------------------------------------------- stage 2


def agilenn_state_template(
    config: ml_collections.ConfigDict, data: input_pipeline.Data | None, mesh
) -> TrainState:
    module = build_agilenn(config)
    tx = make_optimizer(config.train, _schedule_steps(config.train, data))
    variables = init_variables(module, config.data.image_size, config.seed)
    ref_vars = init_variables(build_reference(config), config.data.image_size, config.seed)
    c = int(config.model.extractor_channels[-1])
    frozen = {
        "params": ref_vars["params"]["reference"],
        "batch_stats": ref_vars["batch_stats"]["reference"],
        "inv_perm": jnp.arange(c, dtype=jnp.int32),
    }
    return replicate(new_state(module, variables, tx, frozen), mesh)


def train_agilenn(
    config: ml_collections.ConfigDict, ctx: Context, workdir: str
) -> tuple[TrainState, bool, dict[str, Any]]:
    """Stage 2: pre-selection (fresh runs only), then joint training with inline IG."""
    ckpt = Checkpointer(os.path.join(workdir, layout.AGILENN_DIR), config.train.max_to_keep)
    template = agilenn_state_template(config, ctx.data, ctx.mesh)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(template)
        logging.info("[agilenn] resumed from step %d", int(state.step))
    else:
        ref_state = load_reference(config, ctx.data, workdir, ctx.mesh)
        c = int(config.model.extractor_channels[-1])
        if config.preselect.enabled:
            perm, freq = preselect_channels(config, ref_state, ctx)
            logging.info(
                "[agilenn] Algorithm 1 top-k frequencies %s -> order %s",
                np.round(freq, 3).tolist(),
                perm.tolist(),
            )
        else:
            perm, freq = np.arange(c, dtype=np.int32), np.zeros(c)
        state = replicate(init_agilenn_from_reference(config, ref_state, perm, template), ctx.mesh)
        meta = {
            "stage": "agilenn",
            "channel_perm": perm.tolist(),
            "topk_frequency": np.asarray(freq).tolist(),
        }
    stage = Stage(
        name="agilenn",
        # lam = 1 weighs the XAI terms by 0: plain CE, without paying for IG every step.
        train_step=steps.make_agilenn_train_step(config, use_xai=config.loss.lam < 1.0),
        eval_step=steps.agilenn_eval_step,
        optim=config.train,
        checkpointer=ckpt,
        meta=meta,
    )
    try:
        state, done = fit(state, stage, ctx)
    finally:
        ckpt.close()
    return state, done, meta


def load_agilenn(
    config: ml_collections.ConfigDict, data: input_pipeline.Data | None, workdir: str, mesh
) -> tuple[TrainState, dict[str, Any]]:
    """The whole AgileNN train state (optimiser included), e.g. to evaluate or resume."""
    ckpt = Checkpointer(os.path.join(workdir, layout.AGILENN_DIR))
    step = ckpt.require_latest("AgileNN", layout.TRAIN_FIRST)
    return ckpt.restore(agilenn_state_template(config, data, mesh), step)
