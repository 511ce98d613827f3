"""Shared test fixtures: the smoke config (and its baselines), shrunk further where a test needs
it, a fake data set with one smoke-sized batch, a server on a background thread, and a runner for
code that needs 8 host devices."""

import asyncio
import contextlib
import os
import subprocess
import sys
import threading

import numpy as np

from agilenn_jax import input_pipeline
from agilenn_jax.serving import server
from experiments.configs import compare, smoke
from tests.conftest import ROOT


def smoke_config(**train_overrides):
    c = smoke.get_config()
    for key, value in train_overrides.items():
        c.train[key] = value
    return c


def smoke_baseline_config(method: str, **overrides):
    """The smoke config turned into ``method`` the way experiments/configs/compare.py does."""
    c = smoke.get_config()
    with c.unlocked():
        compare.apply_method(c, method, paper_scale=False)
    c.baseline.split_block = 1  # the smoke stack has two blocks
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


@contextlib.contextmanager
def serving(srv: server.Server):
    """Run ``srv`` on its own event loop in a background thread; yields the bound port."""
    loop = asyncio.new_event_loop()
    port = loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def fake_data_and_batch(batch_size: int = 64) -> tuple[input_pipeline.Data, dict]:
    """128 blank 8x8 training images (for state templates) and one random smoke-sized batch
    (12x12 inputs, 10 classes) on the host, seeded."""
    split = input_pipeline.Split(np.zeros((128, 8, 8, 3), np.uint8), np.zeros(128, np.int32))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(batch_size, 12, 12, 3)).astype(np.float32),
        "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }
    return input_pipeline.Data(split, split, "val", 10), batch


def run_on_8_devices(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with 8 forced host devices (XLA_FLAGS must be set
    before jax starts, hence the subprocess)."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def assert_int8_verified(report: dict, max_abs_err: float = 0.3) -> None:
    """An export's int8 check on both runtimes (TFLM, TFLite): the worst offloaded feature
    within ``max_abs_err`` of the float model's (0.3: 5% of the ReLU6 range), the mean within
    one int8 step, and >= 95% of the indices the float model's."""
    scale = report["device"]["quant"]["remote_features"]["scale"]
    for runtime in ("tflm", "tflite"):
        v = report["verification"][runtime]
        assert v["features_max_abs_err"] <= max_abs_err, v
        assert v["features_mean_abs_err"] <= scale, v
        assert v["index_agreement"] >= 0.95, v
