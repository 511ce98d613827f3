"""The optimiser of both stages: SGD + momentum, cosine schedule, decoupled weight decay."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_optimizer(
    tc: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """SGDW as in the paper's setup: decay on kernels only (ndim > 1), not on BN or biases."""
    total = max(1, int(tc.epochs * steps_per_epoch))
    warm = int(tc.warmup_epochs * steps_per_epoch)
    if warm:
        sched = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warm, max(total, warm + 1))
    else:
        sched = optax.cosine_decay_schedule(tc.lr, total)

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim > 1, params)

    return optax.chain(
        optax.trace(decay=tc.momentum),
        optax.add_decayed_weights(tc.weight_decay, decay_mask),
        optax.scale_by_learning_rate(sched),
    )
