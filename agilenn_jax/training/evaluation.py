"""The final evaluation of a trained AgileNN: accuracies, the XAI objective, index statistics.

This is the expensive one (IG of the reference NN on every held-out sample); it runs once at the
end of a run or with ``--mode=evaluate``. Periodic evaluation during training measures accuracy
only (``steps.agilenn_eval_step``).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metrics

from agilenn_jax import bitrate, losses, xai
from agilenn_jax.models import build_agilenn, build_reference_nn, num_local_channels
from agilenn_jax.models.agilenn import count_params, feature_shape
from agilenn_jax.models.quantizer import COLLAPSE_ATOL, collapsed_centroids
from agilenn_jax.training import steps
from agilenn_jax.training.loop import Context, evaluate
from agilenn_jax.training.sharding import jit_eval_step
from agilenn_jax.training.state import TrainState


@flax.struct.dataclass
class MaskedSum(metrics.Metric):
    """Sum over the (unmasked) samples of a per-sample array: histograms, importance vectors."""

    total: jax.Array

    @classmethod
    def from_model_output(
        cls, values: jax.Array, mask: jax.Array | None = None, **_
    ) -> "MaskedSum":
        if mask is not None:
            values = values * mask.reshape(mask.shape + (1,) * (values.ndim - 1))
        return cls(jnp.sum(values, axis=0))

    def merge(self, other: "MaskedSum") -> "MaskedSum":
        return type(self)(self.total + other.total)

    def compute(self) -> jax.Array:
        return self.total


@flax.struct.dataclass
class FinalEvalMetrics(metrics.Collection):
    accuracy: metrics.Average.from_output("correct")
    local_accuracy: metrics.Average.from_output("local_correct")
    remote_accuracy: metrics.Average.from_output("remote_correct")
    reference_accuracy: metrics.Average.from_output("reference_correct")
    skewness: metrics.Average.from_output("skewness")
    violation_rate: metrics.Average.from_output("violations")
    importance: MaskedSum.from_output("importance")  # [C]
    # [3]: samples where the reference is right (IG is trusted there, as in training), and their
    # summed skewness and violations: the objective measured where it was asked to hold.
    trusted: MaskedSum.from_output("trusted")
    index_counts: MaskedSum.from_output("index_counts")  # [C - k, L]
    # [k]: of the violating samples, how many have each local channel as their weakest, and
    # the violations that would remain without the weakest local channel of each sample.
    weakest_local: MaskedSum.from_output("weakest_local")
    violation_rate_but_weakest: metrics.Average.from_output("violations_but_weakest")
    # The objective under each of xai.AGGREGATES, whichever one trained: the two definitions of
    # a channel's importance disagree most on the channels that matter here (xai.py).
    skewness_l1: metrics.Average.from_output("skewness_l1")
    violation_rate_l1: metrics.Average.from_output("violations_l1")
    skewness_net: metrics.Average.from_output("skewness_net")
    violation_rate_net: metrics.Average.from_output("violations_net")


def make_final_eval_step(config: ml_collections.ConfigDict):
    k = num_local_channels(config)
    reference = build_reference_nn(config)
    num_centroids = config.model.num_centroids

    def eval_step(state: TrainState, batch: dict) -> FinalEvalMetrics:
        labels = batch["label"]
        out = state.apply_fn(state.variables(), batch["image"], train=False)
        attr, ref_logits = steps.attribution(
            reference, state.frozen, out["features"], labels, config.xai
        )
        trained = steps.importance_aggregate(config.xai)
        by_aggregate = {a: xai.channel_importance(attr, a) for a in xai.AGGREGATES}
        skew_by = {a: jnp.sum(v[:, :k], -1) for a, v in by_aggregate.items()}
        violations_by = {a: losses.disorder_violations(v, k) for a, v in by_aggregate.items()}
        imp, skew, violations = by_aggregate[trained], skew_by[trained], violations_by[trained]
        onehot = jax.nn.one_hot(out["indices"], num_centroids, dtype=jnp.float32)
        ok = steps.correct(ref_logits, labels)
        weakest, but_weakest = losses.violation_anatomy(imp, k)
        return FinalEvalMetrics.single_from_model_output(
            correct=steps.correct(out["logits"], labels),
            local_correct=steps.correct(out["local_logits"], labels),
            remote_correct=steps.correct(out["remote_logits"], labels),
            reference_correct=ok,
            skewness=skew,
            violations=violations,
            importance=imp,
            trusted=jnp.stack([ok, ok * skew, ok * violations], -1),
            index_counts=jnp.sum(onehot, axis=(1, 2)),  # [B, C - k, L]
            weakest_local=weakest,
            violations_but_weakest=but_weakest,
            **{f"skewness_{a}": v for a, v in skew_by.items()},
            **{f"violations_{a}": v for a, v in violations_by.items()},
            mask=batch["mask"],
        )

    return eval_step


def evaluate_agilenn(
    config: ml_collections.ConfigDict, state: TrainState, ctx: Context
) -> dict[str, Any]:
    """Offline evaluation: accuracies, achieved skewness, violation rate, bitrate proxies."""
    collected = evaluate(
        jit_eval_step(make_final_eval_step(config), ctx.mesh), state, ctx, ctx.data.eval
    )
    s = {key: np.asarray(v, np.float64) for key, v in collected.compute().items()}
    n = int(collected.accuracy.count)
    k = num_local_channels(config)
    h, w, c = feature_shape(
        config.data.image_size, config.model.extractor_channels, config.model.extractor_strides
    )
    counts = s["index_counts"]  # [C - k, L]
    params = state.params
    model = build_agilenn(config)
    centroids = np.asarray(model.apply(state.variables(), method="centroids"), np.float64)
    collapsed = collapsed_centroids(centroids)
    if collapsed:
        logging.warning(
            "centroids collapsed during training (groups within %g: %s): %d of %d levels are "
            "distinct, the rest is wasted code space",
            COLLAPSE_ATOL,
            collapsed,
            len(centroids) - sum(len(g) - 1 for g in collapsed),
            len(centroids),
        )
    return {
        "eval_split": ctx.data.eval_name,
        "eval_samples": n,
        "test_accuracy": float(s["accuracy"]),
        "local_only_accuracy": float(s["local_accuracy"]),
        "remote_only_accuracy": float(s["remote_accuracy"]),
        "reference_accuracy": float(s["reference_accuracy"]),
        "achieved_skewness": float(s["skewness"]),
        "disorder_violation_rate": float(s["violation_rate"]),
        "trusted_skewness": float(s["trusted"][1] / max(s["trusted"][0], 1.0)),
        "trusted_violation_rate": float(s["trusted"][2] / max(s["trusted"][0], 1.0)),
        "importance_aggregate": steps.importance_aggregate(config.xai),
        "skewness_by_aggregate": {a: float(s[f"skewness_{a}"]) for a in xai.AGGREGATES},
        "violation_rate_by_aggregate": {a: float(s[f"violation_rate_{a}"]) for a in xai.AGGREGATES},
        "mean_channel_importance": (s["importance"] / n).round(5).tolist(),
        # Where violations come from: on CIFAR-10 one weak local channel holds most of them.
        "violations_weakest_local_share": (
            s["weakest_local"] / max(float(s["weakest_local"].sum()), 1.0)
        )
        .round(4)
        .tolist(),
        "violation_rate_without_weakest_local": float(s["violation_rate_but_weakest"]),
        "alpha": float(model.apply(state.variables(), method="alpha")),
        "centroids": centroids.round(6).tolist(),
        "collapsed_centroids": collapsed,
        "distinct_centroids": len(centroids) - sum(len(g) - 1 for g in collapsed),
        "k": k,
        "num_channels": c,
        "remote_symbols_per_sample": int(h * w * (c - k)),
        "remote_entropy_bits_per_sample": bitrate.entropy_bits(counts.sum(0)) * h * w * (c - k),
        "remote_entropy_bits_per_sample_per_channel_model": (
            bitrate.per_channel_entropy_bits(counts) * h * w
        ),
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


LABELS = {
    "agilenn": "AgileNN",
    "edge_only": "Edge-only",
    "local_only": "Local-only",
    "deepcod": "DeepCOD-style",
    "spinn": "SPINN-style",
}
RESULT_ROWS = (
    ("test_accuracy", "accuracy (combined)"),
    ("local_only_accuracy", "local NN only"),
    ("remote_only_accuracy", "remote NN only"),
    ("reference_accuracy", "reference NN (frozen)"),
    ("achieved_skewness", "achieved skewness (rho target)"),
    ("disorder_violation_rate", "disorder violation rate"),
    ("trusted_skewness", "skewness (reference right)"),
    ("trusted_violation_rate", "violations (reference right)"),
    ("alpha", "alpha"),
    ("distinct_centroids", "distinct centroids"),
    ("collapsed_centroids", "collapsed centroid groups"),
    ("remote_symbols_per_sample", "remote symbols / sample"),
    ("remote_entropy_bits_per_sample", "remote entropy bits / sample"),
    ("exit_fraction", "early exits (threshold)"),
    ("accuracy_with_exit", "accuracy with early exit"),
    ("train_seconds", "train seconds"),
)


def format_results(results: dict[str, Any]) -> str:
    lines = [
        f"{LABELS.get(results.get('method', 'agilenn'))} results ({results.get('eval_split')}, "
        f"{results.get('eval_samples')} samples)"
    ]
    for key, label in RESULT_ROWS:
        if key in results:
            v = results[key]
            lines.append(f"  {label:<34} {v:.4f}" if isinstance(v, float) else f"  {label:<34} {v}")
    lines.append(f"  {'params':<34} {results.get('num_params')}")
    return "\n".join(lines)
