"""Aggregate a sweep's workdirs into ROOT/results.csv, ROOT/report.md and PNG plots.

    python -m launch.report --root=workdirs/qs_rho_split [--plots=false]

Works on a sweep still running (unfinished points are listed, not averaged) and on a directory
of runs without sweep.json (overrides recovered from each workdir's config.json).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from agilenn_jax import report  # noqa: E402

_ROOT = flags.DEFINE_string("root", None, "The sweep's root directory (one workdir per point).")
_PLOTS = flags.DEFINE_bool("plots", True, "Also draw the PNG plots (matplotlib, Agg backend).")
flags.mark_flags_as_required(["root"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        built = report.build(_ROOT.value, plots=_PLOTS.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{built['finished']} of {built['points']} point(s) finished")
    for line in built["problems"]:
        print(f"  {line}")
    print(f"wrote {built['csv']}, {built['report']}", *built["plots"], sep="\n  ")


if __name__ == "__main__":
    app.run(main)
