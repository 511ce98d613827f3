"""Our train steps vs a TF/Keras build of the same network, at the authors' architecture.

    python benchmarks/tf_side_by_side.py [--batch_size=32 --iters=5 --variants=tf,plain,agilenn]

The authors' AgileNN code is TF/Keras and is not in this repo, so a Keras model of exactly our
plain network stands in for their plain step. Everything runs on this machine in one run, at
paper.py:remote=authors: 96x96x3 input, the extractor to 32x32x24, k = 5 local channels, the
remote a full-width MobileNetV2 stack without stem whose second stage keeps stride 1 (the
authors' layout), head 1280, 10 classes; random data, batch --batch_size.

Rows (``BASE`` or ``BASE+OPTION+...``; ``--variants`` lists them, ``OPTIONS`` the options):
- ``tf``: the Keras model (extractor, local GAP + BN + Dense, soft-hard quantizer, remote stack,
  trainable alpha) and one CE step with SGD momentum 0.9 and decoupled weight decay on kernels,
  in ``tf.function(jit_compile=False)``: TF's default oneDNN path, as the authors' Keras code
  runs. BN is TF's fused kernel, as tf.keras 2 used on 4-D inputs. ``tf_xla``: the same step
  with ``jit_compile=True``; ``tf_nq``: ``tf`` without the quantizer (its cost).
- ``plain``: our CE step on the same network (``steps.make_agilenn_train_step(config, False)``).
- ``agilenn``: our AgileNN step (inline IG of the frozen reference, m = 2, trapezoid).

Each row is its own subprocess of this script (``--_child``), so XLA_FLAGS and glibc settings
apply before JAX or TF starts and the two never share thread pools. The children compile one at
a time; then, with --interleave (default), they take turns one step each, so a slow spell of
the machine (other jobs) hits every row alike; --nointerleave runs each row's steps in a block
and keeps one child alive at a time (less memory). It prints ms/step (median of --iters timed
steps after 2 warm-up steps), images/s, the ratios to TF's plain step and to ours, and FLOPs
(XLA's count of each compiled step; the forward per sample), so per-FLOP speed shows too.
The authors report their AgileNN step at 3.14x their plain step: the target is our AgileNN step
at least 2x faster than theirs, i.e. ours AgileNN <= 1.57x TF plain.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

CONFIG_ARG = "remote=authors"  # experiments/configs/paper.py:remote=authors
AUTHORS_AGILENN_OVER_PLAIN = 3.14  # the authors' TF code: AgileNN step / plain step
PREFIX = "@@"  # marks the child's protocol lines on its stdout

_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size of every step.")
_ITERS = flags.DEFINE_integer("iters", 5, "Timed steps per row (median reported).")
_VARIANTS = flags.DEFINE_list(
    "variants",
    [
        "tf",
        "tf_xla",
        "plain",
        "plain+malloc+thp",
        "plain+malloc+thp+2dev",
        "agilenn",
        "agilenn+malloc+thp+2dev",
    ],
    "Rows: BASE[+OPTION...], BASE in tf | tf_xla | tf_nq | plain | agilenn (see OPTIONS).",
)
_INTERLEAVE = flags.DEFINE_bool(
    "interleave", True, "Rows take turns step by step (all children alive at once)."
)
_CHILD = flags.DEFINE_string("_child", "", "Internal: serve one row's steps over stdin/stdout.")


@dataclasses.dataclass(frozen=True)
class Option:
    """One knob for a row: XLA_FLAGS and config fields (JAX rows), or environment variables
    read at process start (any row)."""

    help: str
    xla_flags: tuple[str, ...] = ()
    model: tuple[tuple[str, Any], ...] = ()
    env: tuple[tuple[str, str], ...] = ()


OPTIONS: dict[str, Option] = {
    "taps": Option(
        "depthwise as 9 shifted MACs (auto's choice on CPU)", (), (("depthwise_impl", "taps"),)
    ),
    "conv": Option("depthwise as XLA's grouped conv", (), (("depthwise_impl", "conv"),)),
    "bf16": Option("bfloat16 compute", (), (("dtype", "bfloat16"),)),
    # jaxlib 0.10.2 compiles the same program with onednn or xnn as without: YNNPACK already
    # takes the dots and reductions.
    "onednn": Option("oneDNN thunks for dot/conv fusions", ("--xla_cpu_use_onednn=true",)),
    "xnn": Option(
        "XNNPACK fusions of dots, elementwise ops and reductions",
        ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",),
    ),
    "no_xnnpack": Option("XNNPACK/YNNPACK off", ("--xla_cpu_use_xnnpack=false",)),
    "vec512": Option("512-bit vectors in XLA's codegen", ("--xla_cpu_prefer_vector_width=512",)),
    "fastmath": Option("LLVM fast math", ("--xla_cpu_enable_fast_math=true",)),
    "1thread": Option("single-threaded Eigen", ("--xla_cpu_multi_thread_eigen=false",)),
    "2dev": Option(
        "2 CPU devices, the batch split over them", ("--xla_force_host_platform_device_count=2",)
    ),
    # XLA:CPU allocates each execution's temp buffer (1.4 GB for the plain step here) with
    # malloc and frees it after: glibc serves it from a fresh mmap, so every step page-faults
    # it in again. One arena, no mmap and no trimming keep the pages between steps; transparent
    # huge pages make each fault cover 2 MB.
    "malloc": Option(
        "glibc keeps freed memory (one arena, no mmap, no trim)",
        env=(
            ("MALLOC_ARENA_MAX", "1"),
            ("MALLOC_MMAP_MAX_", "0"),
            ("MALLOC_TRIM_THRESHOLD_", str(2**36)),
        ),
    ),
    "thp": Option(
        "glibc asks for transparent huge pages",
        env=(("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"),),
    ),
}
BASES = {
    "tf": "Keras, tf.function (oneDNN), same network",
    "tf_xla": "Keras, tf.function(jit_compile=True)",
    "tf_nq": "Keras as tf, without the quantizer",
    "plain": "ours: CE step (make_agilenn_train_step(config, False))",
    "agilenn": "ours: AgileNN step, inline IG m=2",
}


def parse_variant(name: str) -> tuple[str, list[str]]:
    """``BASE+OPT+...`` -> (BASE, [OPT, ...]); a bad name fails before anything runs."""
    base, *opts = name.split("+")
    if base not in BASES:
        raise ValueError(f"variant {name!r}: base must be one of {list(BASES)}")
    for o in opts:
        if o not in OPTIONS:
            raise ValueError(f"variant {name!r}: unknown option {o!r}; options: {list(OPTIONS)}")
        if base.startswith("tf") and (OPTIONS[o].xla_flags or OPTIONS[o].model):
            raise ValueError(f"variant {name!r}: TF rows take environment options only")
    return base, opts


def describe(name: str) -> str:
    base, opts = parse_variant(name)
    return "; ".join([BASES[base], *(OPTIONS[o].help for o in opts)])


def paper_config(opts: list[str] | None = None) -> Any:
    """paper.py:remote=authors (IG m = 2, trapezoid) with the options' config fields set."""
    from experiments.configs import paper

    config = paper.get_config(CONFIG_ARG)
    with config.unlocked():
        config.xai.steps, config.xai.rule = 2, "trapezoid"
        for o in opts or []:
            for key, value in OPTIONS[o].model:
                config.model[key] = value
    return config


