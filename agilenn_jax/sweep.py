"""Sweeps: grids of config overrides declared next to the config, one workdir per point.

A config module may define ``get_sweep(arg) -> list[dict]``: each point is a flat dict of dotted
config keys to values (``{"loss.rho": 0.8, "seed": 1}``), built with ``product``, ``zip_`` and
``with_seeds``. ``run`` starts each point as its own ``python -m launch.main`` process in
``ROOT/point_name(point)``: a point whose ``results.json`` reads back is skipped, an unfinished
one resumes (launch.main resumes from its workdir), a failed one is recorded in
``ROOT/sweep_status.json`` and ``ROOT/NAME.log`` and the sweep goes on. ``ROOT/sweep.json``
keeps the config and every point's overrides for the report (``agilenn_jax.report``).

Points are separate processes, not threads in one: a crash, NaN or OOM in one point cannot take
the others down, and a cluster scheduler can run the very same commands (``shell_lines``).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections

from agilenn_jax import layout

Point = dict[str, Any]

SWEEP_FILE = "sweep.json"
STATUS_FILE = "sweep_status.json"
CACHE_DIR = "jax_compilation_cache"
MAX_NAME = 120
TAIL_LINES = 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def product(**axes: Sequence[Any]) -> list[Point]:
    """Every combination of the axes' values (the last axis varies fastest).

    Dotted keys go in as ``product(**{"loss.rho": (0.7, 0.9), "model.k": (-1,)})``; an axis of
    one value sets that key on every point.
    """
    for key, values in axes.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep axis {key!r} needs a non-empty list of values, got {values!r}")
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def zip_(**axes: Sequence[Any]) -> list[Point]:
    """Axes varied together: point i takes the i-th value of every axis (equal lengths)."""
    lengths = {key: len(values) for key, values in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_ needs axes of equal length, got {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in zip(*axes.values(), strict=True)]


def with_seeds(points: Iterable[Point], seeds: Iterable[int]) -> list[Point]:
    """Each point once per seed (``seed`` key added), so the report can average over seeds."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("with_seeds needs at least one seed")
    out = []
    for point in points:
        if "seed" in point:
            raise ValueError(f"point {point} already sets seed; with_seeds would overwrite it")
        out.extend({**point, "seed": s} for s in seeds)
    return out


def _name_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "x".join(_name_value(v) for v in value) or "empty"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_name(overrides: Point) -> str:
    """A stable, filesystem-safe workdir name: ``key=value`` pairs, sorted, comma-separated.

    Characters other than letters, digits and ``._+-`` become ``_``; a name longer than
    MAX_NAME characters is cut and ends in a hash of the full overrides, so it stays unique.
    """
    if not overrides:
        return "base"
    parts = [f"{k}={_UNSAFE.sub('_', _name_value(overrides[k]))}" for k in sorted(overrides)]
    name = ",".join(parts)
    if len(name) > MAX_NAME:
        canon = json.dumps(sorted(overrides.items()), default=repr).encode()
        name = f"{name[: MAX_NAME - 11]}#{hashlib.sha1(canon).hexdigest()[:10]}"
    return name


