"""The "today" row of ``throughput.py``: the m = 2 AgileNN step of the code as it was when issue
11 was filed (commit ``TODAY_COMMIT``), fed by its host tf.data pipeline, in a plain process.

    python benchmarks/throughput_today.py --root=DIR --config_spec=paper.py:scale=cpu \
        --fake_samples=8192 --iters=20 --json=out.json

``throughput.py`` runs this itself: it extracts the commit with ``git archive`` into a
temporary DIR and runs this file from there, so the old package (not the installed one) is
imported and what is timed is the old step on the old pipeline, not today's step code with an
old setting. Only APIs that existed at that commit are used here.
"""

import json
import os
import sys
import time

# The last commit before issue 11's first change (9365e3e, the recompilation fix).
TODAY_COMMIT = "49bf631"
WARMUP = 4  # steps before timing: the third compile of that code's step comes at step 3


def main() -> None:
    from absl import app, flags

    root = flags.DEFINE_string("root", None, "Checkout of TODAY_COMMIT to import from.")
    spec = flags.DEFINE_string("config_spec", "paper.py:scale=cpu", "File:arg under configs.")
    batch = flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")
    fake = flags.DEFINE_integer("fake_samples", 0, "Random uint8 images instead of the data.")
    fake_size = flags.DEFINE_integer("fake_size", 32, "Stored size of the fake images.")
    iters = flags.DEFINE_integer("iters", 20, "Timed steps.")
    out = flags.DEFINE_string("json", None, "Write images/s and peak MiB here.")

    def run(argv):
        del argv
        sys.path.insert(0, os.path.abspath(root.value))
        import importlib.util

        import jax
        import numpy as np

        from agilenn_jax import input_pipeline
        from agilenn_jax.training import sharding, stages, steps

        loaded = os.path.abspath(os.path.dirname(input_pipeline.__file__))
        if not loaded.startswith(os.path.abspath(root.value)):
            raise RuntimeError(f"imported agilenn_jax from {loaded}, not from {root.value}")
        name, _, arg = spec.value.partition(":")
        path = os.path.join(root.value, "experiments", "configs", name)
        module_spec = importlib.util.spec_from_file_location("today_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
        with config.unlocked():
            config.xai.steps = 2
            if batch.value:
                config.train.batch_size = batch.value
        if fake.value:
            rng = np.random.default_rng(0)
            n, s = fake.value, fake_size.value
            split = input_pipeline.Split(
                rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                rng.integers(0, config.data.num_classes, n).astype(np.int64),
            )
            data = input_pipeline.Data(split, split, "val", config.data.num_classes)
        else:
            data = input_pipeline.load(config.data, config.seed)
        mesh = sharding.make_mesh()
        pipe = input_pipeline.Pipeline(config.data, config.seed)
        bs = int(config.train.batch_size)

        def batches():
            epoch = 0
            while True:
                for b in pipe.train_batches(data.train, bs, epoch):
                    yield sharding.shard_batch(b, mesh)
                epoch += 1

        it = batches()
        state = stages.agilenn_state_template(config, data, mesh)
        jitted = sharding.jit_train_step(steps.make_agilenn_train_step(config), mesh)
        rng_key = jax.random.key(0)
        first = next(it)
        mem = jitted.lower(state, first, rng_key).compile().memory_analysis()
        peak = float("nan")
        if mem is not None:
            peak = (
                mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            ) / 2**20
        # Warm-up: that code compiled its step three times (weak-typed centroids changed the
        # signature after the first updates; fixed in 9365e3e). Those compiles are paid once per
        # stage, not per step, so they stay out of the timed steps.
        for _ in range(WARMUP):
            state, m = jitted(state, next(it), rng_key)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(iters.value):
            state, m = jitted(state, next(it), rng_key)
        jax.block_until_ready(m)
        ips = iters.value * bs / (time.perf_counter() - t)
        print(f"today ({TODAY_COMMIT}) m=2 step, host tf.data: {ips:.1f} images/s")
        if out.value:
            with open(out.value, "w") as f:
                json.dump({"images_per_s": ips, "xla_peak_mib": peak}, f)

    flags.mark_flag_as_required("root")
    app.run(run)


if __name__ == "__main__":
    main()
