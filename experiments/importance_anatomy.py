"""Why a local channel is weak: per-channel IG anatomy of a trained AgileNN on its held-out split.

    python experiments/importance_anatomy.py WORKDIR

Prints, for the k local channels and the offloaded ones, the mean importance under both
measures (``xai.AGGREGATES``), how much of each channel's attribution cancels over H x W
(|sum IG| / sum |IG|: 1 = one sign, 0 = cancels), its activations, and the same on the samples
where the weakest local channel causes a violation; then the offloaded channels as the remote NN
sees them: dead channels (mean activation < 0.001), each one's output-BN beta / |gamma| (the
quantity ``loss.alive_weight`` keeps above a floor), the quantizer's per-channel gain if the run has
one, each channel's code entropy, the centroids and the most used code's share.
README "CIFAR-10 on CPU" quotes it for the 4-epoch runs. ~1 min on 2 cores for 5,000 CIFAR-10
samples.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agilenn_jax import bitrate, input_pipeline, layout, losses, xai  # noqa: E402
from agilenn_jax.models import build_reference_nn, num_local_channels  # noqa: E402
from agilenn_jax.models.extractor import output_layer_names  # noqa: E402
from agilenn_jax.models.quantizer import channel_gain  # noqa: E402
from agilenn_jax.training import stages, steps  # noqa: E402
from agilenn_jax.training.sharding import make_mesh  # noqa: E402


def collect(workdir: str) -> tuple[dict[str, np.ndarray], int, str]:
    """Per-sample, per-channel statistics over the run's held-out split, k, the trained measure."""
    cfg = layout.read_config(workdir)
    data = input_pipeline.load(cfg.data, cfg.seed)
    state, _ = stages.load_agilenn(cfg, data, workdir, make_mesh())
    reference = build_reference_nn(cfg)

    cent = state.apply_fn(state.variables(), method="centroids")
    bn_name = output_layer_names(len(cfg.model.extractor_channels))[1]
    bn = jax.device_get(state.params["extractor"][bn_name])

    @jax.jit
    def stats(state, images, labels):
        out = state.apply_fn(state.variables(), images, train=False)
        x = out["features"]
        attr, logits = steps.attribution(reference, state.frozen, x, labels, cfg.xai)
        hw = (1, 2)
        return {
            **{a: xai.channel_importance(attr, a) for a in xai.AGGREGATES},
            "signed": jnp.sum(attr, hw),
            "magnitude": jnp.sum(jnp.abs(attr), hw),
            "activation": jnp.mean(x, hw),
            "zeros": jnp.mean(x == 0, hw),
            "reference_right": steps.correct(logits, labels),
            "code_counts": jnp.sum(
                jax.nn.one_hot(out["indices"], cent.shape[0], dtype=jnp.int32), (1, 2)
            ),
        }

    rows = []
    pipeline = input_pipeline.Pipeline(cfg.data, cfg.seed)
    for b in pipeline.eval_batches(data.eval, int(cfg.eval_batch_size)):
        out = jax.device_get(stats(state, jnp.asarray(b["image"]), jnp.asarray(b["label"])))
        keep = np.asarray(b["mask"]).astype(bool)
        rows.append({key: np.asarray(v)[keep] for key, v in out.items()})
    stats = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    stats["centroids"] = np.asarray(jax.device_get(cent))
    stats["bn_ratio"] = np.asarray(bn["bias"]) / np.maximum(np.abs(np.asarray(bn["scale"])), 1e-12)
    if "gain" in state.batch_stats:  # model.channel_gain_max: the quantizer's per-channel gain
        mean = state.batch_stats["gain"]["mean"]
        stats["gain"] = np.asarray(channel_gain(mean, float(cfg.model.channel_gain_max)))
    return stats, num_local_channels(cfg), steps.importance_aggregate(cfg.xai)


def report(r: dict[str, np.ndarray], k: int, trained: str) -> None:
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    cancel = np.abs(r["signed"]) / np.maximum(r["magnitude"], 1e-12)
    print(f"{len(r['l1'])} samples, k = {k}, trained with xai.aggregate={trained}")
    print(f"reference right: {r['reference_right'].mean():.3f}")
    for a in xai.AGGREGATES:
        imp = r[a]
        v = np.asarray(losses.disorder_violations(imp, k))
        print(
            f"{a:>4}: violations {v.mean():.4f}, skewness {imp[:, :k].sum(1).mean():.3f}, "
            f"local importance {imp[:, :k].mean(0)}, max offloaded {imp[:, k:].max(1).mean():.3f}"
        )
    print(
        f"|sum IG| / sum |IG|  local {cancel[:, :k].mean(0)}  offloaded {cancel[:, k:].mean():.3f}"
    )
    print(
        f"mean activation      local {r['activation'][:, :k].mean(0)}  offloaded "
        f"{r['activation'][:, k:].mean():.3f}"
    )
    print(
        f"zero fraction        local {r['zeros'][:, :k].mean(0)}  offloaded "
        f"{r['zeros'][:, k:].mean():.3f}"
    )
    act = r["activation"][:, k:].mean(0)
    print(
        f"offloaded channels   {len(act)}, dead (mean activation < 0.001) "
        f"{int((act < 1e-3).sum())}, "
        f"smallest mean activation {act.min():.4f}, zero fraction {r['zeros'][:, k:].mean():.3f}"
    )
    print(f"  mean activation    {act}")
    print(f"  beta / |gamma|     {r['bn_ratio'][k:]}  (local {r['bn_ratio'][:k]})")
    if "gain" in r:
        print(f"  quantizer gain     {r['gain']}")
    per_channel = r["code_counts"].sum(0).astype(np.float64)  # [offloaded channel, code]
    bits = np.array([bitrate.entropy_bits(row) for row in per_channel])
    print(
        f"  code entropy, bits {bits}  (mean {bits.mean():.2f} of "
        f"{np.log2(per_channel.shape[1]):.0f})"
    )
    counts = per_channel.sum(0)
    print(
        f"centroids            {np.sort(r['centroids'])}, most used code's share "
        f"{counts.max() / counts.sum():.3f}"
    )
    imp = r[trained]
    viol = np.asarray(losses.disorder_violations(imp, k)).astype(bool)
    if not viol.any():
        return
    weakest = imp[:, :k].argmin(1)
    w = int(np.bincount(weakest[viol], minlength=k).argmax())
    sel, rest = viol & (weakest == w), ~viol
    share = r["magnitude"][:, w] / r["magnitude"].sum(1)
    print(
        f"local channel {w} is the weakest on {sel.sum()} of {viol.sum()} violating samples; there"
    )
    print(
        f"  its {trained} importance {imp[sel, w].mean():.3f}, max offloaded "
        f"{imp[sel, k:].max(1).mean():.3f}, share of sum |IG| {share[sel].mean():.3f}"
    )
    print(
        f"  |sum IG| / sum |IG| {cancel[sel, w].mean():.3f} (non-violating samples "
        f"{cancel[rest, w].mean():.3f}), activation {r['activation'][sel, w].mean():.2f} "
        f"({r['activation'][rest, w].mean():.2f}), zeros {r['zeros'][sel, w].mean():.3f} "
        f"({r['zeros'][rest, w].mean():.3f})"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    report(*collect(sys.argv[1]))