def render_value(value: Any) -> str:
    """A value as ``--config.KEY=...`` text that ml_collections' config_flags parses back exactly
    (bools as true/false, floats by repr, tuples as Python literals, strings verbatim)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return repr(_as_tuple(value))
    raise ValueError(f"{value!r} ({type(value).__name__}) cannot be passed as a --config override")


def _as_tuple(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return tuple(_as_tuple(v) for v in value)
    if value is None or isinstance(value, dict):
        raise ValueError(f"{value!r} cannot be passed inside a --config tuple override")
    return value


def main_command(config: str, workdir: str, overrides: Point, python: str = "python3") -> list[str]:
    """The ``launch.main`` argv that trains one point."""
    argv = [python, "-m", "launch.main", f"--config={config}", f"--workdir={workdir}"]
    argv += [f"--config.{k}={render_value(overrides[k])}" for k in sorted(overrides)]
    return argv


def load_module(config: str) -> tuple[Any, str | None]:
    """The config module of ``FILE[:ARG]`` and its argument, loaded like config_flags does."""
    path, _, arg = config.partition(":")
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError(f"--config={config}: {path!r} is not a config .py file")
    spec = importlib.util.spec_from_file_location("agilenn_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, (arg if ":" in config else None)


def _check_point(i: int, point: Any, base: ml_collections.ConfigDict) -> None:
    if not isinstance(point, dict) or not all(isinstance(k, str) for k in point):
        raise ValueError(f"sweep point {i} is not a dict of dotted config keys: {point!r}")
    for key, value in point.items():
        parts = key.split(".")
        target = base
        for part in parts[:-1]:
            target = target.get(part) if isinstance(target, ml_collections.ConfigDict) else None
        if not isinstance(target, ml_collections.ConfigDict) or parts[-1] not in target:
            raise ValueError(f"sweep point {i}: {key!r} is not a key of the config")
        current = target[parts[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise ValueError(f"sweep point {i}: {key!r} is a section; override its fields")
        if value is None or isinstance(value, bool) != isinstance(current, bool):
            raise ValueError(f"sweep point {i}: {key}={value!r} does not fit {current!r}")
        try:
            target[parts[-1]] = value
            render_value(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"sweep point {i}: {key}={value!r}: {e}") from None
        target[parts[-1]] = current


def load_points(config: str) -> list[tuple[str, Point]]:
    """``(name, overrides)`` of every point of ``FILE:ARG``'s ``get_sweep(ARG)``, checked
    against ``get_config(ARG)`` (keys exist, types fit, names unique) before anything runs."""
    module, arg = load_module(config)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{config.partition(':')[0]} defines no get_sweep(arg)")
    points = module.get_sweep(arg)
    if not isinstance(points, list) or not points:
        raise ValueError(f"get_sweep({arg!r}) returned no list of points: {points!r}")
    base = module.get_config(arg) if arg is not None else module.get_config()
    named: dict[str, Point] = {}
    for i, point in enumerate(points):
        _check_point(i, point, base)
        name = point_name(point)
        if name in named:
            raise ValueError(f"sweep points {named[name]} and {point} share the name {name!r}")
        named[name] = point
    return list(named.items())


def select(points: list[tuple[str, Point]], only: Sequence[str]) -> list[tuple[str, Point]]:
    """The points whose name contains every string of ``only`` (all when it is empty).

    Every, not any: names hold commas, so ``--only=`` with a whole name (split at its commas)
    picks exactly that point, and ``--only=loss.rho=0.8,seed=1`` the intersection.
    """
    if not only:
        return points
    chosen = [(n, p) for n, p in points if all(s in n for s in only)]
    if not chosen:
        raise ValueError(f"no sweep point name contains all of {list(only)}")
    return chosen


def read_results(workdir: str) -> dict[str, Any] | None:
    """A finished point's results, or None (missing, unreadable or not a JSON object)."""
    return layout.read_results(workdir)[0]


def shell_lines(config: str, root: str, points: list[tuple[str, Point]]) -> list[str]:
    """One shell-quoted ``launch.main`` command per point, for any scheduler."""
    return [shlex.join(main_command(config, os.path.join(root, n), p)) for n, p in points]


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); move it away to continue") from None
    return data if isinstance(data, dict) else {}


def record(config: str, root: str, points: list[tuple[str, Point]]) -> None:
    """Write (merge into) ``ROOT/sweep.json``: the config and each point's overrides.

    A root holds one config: a second config refuses, so points of two sweeps never mix.
    """
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, SWEEP_FILE)
    data = _read_json(path)
    if data.get("config", config) != config:
        raise ValueError(
            f"{root} already holds a sweep of --config={data['config']}; use another --root"
        )
    known = data.get("points", {})
    known.update({n: p for n, p in points})
    layout.write_json(path, {"config": config, "points": known})


