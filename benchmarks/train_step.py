"""Plain CE step vs AgileNN step (inline IG, m = 2, 4, 8) on the same models and batch.

    python benchmarks/train_step.py --config=experiments/configs/quickstart.py [--batch_size=64]

Prints ms/step (median of --iters timed steps after compilation and warm-up), the ratio to the
plain step and XLA's peak-memory estimate of each compiled step (temp + arguments + outputs).
The paper reports a 3-4x epoch-time overhead from XAI; the target here is <= 2x at m = 2.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from agilenn_jax import input_pipeline  # noqa: E402
from agilenn_jax.training import sharding, stages, steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/quickstart.py", "Config.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed steps per variant.")
_STEPS = flags.DEFINE_list("ig_steps", ["2", "4", "8"], "IG interpolation steps to compare.")


def _fake_data(config, n: int) -> input_pipeline.Data:
    split = input_pipeline.Split(np.zeros((n, 8, 8, 3), np.uint8), np.zeros(n, np.int32))
    return input_pipeline.Data(split, split, "val", config.data.num_classes)


def bench(config, step_fn, batch, mesh, iters: int) -> tuple[float, float]:
    data = _fake_data(config, batch["label"].shape[0] * 2)
    state = stages.agilenn_state_template(config, data, mesh)
    jitted = sharding.jit_train_step(step_fn, mesh)
    batch = sharding.shard_batch(batch, mesh)
    rng = jax.random.key(0)
    compiled = jitted.lower(state, batch, rng).compile()
    mem = compiled.memory_analysis()
    peak = float("nan")
    if mem is not None:
        peak = (
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        ) / 2**20
    for _ in range(2):
        state, m = jitted(state, batch, rng)
    jax.block_until_ready(m)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        state, m = jitted(state, batch, rng)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)), peak


def main(argv):
    del argv
    config = _CONFIG.value
    bs = _BATCH.value or config.train.batch_size
    s = config.data.image_size
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(bs, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, config.data.num_classes, bs).astype(np.int32),
    }
    mesh = sharding.make_mesh()
    rows = [
        (
            "plain CE",
            *bench(config, steps.make_agilenn_train_step(config, False), batch, mesh, _ITERS.value),
        )
    ]
    for m in [int(x) for x in _STEPS.value]:
        with config.unlocked():
            config.xai.steps = m
            config.xai.rule = "trapezoid"
        step = steps.make_agilenn_train_step(config)
        rows.append((f"AgileNN IG m={m}", *bench(config, step, batch, mesh, _ITERS.value)))
    base = rows[0][1]
    print(f"\n{jax.device_count()} x {jax.devices()[0].device_kind}, batch {bs}, {s}x{s} input")
    print(f"{'step':<18}{'ms/step':>10}{'ratio':>8}{'peak MiB':>10}")
    for name, ms, mib in rows:
        print(f"{name:<18}{ms:>10.1f}{ms / base:>8.2f}{mib:>10.1f}")


if __name__ == "__main__":
    app.run(main)
