"""Frame size and Python speed of every codec coder on a trained run's real indices.

    python benchmarks/coders.py --workdir=/tmp/qs0 [--num=500] [--num_train=1000] [--caps]

Fits the codec model (per-channel and ctx tables) on the device indices of the first
``num_train`` training images, as the export does, then frames the first ``num`` held-out
samples with each coder (checking every decode is lossless) and prints mean frame bytes, bits
per symbol, the difference from zstd level 19, encode / decode ms per frame in Python and, for
ctx, its model's ideal code length and the flash its tables take. ``--caps`` prints the
size-versus-table trade-off of other ctx contexts, estimated from their ideal code lengths.
"""

import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from agilenn_jax import inference, input_pipeline  # noqa: E402
from agilenn_jax.serving import codec, rans  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir.")
_NUM = flags.DEFINE_integer("num", 500, "Held-out samples to frame.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 1000, "Training samples to fit on.")
_CODERS = flags.DEFINE_list("coders", list(codec.CODERS), "Coders to measure.")
_CAPS = flags.DEFINE_bool("caps", False, "Also print other ctx contexts.")
flags.mark_flag_as_required("workdir")


def _indices(run, split, n, pipe, batch=100):
    images, _ = inference.first_images(pipe, split, n)
    return np.concatenate(
        [
            np.asarray(inference.device_indices(run.model, run.variables, images[i : i + batch]))
            for i in range(0, len(images), batch)
        ]
    ).astype(np.uint8)


def _bench(c, indices):
    sizes, enc, dec = [], 0.0, 0.0
    for idx in indices:
        t = time.perf_counter()
        frame = c.encode(idx)
        enc += time.perf_counter() - t
        t = time.perf_counter()
        out = c.decode(frame)
        dec += time.perf_counter() - t
        if not np.array_equal(out, idx):
            raise AssertionError(f"{c.coder_name} is not lossless")
        sizes.append(len(frame))
    n = len(indices)
    return np.asarray(sizes, np.float64), 1e3 * enc / n, 1e3 * dec / n


def _caps_table(train, held_out, num_centroids, overhead):
    rows, best = [], None
    for caps in itertools.product([-1, 0, 1, 2, 3, 7], [-1, 0, 1, 2, 3, 7], [-1, 0, 1]):
        m = rans.ContextModel.fit(train, num_centroids, caps)
        rows.append((m.freqs.size * 2, m.code_lengths(held_out).mean() / 8 + overhead, caps))
    print("\nctx contexts on the size / table Pareto front (frame ~ ideal + header + state):")
    for table, frame, caps in sorted(rows):
        if best is None or frame < best:
            best = frame
            print(f"  caps (left, up, prev) {str(caps):13s} table {table:6d} B  frame {frame:6.1f}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run = inference.load_run(_WORKDIR.value)
    config = run.config
    data = input_pipeline.load(config.data, config.seed)
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    train = _indices(run, data.train, _NUM_TRAIN.value, pipe)
    held_out = _indices(run, data.eval, _NUM.value, pipe)
    ncent = int(config.model.num_centroids)
    model = codec.ProbabilityModel.fit(train, ncent, model_id=0)
    shape = held_out.shape[1:]
    symbols = int(np.prod(shape))
    overhead = codec.HEADER.size + codec.CRC.size
    print(
        f"{_WORKDIR.value}: fitted on {len(train)} training samples, {len(held_out)} held-out "
        f"samples of {shape[0]}x{shape[1]}x{shape[2]} indices ({ncent} centroids); frame "
        f"header + CRC = {overhead} B"
    )
    results = {}
    for name in _CODERS.value:
        results[name] = _bench(codec.Codec(model, run.model.k, name, shape), held_out)
    zstd = results["zstd"][0].mean() if "zstd" in results else float("nan")
    print(
        f"{'coder':<8} {'frame bytes':>16} {'bits/sym':>9} {'vs zstd':>8} "
        f"{'enc ms':>8} {'dec ms':>8}"
    )
    for name, (sizes, enc, dec) in sorted(results.items(), key=lambda kv: kv[1][0].mean()):
        bits = 8 * (sizes.mean() - overhead) / symbols
        print(
            f"{name:<8} {sizes.mean():>8.1f} ± {sizes.std():>5.1f} {bits:>9.3f} "
            f"{100 * (sizes.mean() / zstd - 1):>+7.1f}% {enc:>8.2f} {dec:>8.2f}"
        )
    ctx = model.context
    ideal = ctx.code_lengths(held_out) / 8
    if "ctx" in results:
        payload = results["ctx"][0] - overhead
        print(
            f"ctx: payload {payload.mean():.1f} B vs its model's ideal {ideal.mean():.1f} B "
            f"({100 * (payload.mean() / ideal.mean() - 1):+.2f}%)"
        )
    print(
        f"ctx model: caps (left, up, prev channel) {ctx.caps}, {ctx.num_contexts} contexts, "
        f"PROB_BITS {ctx.prob_bits}, tables in flash {ctx.freqs.size * 2} B (uint16 freqs) "
        f"+ {2 * (ncent - 1)} B thresholds"
    )
    if _CAPS.value:
        _caps_table(train, held_out, ncent, overhead + rans.STATE_BYTES)


if __name__ == "__main__":
    app.run(main)
