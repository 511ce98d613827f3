"""Export a trained run's device side to TFLite (float32 + int8) for TFLite Micro.

    python -m launch.export --workdir=/tmp/agilenn_qs --output_dir=/tmp/agilenn_qs/export

Writes device_{float32,int8}.tflite, agilenn_device_model.{h,cc}, device_meta.json and
export_report.json, and prints the verification table.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from agilenn_jax.deploy import export  # noqa: E402
from agilenn_jax.input_pipeline import DatasetError  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run (has config.json).")
_OUT = flags.DEFINE_string(
    "output_dir", None, "Where to write the export (default WORKDIR/export)."
)
_CALIB = flags.DEFINE_integer("num_calibration", 200, "Training images for int8 calibration.")
_VERIFY = flags.DEFINE_integer("num_verify", 200, "Held-out images for verification.")
_OVER = flags.DEFINE_bool(
    "allow_over_budget",
    False,
    "Write the export even if it does not fit the STM32F746 flash/SRAM budget.",
)
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    out = _OUT.value or os.path.join(_WORKDIR.value, "export")
    try:
        report = export.export(_WORKDIR.value, out, _CALIB.value, _VERIFY.value, _OVER.value)
    except (export.ExportError, DatasetError) as e:
        sys.exit(f"error: {e}")
    print(export.format_report(report), flush=True)
    print(f"wrote {out}/export_report.json")


if __name__ == "__main__":
    app.run(main)
