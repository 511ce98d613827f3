"""Training and evaluation throughput of a config: images/s end to end and peak memory per step.

    python benchmarks/throughput.py --config=experiments/configs/paper.py:scale=cpu \
        [--fake_samples=4096] [--iters=20] [--ig_steps=2,4,8] [--json=out.json]

Rows (each: batches from the input pipeline, the jitted step, timed over --iters steps after
compilation and two warm-up steps, so data production is included):
  reference      stage 1: extractor + reference NN, plain CE
  plain_ce       the AgileNN model without the XAI terms (the paper's baseline epoch)
  agilenn_mM     the AgileNN step with inline IG at m = M points
  eval           the final evaluation step (accuracy + IG importance), host batches
and, for the m = 2 step, "today" against this run: today is the step as training ran before
issue 11, measured in a child process of this same run (``throughput_today.py``): the code of
commit ``TODAY_COMMIT`` (extracted with ``git archive``; its own config file and argument, this
run's batch size), its host tf.data batches, float32, no host tuning. Without git history it
falls back to this checkout's step code in that old setting, and says so. This run uses the
config's ``data.on_device`` and ``model.dtype`` and, like ``launch.main``, re-executes itself
with ``agilenn_jax.host_tuning``'s settings (``AGILENN_HOST_TUNING=0`` measures without them).
Peak memory is XLA's estimate for the compiled step (arguments + temporaries + outputs) and,
where the device reports it, the allocator's peak. The epoch-time ratio AgileNN / plain CE is
printed (the paper: 3-4x).
--fake_samples=N replaces the dataset by N random uint8 images of the stored size (loading the
CIFAR-10 tarball takes minutes on 2 cores; throughput does not depend on the pixels).
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # the launcher's process settings (see agilenn_jax/host_tuning.py)
    from agilenn_jax import host_tuning

    host_tuning.reexec_tuned()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import throughput_today  # noqa: E402  (beside this file)
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from agilenn_jax import host_tuning, input_pipeline  # noqa: E402
from agilenn_jax.device_data import DeviceData  # noqa: E402
from agilenn_jax.training import evaluation, sharding, stages, steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/paper.py:scale=cpu", "Config."
)
_ITERS = flags.DEFINE_integer(
    "iters", 20, "Timed steps per row (fewer: the tuned heap's first-step stalls show)."
)
_STEPS = flags.DEFINE_list("ig_steps", ["2", "4", "8"], "IG points of the AgileNN rows.")
_FAKE = flags.DEFINE_integer("fake_samples", 0, "Random images instead of the dataset (0: load).")
_FAKE_SIZE = flags.DEFINE_integer("fake_size", 32, "Stored size of the --fake_samples images.")
_JSON = flags.DEFINE_string("json", None, "Also write the numbers here as JSON.")
_TODAY_ONLY = flags.DEFINE_bool(
    "today_only", False, "Only the m = 2 step as before issue 11 (the child process's job)."
)


def _data(config) -> input_pipeline.Data:
    if not _FAKE.value:
        return input_pipeline.load(config.data, config.seed)
    rng = np.random.default_rng(0)
    n, s = _FAKE.value, _FAKE_SIZE.value
    split = input_pipeline.Split(
        rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        rng.integers(0, config.data.num_classes, n).astype(np.int64),
    )
    return input_pipeline.Data(split, split, "val", config.data.num_classes)


class Batches:
    """Global training batches from the host pipeline or the on-device one, epoch after epoch."""

    def __init__(self, config, data, mesh, on_device: bool):
        self.config, self.data, self.mesh = config, data, mesh
        self.batch_size = int(config.train.batch_size)
        self.device = DeviceData(config.data, config.seed, data.train, mesh) if on_device else None
        self.pipeline = input_pipeline.Pipeline(config.data, config.seed)
        self.epoch, self._it = 0, iter(())

    def __next__(self) -> dict:
        for _ in range(2):
            try:
                return next(self._it)
            except StopIteration:
                self._it = self._epoch()
                self.epoch += 1
        raise RuntimeError("no training batches: the batch is larger than the split")

    def _epoch(self):
        if self.device is not None:
            return self.device.train_batches(self.batch_size, self.epoch)
        host = self.pipeline.train_batches(self.data.train, self.batch_size, self.epoch)
        return (sharding.shard_batch(b, self.mesh) for b in host)


def _peak_mib(compiled) -> float:
    mem = compiled.memory_analysis()
    if mem is None:
        return float("nan")
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    return total / 2**20


def _device_peak_mib() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**20


def _copy(tree):
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def time_steps(state, jitted, batches: Batches, iters: int) -> tuple[float, float]:
    """(images/s over ``iters`` steps incl. batch production, XLA peak MiB of the step)."""
    state = _copy(state)  # the step donates its state; the caller's stays usable
    batch = next(batches)
    rng = jax.random.key(0)
    peak = _peak_mib(jitted.lower(state, batch, rng).compile())
    for _ in range(2):
        state, m = jitted(state, next(batches), rng)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(iters):
        state, m = jitted(state, next(batches), rng)
    jax.block_until_ready(m)
    return iters * batches.batch_size / (time.perf_counter() - t), peak


def time_eval(config, state, data, mesh, iters: int) -> tuple[float, float]:
    jitted = sharding.jit_eval_step(evaluation.make_final_eval_step(config), mesh)
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    bs = int(config.eval_batch_size)
    n = min(len(data.eval), bs * (iters + 2))
    split = input_pipeline.Split(data.eval.images[:n], data.eval.labels[:n])
    batches = [sharding.shard_batch(b, mesh) for b in pipe.eval_batches(split, bs)]
    peak = _peak_mib(jitted.lower(state, batches[0]).compile())
    jax.block_until_ready(jitted(state, batches[0]))
    t = time.perf_counter()
    for b in batches[1:]:
        out = jitted(state, b)
    jax.block_until_ready(out)
    return (len(batches) - 1) * bs / (time.perf_counter() - t), peak


def _config_spec() -> str:
    """``file:arg`` of --config (its file name under experiments/configs; the old tree has its
    own copy). Overrides (--config.x=...) are not passed on: the old config may lack them."""
    spec = "paper.py:scale=cpu"
    for a in sys.argv[1:]:
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
    path, _, arg = spec.partition(":")
    return os.path.basename(path) + (f":{arg}" if arg else "")


def _today_tree(tmp: str) -> str | None:
    """``TODAY_COMMIT``'s package and configs extracted under ``tmp``; None without git or
    without that commit in this checkout's history (e.g. a shallow clone)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        archive = subprocess.run(
            ["git", "-C", repo, "archive", "--format=tar", throughput_today.TODAY_COMMIT]
            + ["agilenn_jax", "experiments"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    root = os.path.join(tmp, "today")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


def _today_in_child(config) -> tuple[tuple[float, float], str]:
    """images/s of the m = 2 step as before issue 11, in a fresh untuned process, and what ran.

    With git and ``TODAY_COMMIT`` in the history: that commit's own code and config (its step
    on its host tf.data pipeline). Otherwise today's step code with the old setting (host
    tf.data, float32, no host tuning), which leaves out every step-code speed-up since."""
    env = host_tuning.untuned_environ(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "today.json")
        root = _today_tree(tmp)
        if root is not None:
            cmd = [
                sys.executable,
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput_today.py"),
                f"--root={root}",
                f"--config_spec={_config_spec()}",
                f"--batch_size={int(config.train.batch_size)}",
                f"--fake_samples={_FAKE.value}",
                f"--fake_size={_FAKE_SIZE.value}",
                f"--iters={_ITERS.value}",
                f"--json={out}",
            ]
            what = f"commit {throughput_today.TODAY_COMMIT}'s code"
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--today_only", f"--json={out}"]
            cmd += [a for a in sys.argv[1:] if not a.startswith("--json")]
            what = "this checkout's step code (no git history: step speed-ups not counted)"
        subprocess.run(cmd, check=True, env=env)
        with open(out) as f:
            got = json.load(f)
        return (float(got["images_per_s"]), float(got["xla_peak_mib"])), what


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    data = _data(config)
    mesh = sharding.make_mesh()
    iters = _ITERS.value
    rows: dict[str, tuple[float, float]] = {}
    if _TODAY_ONLY.value:
        with config.unlocked():
            config.data.on_device, config.model.dtype = False, "float32"
        state = stages.agilenn_state_template(config, data, mesh)
        step = sharding.jit_train_step(steps.make_agilenn_train_step(config), mesh)
        ips, peak = time_steps(state, step, Batches(config, data, mesh, False), iters)
        with open(_JSON.value, "w") as f:
            json.dump({"images_per_s": ips, "xla_peak_mib": peak}, f)
        return
    batches = Batches(config, data, mesh, bool(config.data.on_device))

    ref_state = stages.reference_state_template(config, data, mesh)
    rows["reference"] = time_steps(
        ref_state, sharding.jit_train_step(steps.reference_train_step, mesh), batches, iters
    )
    del ref_state
    state = stages.agilenn_state_template(config, data, mesh)
    plain = sharding.jit_train_step(steps.make_agilenn_train_step(config, False), mesh)
    rows["plain_ce"] = time_steps(state, plain, batches, iters)
    for m in (int(x) for x in _STEPS.value):
        with config.unlocked():
            config.xai.steps = m
        step = sharding.jit_train_step(steps.make_agilenn_train_step(config), mesh)
        rows[f"agilenn_m{m}"] = time_steps(state, step, batches, iters)
    with config.unlocked():
        config.xai.steps = 2
    rows["eval"] = time_eval(config, state, data, mesh, iters)

    setting = (bool(config.data.on_device), str(config.model.dtype), host_tuning.applied())
    today = setting != (False, "float32", False)
    if today:
        rows["agilenn_m2_today"], today_what = _today_in_child(config)

    dev = jax.devices()
    print(
        f"\n{len(dev)} x {dev[0].device_kind}, batch {batches.batch_size}, "
        f"{config.data.image_size}x{config.data.image_size} input, {len(data.train)} train "
        f"images, data.on_device={setting[0]}, model.dtype={setting[1]}, "
        f"host tuning={'on' if setting[2] else 'off'}"
    )
    print(f"{'row':<20}{'images/s':>10}{'epoch s':>10}{'XLA peak MiB':>14}")
    for name, (ips, mib) in rows.items():
        print(f"{name:<20}{ips:>10.1f}{len(data.train) / ips:>10.1f}{mib:>14.1f}")
    ratio = rows["plain_ce"][0] / rows["agilenn_m2"][0]
    print(f"epoch-time ratio AgileNN (m=2) / plain CE: {ratio:.2f}x (paper: 3-4x)")
    if today:
        speedup = rows["agilenn_m2"][0] / rows["agilenn_m2_today"][0]
        print(
            "this run's m=2 step vs today's (host tf.data, float32, no host tuning, "
            f"{today_what}; measured in a child process of this run): {speedup:.2f}x"
        )
    print(f"device allocator peak: {_device_peak_mib():.1f} MiB (nan: not reported, e.g. CPU)")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(
                {
                    "device": f"{len(dev)} x {dev[0].device_kind}",
                    "batch_size": batches.batch_size,
                    "train_samples": len(data.train),
                    "images_per_s": {k: v[0] for k, v in rows.items()},
                    "xla_peak_mib": {k: v[1] for k, v in rows.items()},
                    "agilenn_over_plain_epoch_time": ratio,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    app.run(main)
