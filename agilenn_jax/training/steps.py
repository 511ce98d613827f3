"""Pure step functions: ``train_step(state, batch, rng) -> (state, metrics)`` and
``eval_step(state, batch) -> metrics``, with metrics as ``clu.metrics`` collections so the loop
merges and averages them without knowing their names.

The AgileNN step computes Integrated Gradients of the frozen reference NN inline and takes
gradients through the attribution (second order), all inside one jitted function.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from clu import metrics

from agilenn_jax import losses, xai
from agilenn_jax.models import build_reference_nn, num_local_channels
from agilenn_jax.models.extractor import output_layer_names
from agilenn_jax.training.state import TrainState

# loss.alive_rate's default: the least fraction of values asked of a channel at each side of
# its ReLU6's flat ends; loss.alive_channels: which channels (the first, offloaded: the k: ones,
# is the default)
ALIVE_RATE = 0.2
ALIVE_CHANNELS = ("offloaded", "all")
# loss.local_top's default: the top end of that floor on the local channels (alive_channels=all)
# is the ReLU6's clip; lower, it is a ceiling that keeps them from climbing towards it
LOCAL_TOP = 6.0
# loss.local_ceiling's default: the ceiling on each local channel's output-BN beta that
# loss.ceiling_weight > 0 turns on (losses.ceiling_loss)
LOCAL_CEILING = 5.0


@flax.struct.dataclass
class ReferenceTrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")


@flax.struct.dataclass
class PlainTrainMetrics(metrics.Collection):
    """The CE-only AgileNN step (the benchmark's baseline)."""

    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")
    alpha: metrics.Average.from_output("alpha")


@flax.struct.dataclass
class AgileNNTrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")
    local_accuracy: metrics.Average.from_output("local_accuracy")
    remote_accuracy: metrics.Average.from_output("remote_accuracy")
    alpha: metrics.Average.from_output("alpha")
    ce: metrics.Average.from_output("ce")
    skew_loss: metrics.Average.from_output("skew_loss")
    disorder_loss: metrics.Average.from_output("disorder_loss")
    skewness: metrics.Average.from_output("skewness")
    violation_rate: metrics.Average.from_output("violation_rate")
    trusted_fraction: metrics.Average.from_output("trusted_fraction")
    reference_accuracy: metrics.Average.from_output("reference_accuracy")  # frozen ref, features
    reference_ce: metrics.Average.from_output("reference_ce")
    codebook_loss: metrics.Average.from_output("codebook_loss")  # weighted; 0 when off
    alive_loss: metrics.Average.from_output("alive_loss")  # weighted; 0 when off
    ceiling_loss: metrics.Average.from_output("ceiling_loss")  # weighted; 0 when off


@flax.struct.dataclass
class ReferenceEvalMetrics(metrics.Collection):
    accuracy: metrics.Accuracy


@flax.struct.dataclass
class AgileNNEvalMetrics(metrics.Collection):
    """Periodic evaluation: accuracies only (no IG), cheap enough to run every few epochs."""

    accuracy: metrics.Average.from_output("correct")
    local_accuracy: metrics.Average.from_output("local_correct")
    remote_accuracy: metrics.Average.from_output("remote_correct")


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample 0/1 correctness, for masked averages."""
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


# --------------------------------------------------------------------------- reference stage


def reference_train_step(
    state: TrainState, batch: dict, rng: jax.Array
) -> tuple[TrainState, ReferenceTrainMetrics]:
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
    m = ReferenceTrainMetrics.single_from_model_output(
        loss=loss, accuracy=accuracy(logits, batch["label"])
    )
    return state.apply_gradients(grads, stats), m


def reference_eval_step(state: TrainState, batch: dict) -> ReferenceEvalMetrics:
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    return ReferenceEvalMetrics.single_from_model_output(
        logits=logits, labels=batch["label"], mask=batch["mask"]
    )


# --------------------------------------------------------------------------- AgileNN stage


def reference_logits_fn(reference: nn.Module, frozen: dict) -> Callable[[jax.Array], jax.Array]:
    """Frozen reference NN (inference-mode BN) on AgileNN's features.

    Algorithm 1 permutes the extractor's output channels; ``inv_perm`` undoes that before the
    reference, so the reference sees the channel order it was trained on and IG is w.r.t. the
    permuted features directly.
    """
    variables = {"params": frozen["params"], "batch_stats": frozen["batch_stats"]}
    inv_perm = frozen["inv_perm"]
    return lambda f: reference.apply(variables, unpermute_channels(f, inv_perm), train=False)


def unpermute_channels(features: jax.Array, inv_perm: jax.Array) -> jax.Array:
    """``features[..., inv_perm]``, as a product with the 0/1 permutation matrix (exact: one
    nonzero per column). ``inv_perm`` is data, so indexing would be a gather, and the
    second-order IG step differentiates it into scatter-adds that XLA:CPU lays out
    channel-major: ~60 ms of copies per CIFAR-10 step against ~2 ms for the product."""
    onehot = jax.nn.one_hot(inv_perm, features.shape[-1], dtype=features.dtype, axis=0)
    return jnp.matmul(features, onehot, precision=jax.lax.Precision.HIGHEST)


def attribution(
    reference: nn.Module,  # ReferenceNN or EfficientNetLite0: apply(v, f) -> logits
    frozen: dict,
    features: jax.Array,
    labels: jax.Array,
    xc: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array]:
    """Attributions [B, H, W, C] of ``features`` for the frozen reference, and its logits."""
    return xai.attribute(
        reference_logits_fn(reference, frozen),
        features,
        labels,
        method=xc.method,
        steps=xc.steps,
        rule=xc.rule,
        target=xc.target,
        chunk=xc.chunk,
        remat=xc.remat,
    )


def importance_aggregate(xc: ml_collections.ConfigDict) -> str:
    """``xai.aggregate``; configs written before it existed measured ``net``."""
    return xc.get("aggregate", "net")


def channel_attribution(
    reference: nn.Module,
    frozen: dict,
    features: jax.Array,
    labels: jax.Array,
    xc: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array]:
    """Per-channel importance [B, C] of ``features`` for the frozen reference, and its logits."""
    attr, ref_logits = attribution(reference, frozen, features, labels, xc)
    return xai.channel_importance(attr, importance_aggregate(xc)), ref_logits


def track_reference(
    reference: nn.Module,
    frozen: dict,
    features: jax.Array,
    labels: jax.Array,
    xc: ml_collections.ConfigDict,
) -> dict:
    """One plain SGD step of the reference NN's CE on the current (stop-gradient) features.

    Why: a frozen reference misreads the features once the extractor moves on (on CIFAR-10 at
    the CPU budget its accuracy on them fell from 0.60 to ~0.3), so the trust mask keeps few
    samples and its IG says little. With ``xai.reference_lr > 0`` it follows the extractor; its
    BN statistics stay frozen, and nothing flows back into AgileNN's parameters.
    """
    f = unpermute_channels(jax.lax.stop_gradient(features), frozen["inv_perm"])

    def ce(p):
        logits = reference.apply(
            {"params": p, "batch_stats": frozen["batch_stats"]}, f, train=False
        )
        return jnp.mean(losses.cross_entropy(logits, labels))

    grads = jax.grad(ce)(frozen["params"])
    lr = xc.reference_lr
    params = jax.tree.map(lambda p, g: p - lr * g.astype(p.dtype), frozen["params"], grads)
    return dict(frozen, params=params)


def make_agilenn_train_step(
    config: ml_collections.ConfigDict, use_xai: bool = True
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, Any]]:
    """The AgileNN step: forward, inline IG of the frozen reference, loss, grads through IG.

    ``use_xai=False`` gives the plain CE step on the same model (the benchmark's baseline).
    """
    k = num_local_channels(config)
    reference = build_reference_nn(config)
    xc, lc = config.xai, config.loss
    output_bn = output_layer_names(len(config.model.extractor_channels))[1]

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
            codebook = 0.0
            if cw := lc.get("codebook_weight", 0.0):
                codebook = cw * losses.codebook_loss(
                    out["quantizer_input"],
                    out["indices"],
                    state.apply_fn({"params": params}, method="centroids"),
                )
            alive = 0.0
            if aw := lc.get("alive_weight", 0.0):
                bn = params["extractor"][output_bn]
                first = 0 if lc.get("alive_channels", ALIVE_CHANNELS[0]) == "all" else k
                top = jnp.full(bn["bias"].shape, 6.0).at[:k].set(lc.get("local_top", LOCAL_TOP))
                alive = aw * losses.alive_loss(
                    bn["scale"][first:],
                    bn["bias"][first:],
                    lc.get("alive_rate", ALIVE_RATE),
                    top[first:],
                )
            ceiling = 0.0
            if cw := lc.get("ceiling_weight", 0.0):
                top = lc.get("local_ceiling", LOCAL_CEILING)
                ceiling = cw * losses.ceiling_loss(params["extractor"][output_bn]["bias"][:k], top)
            if not use_xai:
                ce = jnp.mean(losses.cross_entropy(out["logits"], labels))
                return ce + codebook + alive + ceiling, (out, upd["batch_stats"], {})
            imp, ref_logits = channel_attribution(
                reference, state.frozen, out["features"], labels, xc
            )
            ref_ok = correct(ref_logits, labels)
            trust = ref_ok if xc.trust_correct_only else jnp.ones_like(ref_ok)
            loss, parts = losses.agilenn_loss(
                out["logits"],
                labels,
                imp,
                trust,
                k,
                lc.rho,
                lc.lam,
                lc.disorder,
                lc.get("unit_ce", False),
                lc.get("disorder_margin", 0.0),
                lc.get("disorder_weight", 1.0),
                ref_logits,
                lc.get("reference_ce_weight", 0.0),
            )
            loss = loss + codebook + alive + ceiling
            parts.update(
                codebook_loss=jnp.asarray(codebook, jnp.float32),
                alive_loss=jnp.asarray(alive, jnp.float32),
                ceiling_loss=jnp.asarray(ceiling, jnp.float32),
                skewness=jnp.mean(jnp.sum(imp[:, :k], -1)),
                violation_rate=jnp.mean(losses.disorder_violations(imp, k)),
                trusted_fraction=jnp.mean(trust),
                reference_accuracy=jnp.mean(ref_ok),
            )
            return loss, (out, upd["batch_stats"], parts)

        (loss, (out, stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads, stats)
        if use_xai and xc.get("reference_lr", 0.0) > 0.0:
            state = state.replace(
                frozen=track_reference(reference, state.frozen, out["features"], labels, xc)
            )
        if not use_xai:
            return state, PlainTrainMetrics.single_from_model_output(
                loss=loss, accuracy=accuracy(out["logits"], labels), alpha=out["alpha"]
            )
        return state, AgileNNTrainMetrics.single_from_model_output(
            loss=loss,
            accuracy=accuracy(out["logits"], labels),
            local_accuracy=accuracy(out["local_logits"], labels),
            remote_accuracy=accuracy(out["remote_logits"], labels),
            alpha=out["alpha"],
            **parts,
        )

    return train_step


def agilenn_eval_step(state: TrainState, batch: dict) -> AgileNNEvalMetrics:
    out = state.apply_fn(state.variables(), batch["image"], train=False)
    labels = batch["label"]
    return AgileNNEvalMetrics.single_from_model_output(
        correct=correct(out["logits"], labels),
        local_correct=correct(out["local_logits"], labels),
        remote_correct=correct(out["remote_logits"], labels),
        mask=batch["mask"],
    )
