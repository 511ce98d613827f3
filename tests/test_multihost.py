"""JAX's multi-controller runtime on one machine: 2 CPU processes, a coordinator on 127.0.0.1.

Slow (each launch compiles the second-order IG step for its own device topology), so marked
``slow``: ``python3 -m pytest -q -m slow tests/test_multihost.py``.
"""

import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from agilenn_jax import inference, layout
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SMOKE = ["-m", "launch.main", "--config=experiments/configs/smoke.py", "--mode=train"]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(workdir, steps):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = [f"--workdir={workdir}", f"--config.train.stop_after_steps={steps}"]
    r = subprocess.run(
        [sys.executable, *SMOKE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _two_processes(workdir, steps):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *SMOKE,
                f"--workdir={workdir}",
                f"--config.train.stop_after_steps={steps}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [err for _, err in outs]


def test_two_processes_match_one_process_and_resume_exactly(trained_workdir, tmp_path):
    ref = os.path.join(trained_workdir, layout.REFERENCE_DIR)
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    for wd in (single, multi):
        shutil.copytree(ref, os.path.join(wd, layout.REFERENCE_DIR))

    _single_process(single, 8)  # uninterrupted, one process, 2 devices
    logs = _two_processes(multi, 4)  # 2 processes x 1 device, interrupted at step 4 ...
    assert "over 2 process(es)" in logs[0]
    assert inference.load_run(multi).step == 4
    _two_processes(multi, 4)  # ... and resumed to step 8

    a, b = inference.load_run(single), inference.load_run(multi)
    assert a.step == b.step == 8
    assert a.meta["channel_perm"] == b.meta["channel_perm"]  # Algorithm 1 ran split too
    diff = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a.variables, b.variables)
    assert max(jax.tree.leaves(diff)) <= 1e-6, diff