def random_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    s = config.data.image_size
    return {
        "image": rng.normal(size=(batch_size, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, config.data.num_classes, batch_size).astype(np.int32),
    }


# --------------------------------------------------------------------------- JAX rows


def xla_flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled computation (cost_analysis is a dict or a list of one)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def prepare_jax(base: str, opts: list[str], batch_size: int) -> tuple[Callable, dict]:
    """Our plain or AgileNN step at paper.py:remote=authors, compiled: (one step, facts)."""
    import jax

    from agilenn_jax import input_pipeline
    from agilenn_jax.models import build_agilenn
    from agilenn_jax.training import sharding, stages, steps

    config = paper_config(opts)
    batch = random_batch(config, batch_size)
    mesh = sharding.make_mesh()
    n = 2 * max(batch_size, config.train.batch_size)  # the optimiser's schedule reads len
    split = input_pipeline.Split(np.zeros((n, 8, 8, 3), np.uint8), np.zeros(n, np.int32))
    data = input_pipeline.Data(split, split, "val", config.data.num_classes)
    state = stages.agilenn_state_template(config, data, mesh)
    jitted = sharding.jit_train_step(steps.make_agilenn_train_step(config, base == "agilenn"), mesh)
    sbatch = sharding.shard_batch(batch, mesh)
    rng = jax.random.key(0)
    compiled = jitted.lower(state, sbatch, rng).compile()
    holder = {"state": state}

    def step() -> None:
        holder["state"], m = compiled(holder["state"], sbatch, rng)
        jax.block_until_ready(m)

    mem = compiled.memory_analysis()
    ndev = mesh.devices.size  # XLA's counts are per device (one partition of the batch)
    facts = {
        "step_flops": xla_flops(compiled) * ndev,
        "temp_mib": ndev * mem.temp_size_in_bytes / 2**20 if mem is not None else float("nan"),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    if base == "plain" and not opts:
        # The forward's FLOPs per sample with the real grouped conv (XLA counts 2 per MAC
        # there; the taps path counts the same multiply-adds as elementwise ops).
        model = build_agilenn(config, depthwise_impl="conv", dtype="float32")
        fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        facts["fwd_flops_per_sample"] = xla_flops(
            fwd.lower(variables, batch["image"][:1]).compile()
        )
    return step, facts


# --------------------------------------------------------------------------- TF/Keras rows


def build_keras(config: Any, quantizer: bool = True) -> Any:
    """Our plain AgileNN network (paper.py:remote=authors) as a Keras model: same layers, shapes,
    BN settings and combiner; BN on 4-D tensors is TF's fused kernel (tf.keras 2's choice)."""
    import keras
    import tensorflow as tf

    from agilenn_jax.models.mobilenet import _make_divisible

    m = config.model
    eps, mom = 1e-3, 0.9

    class FusedBN(keras.layers.Layer):
        """BatchNormalization via FusedBatchNormV3, as tf.keras 2 ran it (Keras 3 does not)."""

        def build(self, shape: tuple) -> None:
            c = shape[-1]
            self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")
            self.mean = self.add_weight(
                shape=(c,), initializer="zeros", trainable=False, name="mean"
            )
            self.var = self.add_weight(shape=(c,), initializer="ones", trainable=False, name="var")

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return tf.nn.batch_normalization(x, self.mean, self.var, self.beta, self.gamma, eps)
            y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=self.gamma.value,
                offset=self.beta.value,
                mean=self.mean.value,
                variance=self.var.value,
                epsilon=eps,
                exponential_avg_factor=1.0 - mom,
                is_training=True,
            )
            self.mean.assign(mean)
            self.var.assign(var)
            return y

    class Quantizer(keras.layers.Layer):
        """The soft-hard quantizer: hard nearest centroid forward, softmax-weighted backward."""

        def build(self, shape: tuple) -> None:
            n = m.num_centroids
            c = (np.arange(n, dtype=np.float32) + 0.5) * 6.0 / n
            init = keras.initializers.Constant(np.log(c / (6.0 - c)))
            self.logits = self.add_weight(shape=(n,), initializer=init, name="centroid_logits")

        def call(self, x: Any) -> Any:
            c = 6.0 * tf.sigmoid(self.logits)
            d2 = tf.square(x[..., None] - c)
            hard = tf.gather(c, tf.argmin(d2, axis=-1))
            soft = tf.reduce_sum(tf.nn.softmax(-m.quantizer_softness * d2, axis=-1) * c, -1)
            return soft + tf.stop_gradient(hard - soft)

    class Combine(keras.layers.Layer):
        """alpha * local + (1 - alpha) * remote, alpha = sigmoid(w / T) with w trainable."""

        def build(self, shapes: list) -> None:
            self.w = self.add_weight(shape=(), initializer="zeros", name="alpha_logit")

        def call(self, inputs: list) -> Any:
            local, remote = inputs
            alpha = tf.sigmoid(self.w / m.temperature)
            return alpha * local + (1.0 - alpha) * remote

    L = keras.layers
    relu6 = lambda: L.ReLU(6.0)  # noqa: E731
    dw = lambda s: L.DepthwiseConv2D(3, s, padding="same", use_bias=False)  # noqa: E731
    pw = lambda c: L.Conv2D(c, 1, use_bias=False)  # noqa: E731

    x = inp = keras.Input((config.data.image_size, config.data.image_size, 3))
    for c, s in zip(m.extractor_channels, m.extractor_strides, strict=True):
        x = relu6()(FusedBN()(dw(s)(x)))
        x = relu6()(FusedBN()(pw(int(c))(x)))
    k = int(m.k)
    local = L.GlobalAveragePooling2D()(x[..., :k])
    local = L.BatchNormalization(momentum=mom, epsilon=eps)(local)
    local = L.Dense(config.data.num_classes)(local)
    h = x[..., k:]
    if quantizer:
        h = Quantizer()(h)
    for t, ch, n, s in m.remote_stages:
        out = _make_divisible(ch * m.remote_width)
        for i in range(n):
            y, stride, cin = h, s if i == 0 else 1, h.shape[-1]
            if t != 1:
                y = relu6()(FusedBN()(pw(cin * t)(y)))
            y = relu6()(FusedBN()(dw(stride)(y)))
            y = FusedBN()(pw(out)(y))
            h = L.Add()([y, h]) if stride == 1 and cin == out else y
    head = _make_divisible(m.remote_head_channels * max(1.0, m.remote_width))
    h = L.GlobalAveragePooling2D()(relu6()(FusedBN()(pw(head)(h))))
    remote = L.Dense(config.data.num_classes)(L.Dropout(m.remote_dropout)(h))
    return keras.Model(inp, Combine()([local, remote]))


def keras_flops_per_sample(model: Any) -> float:
    """2 x MACs of the model's convolutions and dense layers for one sample (what XLA and
    tf.profiler count for them); BN, activations and pooling are left out."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            total += h * w * c * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            total += h * w * c * int(np.prod(layer.kernel.shape[:-1]))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return 2.0 * total


def prepare_tf(base: str, batch_size: int) -> tuple[Callable, dict]:
    """The Keras model's CE step, traced and run once: SGD momentum 0.9 and decoupled weight
    decay on kernels (ndim > 1), the same update as our optimiser, written out in TF."""
    import tensorflow as tf

    config = paper_config()
    tc = config.train
    model = build_keras(config, quantizer=base != "tf_nq")
    params = model.trainable_variables
    moms = [tf.Variable(tf.zeros_like(p), trainable=False) for p in params]
    decay = [len(p.shape) > 1 for p in params]
    batch = random_batch(config, batch_size)
    x, y = tf.constant(batch["image"]), tf.constant(batch["label"])

    @tf.function(jit_compile=base == "tf_xla")
    def train_step(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = tape.gradient(loss, params)
        for p, g, mo, wd in zip(params, grads, moms, decay, strict=True):
            mo.assign(tc.momentum * mo + g)
            p.assign_sub(tc.lr * (mo + tc.weight_decay * p if wd else mo))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y), tf.float32))
        return loss, acc

    def step() -> None:
        train_step(x, y)[0].numpy()

    step()  # traces (and for tf_xla compiles) the step
    return step, {
        "fwd_flops_per_sample": keras_flops_per_sample(model),
        "params": int(sum(np.prod(p.shape) for p in params)),
        "tf": tf.__version__,
    }


# --------------------------------------------------------------------------- child processes


def serve(name: str) -> None:
    """The child: prepare the row, 2 warm-up steps, then one timed step per ``step`` line."""
    t = time.perf_counter()
    base, opts = parse_variant(name)
    if base.startswith("tf"):
        step, facts = prepare_tf(base, _BATCH.value)
    else:
        step, facts = prepare_jax(base, opts, _BATCH.value)
    for _ in range(2):
        step()
    facts["setup_s"] = time.perf_counter() - t
    facts["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(PREFIX + "READY " + json.dumps(facts), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t = time.perf_counter()
        step()
        print(f"{PREFIX}{1e3 * (time.perf_counter() - t)}", flush=True)


class Child:
    """One row in its own interpreter, with its XLA_FLAGS and environment, driven line by line."""

    def __init__(self, name: str) -> None:
        base, opts = parse_variant(name)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.update({k: v for o in opts for k, v in OPTIONS[o].env})
        extra = [f for o in opts for f in OPTIONS[o].xla_flags]
        if extra:
            env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *extra]).strip()
        self.name, self.times = name, []
        self.stderr = tempfile.TemporaryFile("w+")
        cmd = [sys.executable, os.path.abspath(__file__), f"--_child={name}"]
        self.proc = subprocess.Popen(
            [*cmd, f"--batch_size={_BATCH.value}"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def _read(self) -> str:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return line[len(PREFIX) :].strip()
        self.stderr.seek(0)
        raise RuntimeError(f"{self.name} exited {self.proc.wait()}:\n{self.stderr.read()[-3000:]}")

    def ready(self) -> dict[str, Any]:
        return json.loads(self._read().removeprefix("READY "))

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.times.append(float(self._read()))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:  # the child is already gone
                pass
            self.proc.wait()
        self.stderr.close()


def mem_available_gib() -> float:
    """MemAvailable from /proc/meminfo (inf where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def run_group(group: list[Child], iters: int) -> None:
    """The group's rows take turns, one step each, then exit; a row that dies is dropped."""
    live = list(group)
    for _ in range(iters):
        for child in list(live):
            try:
                child.step()
            except RuntimeError as e:
                print(f"  {child.name}: failed during its steps\n{e}", flush=True)
                child.times.clear()
                live.remove(child)
    for child in group:
        child.close()


def measure(names: list[str], iters: int, interleave: bool) -> dict[str, dict[str, Any]]:
    """Each row's facts and step times; a row that fails is reported and left out.

    Interleaved rows stay alive together. When free memory would not fit one more child (1.5x
    the largest peak so far, plus 2 GiB), the rows so far are measured and closed first, and
    the rest form a new group: other jobs on the machine must not meet the OOM killer."""
    results, group, peak = {}, [], 0.0
    for name in names:
        if group and (not interleave or mem_available_gib() < 1.5 * peak + 2.0):
            if interleave:
                print(f"  (low memory: measuring {[c.name for c in group]} first)", flush=True)
            run_group(group, iters)
            group = []
        child = Child(name)
        try:
            facts = child.ready()
        except RuntimeError as e:
            print(f"  {name}: failed\n{e}", flush=True)
            child.close()
            continue
        print(
            f"  {name}: ready in {facts['setup_s']:.0f} s, peak RSS {facts['rss_gib']:.1f} GiB",
            flush=True,
        )
        peak = max(peak, facts["rss_gib"])
        facts["child"] = child
        results[name] = facts
        group.append(child)
    run_group(group, iters)
    for name, facts in list(results.items()):
        times = facts.pop("child").times
        if not times:
            del results[name]
            continue
        facts["times"], facts["ms"] = times, float(np.median(times))
    return results


# --------------------------------------------------------------------------- report


def print_table(results: dict[str, dict[str, Any]], batch_size: int) -> None:
    tf_ms = results["tf"]["ms"] if "tf" in results else None
    plain_ms = results["plain"]["ms"] if "plain" in results else None
    # TF rows run our plain step's math: give them its XLA FLOP count (plain, else plain+...).
    plain_rows = [r for n, r in results.items() if n.split("+")[0] == "plain"]
    ref_flops = plain_rows[0]["step_flops"] if plain_rows else None
    devices = next((r["devices"] for r in results.values() if "devices" in r), "")
    where = f"{os.cpu_count()} CPUs; JAX rows on {devices} (2dev rows: 2 devices)"
    print(f"\nbatch {batch_size}, 96x96x3, paper.py:{CONFIG_ARG}; {where}")
    print(
        f"{'row':<26}{'ms/step':>9}{'min':>7}{'img/s':>7}{'/TF':>7}{'/plain':>8}"
        f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'temp MiB':>10}"
    )
    for name, r in results.items():
        ms = r["ms"]
        flops = r.get("step_flops", ref_flops if name.startswith("tf") else None)
        gf = f"{flops / 1e9:>12.1f}{flops / 1e6 / ms:>9.1f}" if flops else f"{'':>21}"
        print(
            f"{name:<26}{ms:>9.0f}{min(r['times']):>7.0f}{1e3 * batch_size / ms:>7.1f}"
            f"{ms / tf_ms if tf_ms else float('nan'):>7.2f}"
            f"{ms / plain_ms if plain_ms else float('nan'):>8.2f}{gf}"
            + (f"{r['temp_mib']:>10.0f}" if "temp_mib" in r else "")
        )
    print("ms/step: median of the timed steps; /TF, /plain: ms/step over the tf and plain rows'.")
    print("GFLOP/step: XLA's count of that compiled step, all devices (taps rows count the")
    print("depthwise MACs as elementwise ops); TF rows show our plain step's count: the same")
    print("network and update. temp MiB: XLA's temp buffer of the step, all devices.")
    for name, r in results.items():
        if "fwd_flops_per_sample" in r:
            how = "2 x conv/dense MACs of the Keras model" if name.startswith("tf") else "XLA"
            print(f"forward MFLOP/sample, {name} ({how}): {r['fwd_flops_per_sample'] / 1e6:.1f}")
    print("rows:")
    for name in results:
        print(f"  {name:<24}{describe(name)}")
    if not tf_ms:
        return

    def best(base: str) -> tuple[str, float] | None:
        rows = [(n, r["ms"]) for n, r in results.items() if n.split("+")[0] == base]
        return min(rows, key=lambda t: t[1]) if rows else None

    for base in ("plain", "agilenn"):
        label = "AgileNN" if base == "agilenn" else base
        if base in results:
            print(f"ours {label} / TF plain = {results[base]['ms'] / tf_ms:.2f} (default options)")
        top = best(base)
        if top and top[0] != base:
            print(f"ours {label} / TF plain = {top[1] / tf_ms:.2f} (best row: {top[0]})")
    top = best("agilenn")
    if top:
        y = top[1] / tf_ms
        a = AUTHORS_AGILENN_OVER_PLAIN
        print(
            f"ours AgileNN / TF plain = {y:.2f} (target: ours AgileNN >= 2x faster than the "
            f"authors' AgileNN; their AgileNN/plain ratio was {a}x in their TF code, so their "
            f"AgileNN ~ {a} x TF plain): ours is {a / y:.2f}x faster than theirs "
            f"({'met' if a / y >= 2.0 else 'not met'}; {top[0]})"
        )


def main(argv: list[str]) -> None:
    del argv
    if _CHILD.value:
        serve(_CHILD.value)
        return
    for name in _VARIANTS.value:
        parse_variant(name)
    mode = "interleaved" if _INTERLEAVE.value else "one row at a time"
    print(f"{len(_VARIANTS.value)} rows, one subprocess each, {_ITERS.value} steps, {mode}:")
    print_table(measure(_VARIANTS.value, _ITERS.value, _INTERLEAVE.value), _BATCH.value)


if __name__ == "__main__":
    app.run(main)
