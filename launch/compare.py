"""The paper's method comparison (AgileNN vs Edge-only, MCUNet-style local-only, DeepCOD-style,
SPINN-style) from per-run method_summary.json files: OUT/compare.md, .csv, .json and four PNGs.

    python -m launch.compare --runs=DIR1,DIR2 --out=DIR [--band=0.10] [--paper_dataset=CIFAR-10]

Each --runs entry is a method_summary.json or a directory searched recursively for them. Broken
summaries are listed in compare.md, not fatal; no usable run at all is an error.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from agilenn_jax import compare  # noqa: E402

_RUNS = flags.DEFINE_list(
    "runs", None, "Comma-separated method_summary.json files or directories to search."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (created if needed).")
_BAND = flags.DEFINE_float(
    "band", 0.10, "Fairness band: absolute accuracy a baseline may differ from AgileNN's."
)
_PAPER = flags.DEFINE_enum(
    "paper_dataset", "CIFAR-10", compare.PAPER_DATASETS, "The paper's Fig 16 rows to show."
)
_PLOTS = flags.DEFINE_bool("plots", True, "Also draw the PNG plots (matplotlib, Agg backend).")
flags.mark_flags_as_required(["runs", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        built = compare.build(_RUNS.value, _OUT.value, _BAND.value, _PAPER.value, _PLOTS.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(built["markdown"], end="")
    print(f"{built['runs']} usable run(s), {len(built['problems'])} unusable")
    print("wrote", built["md"], built["csv"], built["json"], *built["plots"], sep="\n  ")


if __name__ == "__main__":
    app.run(main)
