"""The launcher's host settings: what it adds, what it keeps, and that it re-executes once."""

import os
import subprocess
import sys

import pytest

from agilenn_jax import host_tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tuned_environ_adds_the_settings_and_keeps_the_users():
    env = host_tuning.tuned_environ(
        {"MALLOC_ARENA_MAX": "4", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
    assert env["MALLOC_ARENA_MAX"] == "4"  # the user's value wins
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        *host_tuning.XLA_CPU_FLAGS,
    ]
    assert host_tuning.applied(env) and not host_tuning.wanted(env)  # once only
    # a flag the user set either way is left alone
    off = host_tuning.tuned_environ(
        {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=false"}
    )
    assert off["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def test_untuned_environ_undoes_it_and_switches_off():
    base = {"PATH": "/bin", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env = host_tuning.untuned_environ(host_tuning.tuned_environ(base))
    assert env == {**base, host_tuning.SWITCH: "0"}
    assert not host_tuning.wanted(env)


def test_switch_off_values():
    for v in ("0", "false", "off", "applied"):
        assert not host_tuning.wanted({host_tuning.SWITCH: v})


@pytest.mark.skipif(not host_tuning.wanted({}), reason="re-exec only on Linux with glibc")
def test_reexec_replaces_the_process_once_with_the_settings():
    code = (
        f"import os, sys; sys.path.insert(0, {ROOT!r}); from agilenn_jax import host_tuning;"
        "print(os.getpid(), os.environ.get('AGILENN_HOST_TUNING'), flush=True);"
        "host_tuning.reexec_tuned();"
        "print(os.getpid(), os.environ.get('MALLOC_MMAP_MAX_'), os.environ['XLA_FLAGS'])"
    )
    env = host_tuning.untuned_environ(os.environ)
    env.pop(host_tuning.SWITCH)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    pid = out[0].split()[0]
    assert out[0] == f"{pid} None"  # before: untuned
    assert out[1] == f"{pid} applied"  # the same process, re-executed once (no third line)
    assert out[2] == f"{pid} 0 " + " ".join(host_tuning.XLA_CPU_FLAGS)
    assert out[3] == ""