def _tail(path: str, start: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    return [line for line in lines if line.strip()][-TAIL_LINES:]


class _Runner:
    """Runs points as subprocesses, keeps ``sweep_status.json`` current, prints progress."""

    def __init__(self, config: str, root: str, total: int, python: str, out: Callable) -> None:
        self.config, self.root, self.total, self.python, self.out = config, root, total, python, out
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False
        self.status_path = os.path.join(root, STATUS_FILE)
        self.status = _read_json(self.status_path)
        self.status.setdefault("points", {})
        self.env = dict(os.environ)
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + path if path else "")
        # Points that differ only in seed compile the same programs: share the compiled binaries.
        self.env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, CACHE_DIR))

    def update(self, name: str, **entry: Any) -> None:
        with self.lock:
            self.status["config"] = self.config
            self.status["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
            self.status["points"][name] = entry
            layout.write_json(self.status_path, self.status)

    def run_point(self, index: int, name: str, overrides: Point) -> str:
        tag = f"[{index}/{self.total}] {name}"
        workdir = os.path.join(self.root, name)
        log = os.path.join(self.root, f"{name}.log")
        if read_results(workdir) is not None:
            self.out(f"{tag}: finished before, skipped")
            self.update(name, state="finished", log=os.path.basename(log))
            return "skipped"
        results_path = os.path.join(workdir, layout.RESULTS_FILE)
        if os.path.exists(results_path):
            # Unreadable: kept aside for inspection; the rerun re-evaluates and writes a new one.
            os.replace(results_path, results_path + ".unreadable")
        argv = main_command(self.config, workdir, overrides, self.python)
        with self.lock:
            if self.stopping:
                return "cancelled"
        resumed = os.path.isdir(workdir)
        self.out(f"{tag}: {'resuming' if resumed else 'starting'}")
        self.update(name, state="running", log=os.path.basename(log))
        t0 = time.time()
        with open(log, "ab") as f:
            stamp = datetime.datetime.now().isoformat(timespec="seconds")
            f.write(f"=== {stamp} {shlex.join(argv)}\n".encode())
            f.flush()
            start = f.tell()
            with self.lock:  # stop() sees every process started, or none starts after it
                if self.stopping:
                    return "cancelled"
                proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=self.env)
                self.procs.add(proc)
            rc = proc.wait()
            with self.lock:
                self.procs.discard(proc)
        seconds = round(time.time() - t0, 1)
        if self.stopping:
            self.out(f"{tag}: interrupted after {seconds:.0f} s (resumes on the next run)")
            self.update(name, state="interrupted", seconds=seconds, log=os.path.basename(log))
            return "interrupted"
        results = read_results(workdir)
        if rc == 0 and results is not None:
            acc = results.get("test_accuracy")
            acc = f"{acc:.4f}" if isinstance(acc, float) else acc
            self.out(f"{tag}: finished in {seconds:.0f} s (test_accuracy {acc})")
            self.update(name, state="finished", seconds=seconds, log=os.path.basename(log))
            return "finished"
        tail = _tail(log, start)
        why = f"exit code {rc}" if rc else "exit code 0 but no readable results.json"
        self.out(f"{tag}: FAILED ({why}) after {seconds:.0f} s: {tail[-1] if tail else ''}")
        self.out(f"    see {log}")
        self.update(
            name,
            state="failed",
            returncode=rc,
            seconds=seconds,
            log=os.path.basename(log),
            stderr_tail=tail,
        )
        return "failed"

    def stop(self) -> None:
        """Interrupted: start no new point and stop the running ones (they resume next time)."""
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(
    config: str,
    root: str,
    points: list[tuple[str, Point]],
    parallel: int = 1,
    python: str = sys.executable,
    out: Callable[[str], None] | None = None,
) -> dict[str, list[str]]:
    """Run ``points`` (``load_points``/``select``), ``parallel`` at a time; returns the names
    by outcome: finished, skipped (finished before) and failed."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    record(config, root, points)
    out = out or (lambda line: print(line, flush=True))
    runner = _Runner(config, root, len(points), python, out)
    outcome: dict[str, list[str]] = {"finished": [], "skipped": [], "failed": []}
    out(f"sweep of {len(points)} point(s) of --config={config} in {root}, {parallel} at a time")
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            pool.submit(runner.run_point, i, name, p): name for i, (name, p) in enumerate(points, 1)
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                state = future.result()
                if state in outcome:
                    outcome[state].append(futures[future])
        except BaseException:
            runner.stop()
            raise
    out(
        f"sweep done: {len(outcome['finished'])} finished now, {len(outcome['skipped'])} "
        f"finished before, {len(outcome['failed'])} failed"
        + (f" ({', '.join(outcome['failed'])})" if outcome["failed"] else "")
    )
    return outcome
