"""Run every point of a config's sweep, each as its own ``launch.main`` process and workdir.

    python -m launch.sweep --config=experiments/configs/quickstart.py:size=fast,sweep=rho_split \
        --root=workdirs/qs_rho_split [--parallel=1] [--only=seed=0,...] [--dry_run]
        [--emit=commands.txt] [--report=false]

``FILE:ARG`` goes to both ``get_sweep(ARG)`` (the points) and ``get_config(ARG)`` (each point's
base config). Rerunning the same command skips finished points and resumes unfinished ones; a
failed point is recorded in ROOT/sweep_status.json and ROOT/NAME.log and the others go on. At
the end ROOT/results.csv, ROOT/report.md and plots are written (``launch.report`` does only
that). ``--emit`` writes the commands of the points still to run, one shell line each, for a
cluster scheduler; ``--dry_run`` prints them. Exit status 1 when any point failed.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from agilenn_jax import report, sweep  # noqa: E402

_CONFIG = flags.DEFINE_string("config", None, "FILE[:ARG] of a config that defines get_sweep.")
_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per point.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at the same time (each is a process).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands still to run; run nothing.")
_ONLY = flags.DEFINE_list("only", [], "Run only points whose name contains all of these.")
_EMIT = flags.DEFINE_string("emit", None, "Write the commands still to run to this file.")
_REPORT = flags.DEFINE_bool("report", True, "Write results.csv, report.md and plots at the end.")
flags.mark_flags_as_required(["config", "root"])


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, root = _CONFIG.value, _ROOT.value
    try:
        points = sweep.select(sweep.load_points(config), _ONLY.value)
        todo = [(n, p) for n, p in points if sweep.read_results(os.path.join(root, n)) is None]
        if _DRY_RUN.value or _EMIT.value:
            lines = sweep.shell_lines(config, root, todo)
            print(f"# {len(todo)} of {len(points)} point(s) still to run", file=sys.stderr)
            if _EMIT.value:
                sweep.record(config, root, points)  # the report needs the overrides later
                with open(_EMIT.value, "w") as f:
                    f.write("".join(line + "\n" for line in lines))
                print(f"# wrote {_EMIT.value}", file=sys.stderr)
            else:
                print("\n".join(lines))
            return
        # A scheduler's SIGTERM stops the running points cleanly, as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        outcome = sweep.run(config, root, points, parallel=_PARALLEL.value)
        if _REPORT.value:
            built = report.build(root)
            print(f"report: {built['report']} ({len(built['plots'])} plot(s), {built['csv']})")
    except ValueError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the running points were stopped; rerun the command to resume")
    if outcome["failed"]:
        sys.exit(f"{len(outcome['failed'])} point(s) failed; see {root}/sweep_status.json")


if __name__ == "__main__":
    app.run(main)
