"""Build and run the generated device firmware for an export: host binary + Cortex-M7 ELF in QEMU.

    python -m launch.firmware --export_dir=/tmp/agilenn_qs/export \
        --cmsis_root=../shared/third_party/CMSIS-NN

Generates the C library (both kernel back-ends: portable C and CMSIS-NN) and the C entropy
encoder, builds them for the host and for QEMU's mps2-an500 (Cortex-M7), runs both on held-out
samples and writes EXPORT_DIR/firmware/firmware_report.json: outputs vs TFLite and TFLite Micro,
frames vs the Python codec, flash/RAM, instructions per layer and estimated milliseconds.
Needs the Debian packages gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from agilenn_jax.deploy import firmware, mcu  # noqa: E402
from agilenn_jax.input_pipeline import DatasetError  # noqa: E402

_EXPORT = flags.DEFINE_string("export_dir", None, "An export (python -m launch.export).")
_OUT = flags.DEFINE_string("output_dir", None, "Where to build (default EXPORT_DIR/firmware).")
_BACKENDS = flags.DEFINE_list("backends", list(firmware.BACKENDS), "Kernel back-ends to build.")
_TARGETS = flags.DEFINE_list("targets", list(firmware.TARGETS), "host and/or m7 (QEMU).")
_CMSIS = flags.DEFINE_string(
    "cmsis_root",
    os.environ.get("AGILENN_CMSIS_NN"),
    "A CMSIS-NN checkout (needed for --backends=cmsis; default $AGILENN_CMSIS_NN).",
)
_NUM = flags.DEFINE_integer("num_samples", 200, "Held-out samples to run.")
flags.mark_flag_as_required("export_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    out = _OUT.value or os.path.join(_EXPORT.value, "firmware")
    try:
        report = firmware.check(
            _EXPORT.value, out, _BACKENDS.value, _CMSIS.value, _NUM.value, _TARGETS.value
        )
    except (firmware.FirmwareError, mcu.ToolchainError, DatasetError) as e:
        sys.exit(f"error: {e}")
    print(firmware.format_report(report), flush=True)
    print(f"wrote {os.path.join(out, firmware.REPORT_FILE)}")


if __name__ == "__main__":
    app.run(main)
