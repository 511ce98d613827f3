"""Training and evaluation of the paper's baselines (``config.method`` != agilenn).

One stage, no reference NN and no XAI: CE on the method's prediction, plus (DeepCOD- and
SPINN-style) ``baseline.rate_weight`` times the quantizer's differentiable rate estimate and
(SPINN-style) ``baseline.exit_weight`` times the early-exit head's CE. Checkpoints go to
``workdir/model`` through the same fit loop, resume and metrics as AgileNN's stages.
"""

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metrics

from agilenn_jax import bitrate, input_pipeline, layout, losses
from agilenn_jax.checkpoint import Checkpointer
from agilenn_jax.models import build_model, method_of
from agilenn_jax.models.agilenn import count_params
from agilenn_jax.models.quantizer import collapsed_centroids
from agilenn_jax.serving.image_codec import ImageCodec
from agilenn_jax.training.evaluation import MaskedSum
from agilenn_jax.training.loop import Context, Stage, evaluate, fit, steps_per_epoch
from agilenn_jax.training.optim import make_optimizer
from agilenn_jax.training.sharding import jit_eval_step, replicate
from agilenn_jax.training.state import TrainState, init_variables, new_state
from agilenn_jax.training.steps import accuracy, correct

OFFLOADING = ("deepcod", "spinn")
# AgileNN-only options, (section, field), that a baseline would silently ignore: validate fails
# on any that is set, and the compare configs zero them for a baseline.
AGILENN_ONLY = (
    ("loss", "codebook_weight"),
    ("loss", "alive_weight"),
    ("loss", "ceiling_weight"),
    ("model", "channel_gain_max"),
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Baseline fields, checked before any work (``experiment.validate_config`` calls this)."""
    b = config.baseline
    # fail instead of misreporting
    set_ = [f"{s}.{f}={v}" for s, f in AGILENN_ONLY if (v := config[s].get(f, 0.0))]
    if set_:
        raise ValueError(
            f"{', '.join(set_)}: AgileNN-only options, which method={method_of(config)} "
            "ignores; set them to 0 for a baseline"
        )
    if b.net_width <= 0 or b.stem_channels <= 0 or b.stem_stride not in (1, 2):
        raise ValueError(
            "baseline.net_width and baseline.stem_channels must be > 0 and baseline.stem_stride "
            f"1 or 2, got {b.net_width}, {b.stem_channels}, {b.stem_stride}"
        )
    if b.rate_weight < 0 or b.exit_weight < 0:
        raise ValueError("baseline.rate_weight and baseline.exit_weight must be >= 0")
    if not 0.0 < b.exit_threshold <= 1.0:
        raise ValueError(f"baseline.exit_threshold must be in (0, 1], got {b.exit_threshold}")
    size = int(config.data.image_size)
    try:  # the wire's own checks: format, quality, and an image size the format can hold
        ImageCodec(b.image_codec, (size, size, 3), b.image_quality)
    except ValueError as e:
        raise ValueError(f"baseline.image_codec / baseline.image_quality: {e}") from None
    if method_of(config) == "spinn":  # split_block is checked when the model is set up
        jax.eval_shape(
            lambda: build_model(config).init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
        )


@flax.struct.dataclass
class BaselineTrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")
    ce: metrics.Average.from_output("ce")
    rate_bits: metrics.Average.from_output("rate_bits")  # per symbol (0 when nothing is sent)
    exit_accuracy: metrics.Average.from_output("exit_accuracy")  # spinn's head (else 0)


@flax.struct.dataclass
class BaselineEvalMetrics(metrics.Collection):
    accuracy: metrics.Average.from_output("correct")
    exit_accuracy: metrics.Average.from_output("exit_correct")


@flax.struct.dataclass
class BaselineFinalMetrics(metrics.Collection):
    accuracy: metrics.Average.from_output("correct")
    exit_accuracy: metrics.Average.from_output("exit_correct")
    exit_fraction: metrics.Average.from_output("exits")
    accuracy_with_exit: metrics.Average.from_output("exit_policy_correct")
    index_counts: MaskedSum.from_output("index_counts")  # [C, L] (zeros when nothing is sent)


def make_train_step(config: ml_collections.ConfigDict):
    """``train_step(state, batch, rng) -> (state, metrics)`` for any baseline."""
    b = config.baseline

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
            ce = jnp.mean(losses.cross_entropy(out["logits"], labels))
            zero = jnp.zeros((), jnp.float32)
            rate = losses.rate_bits(out["assignment"]) if "assignment" in out else zero
            loss = ce + b.rate_weight * rate
            exit_acc = zero
            if "local_logits" in out:
                loss = loss + b.exit_weight * jnp.mean(
                    losses.cross_entropy(out["local_logits"], labels)
                )
                exit_acc = accuracy(out["local_logits"], labels)
            parts = dict(ce=ce, rate_bits=rate, exit_accuracy=exit_acc)
            return loss, (out, upd["batch_stats"], parts)

        (loss, (out, stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads, stats)
        return state, BaselineTrainMetrics.single_from_model_output(
            loss=loss, accuracy=accuracy(out["logits"], labels), **parts
        )

    return train_step


def eval_step(state: TrainState, batch: dict) -> BaselineEvalMetrics:
    out = state.apply_fn(state.variables(), batch["image"], train=False)
    labels = batch["label"]
    exit_logits = out.get("local_logits", out["logits"])
    return BaselineEvalMetrics.single_from_model_output(
        correct=correct(out["logits"], labels),
        exit_correct=correct(exit_logits, labels),
        mask=batch["mask"],
    )


def make_final_eval_step(config: ml_collections.ConfigDict):
    """Accuracy, the early-exit policy at ``baseline.exit_threshold``, index histograms."""
    threshold = float(config.baseline.exit_threshold)
    num_centroids = int(config.model.num_centroids)

    def final_step(state: TrainState, batch: dict) -> BaselineFinalMetrics:
        out = state.apply_fn(state.variables(), batch["image"], train=False)
        labels = batch["label"]
        n = labels.shape[0]
        if "local_logits" in out:
            conf = jnp.max(jax.nn.softmax(out["local_logits"]), axis=-1)
            exits = (conf >= threshold).astype(jnp.float32)
            exit_correct = correct(out["local_logits"], labels)
        else:
            exits, exit_correct = jnp.zeros((n,), jnp.float32), correct(out["logits"], labels)
        policy = exits * exit_correct + (1.0 - exits) * correct(out["logits"], labels)
        if "indices" in out:
            counts = jnp.sum(jax.nn.one_hot(out["indices"], num_centroids), axis=(1, 2))
        else:
            counts = jnp.zeros((n, 1, num_centroids), jnp.float32)
        return BaselineFinalMetrics.single_from_model_output(
            correct=correct(out["logits"], labels),
            exit_correct=exit_correct,
            exits=exits,
            exit_policy_correct=policy,
            index_counts=counts,
            mask=batch["mask"],
        )

    return final_step


def state_template(
    config: ml_collections.ConfigDict, data: input_pipeline.Data | None, mesh
) -> TrainState:
    module = build_model(config)
    steps = 1 if data is None else steps_per_epoch(config.train.batch_size, data)
    tx = make_optimizer(config.train, steps)
    variables = init_variables(module, config.data.image_size, config.seed)
    return replicate(new_state(module, variables, tx, {}), mesh)


def train(config: ml_collections.ConfigDict, ctx: Context, workdir: str) -> tuple[TrainState, bool]:
    """The baseline's one stage (resumes from ``workdir/model``)."""
    ckpt = Checkpointer(os.path.join(workdir, layout.MODEL_DIR), config.train.max_to_keep)
    state = state_template(config, ctx.data, ctx.mesh)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)
    stage = Stage(
        name=method_of(config),
        train_step=make_train_step(config),
        eval_step=eval_step,
        optim=config.train,
        checkpointer=ckpt,
        meta={"stage": "model", "method": method_of(config)},
    )
    try:
        return fit(state, stage, ctx)
    finally:
        ckpt.close()


