"""Process settings that make XLA:CPU training fast on Linux, applied by re-executing once.

Why: XLA:CPU allocates a step's temporaries afresh every step (1.4 GB for the AgileNN step at
``paper.py:scale=cpu``). glibc serves them from fresh 4 KiB pages, so every step pays page
faults and TLB misses; keeping freed memory in one arena and backing it with transparent huge
pages makes the same steps 1.5-1.8x faster (README, "Benchmarks"). glibc reads these tunables
only when a process starts, hence the re-exec. The XLA flag only changes the order XLA:CPU runs
independent ops in (same arithmetic, so same numbers). None of it changes results.

``AGILENN_HOST_TUNING=0`` in the environment turns it off; values already in the environment
are kept. Standard library only: it runs before jax is imported.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

SWITCH = "AGILENN_HOST_TUNING"
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",  # large blocks from the heap, not from a fresh mmap each time
    "MALLOC_TRIM_THRESHOLD_": str(2**36),  # never hand freed memory back to the kernel
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",  # madvise the heap for transparent huge pages
}
XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=true",)


def tuned_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus the settings above; the caller's own values win."""
    env = dict(environ)
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    xla = env.get("XLA_FLAGS", "")
    for flag in XLA_CPU_FLAGS:
        if flag.split("=")[0] not in xla:
            xla = f"{xla} {flag}".strip()
    env["XLA_FLAGS"] = xla
    env[SWITCH] = "applied"
    return env


def untuned_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without what ``tuned_environ`` adds, and switched off: the default process
    a benchmark compares against."""
    env = {k: v for k, v in environ.items() if k not in MALLOC_ENV}
    names = {f.split("=")[0] for f in XLA_CPU_FLAGS}
    xla = [f for f in env.get("XLA_FLAGS", "").split() if f.split("=")[0] not in names]
    if xla:
        env["XLA_FLAGS"] = " ".join(xla)
    else:
        env.pop("XLA_FLAGS", None)
    env[SWITCH] = "0"
    return env


def applied(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(SWITCH) == "applied"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Re-exec only on Linux with glibc, once, and unless switched off."""
    if environ.get(SWITCH, "1").lower() in ("0", "false", "no", "off", "applied"):
        return False
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def reexec_tuned() -> None:
    """Replace this process by the same command with the tuned environment (if ``wanted``).

    Call it first thing in a launcher's ``__main__``, before jax is imported.
    """
    if not wanted():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, tuned_environ(os.environ))