def load(config: ml_collections.ConfigDict, workdir: str, mesh) -> TrainState:
    ckpt = Checkpointer(os.path.join(workdir, layout.MODEL_DIR))
    try:
        step = ckpt.require_latest(method_of(config), layout.TRAIN_FIRST)
        state, _ = ckpt.restore(state_template(config, None, mesh), step)
    finally:
        ckpt.close()
    return state


def evaluate_baseline(
    config: ml_collections.ConfigDict, state: TrainState, ctx: Context
) -> dict[str, Any]:
    """The baseline's final evaluation; keys shared with AgileNN's results mean the same."""
    collected = evaluate(
        jit_eval_step(make_final_eval_step(config), ctx.mesh), state, ctx, ctx.data.eval
    )
    s = {key: np.asarray(v, np.float64) for key, v in collected.compute().items()}
    name = method_of(config)
    res: dict[str, Any] = {
        "method": name,
        "eval_split": ctx.data.eval_name,
        "eval_samples": int(collected.accuracy.count),
        "test_accuracy": float(s["accuracy"]),
        "num_params": {
            part: count_params(tree) for part, tree in jax.device_get(state.params).items()
        },
    }
    if name in OFFLOADING:
        model = build_model(config)
        variables = jax.device_get(state.variables())
        centroids = np.asarray(model.apply(variables, method="centroids"), np.float64)
        size = int(config.data.image_size)
        shape = jax.eval_shape(
            lambda: model.apply(variables, jnp.zeros((1, size, size, 3)), method="device")
        )["indices"].shape[1:]
        counts = s["index_counts"]
        symbols = int(np.prod(shape))
        res.update(
            remote_only_accuracy=float(s["accuracy"]),
            remote_shape=list(shape),
            remote_symbols_per_sample=symbols,
            remote_entropy_bits_per_sample=bitrate.entropy_bits(counts.sum(0)) * symbols,
            remote_entropy_bits_per_sample_per_channel_model=(
                bitrate.per_channel_entropy_bits(counts) * shape[0] * shape[1]
            ),
            centroids=centroids.round(6).tolist(),
            collapsed_centroids=collapsed_centroids(centroids),
        )
    if name == "spinn" and config.baseline.exit_head:
        res.update(
            local_only_accuracy=float(s["exit_accuracy"]),
            exit_threshold=float(config.baseline.exit_threshold),
            exit_fraction=float(s["exit_fraction"]),
            accuracy_with_exit=float(s["accuracy_with_exit"]),
        )
    if name == "local_only":
        res["local_only_accuracy"] = res["test_accuracy"]
    return res
