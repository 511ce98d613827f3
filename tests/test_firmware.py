"""The generated firmware end to end: C from the smoke export, built for the host and for a
Cortex-M7 (run in QEMU), equal to TFLite / TFLite Micro and to the Python codec byte for byte."""

import os
import subprocess
import sys

import numpy as np
import pytest

from agilenn_jax.deploy import export, firmware, mcu
from tests.conftest import ROOT

CMSIS = os.environ.get(
    "AGILENN_CMSIS_NN", os.path.join(os.path.dirname(ROOT), "shared", "third_party", "CMSIS-NN")
)
_M7_MISSING = mcu.missing_tools("m7")
needs_m7 = pytest.mark.skipif(
    bool(_M7_MISSING),
    reason=f"{', '.join(_M7_MISSING)} not installed (Debian: {' '.join(mcu.DEBIAN_PACKAGES)}; "
    ".ci/run installs them)",
)
needs_cmsis = pytest.mark.skipif(
    not os.path.isdir(CMSIS), reason=f"no CMSIS-NN checkout at {CMSIS} (set AGILENN_CMSIS_NN)"
)


@pytest.fixture(scope="module")
def export_dir(trained_workdir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fw_export"))
    export.export(trained_workdir, out, num_calibration=64, num_verify=16)
    return out


@needs_m7
@needs_cmsis
def test_firmware_equals_tflite_and_python_codec_on_host_and_qemu(export_dir, tmp_path):
    report = firmware.check(
        export_dir, str(tmp_path / "fw"), firmware.BACKENDS, CMSIS, num_samples=24
    )
    for backend in firmware.BACKENDS:
        e = report["backends"][backend]
        for target in firmware.TARGETS:
            r = e[target]
            assert r["all_identical"], (backend, target, r)
            assert r["frames_decoded_by_server"] == r["samples"] == 24
        s = e["m7"]["speed"]
        assert set(s["instructions_per_layer"]) == {x["name"] for x in e["plan"]["layers"]}
        assert all(v > 0 for v in s["instructions_per_layer"].values())
        assert s["instructions_encoder"] > 0 and 0 < s["stack_bytes_max"] < 16384
        fp = e["footprint"]
        assert fp["model"]["flash"] > 0 and fp["encoder"]["flash"] > 0
        assert (fp["cmsis_nn"]["flash"] > 0) == (backend == "cmsis")
        assert e["m7"]["library_ram_bytes"] >= e["plan"]["arena_bytes"]
    with open(os.path.join(tmp_path, "fw", firmware.REPORT_FILE)) as f:
        assert '"all_identical": true' in f.read()
    assert "instructions" in firmware.format_report(report)


def test_firmware_errors_name_the_problem(export_dir, tmp_path):
    with pytest.raises(firmware.FirmwareError, match="not an export"):
        firmware.check(str(tmp_path), str(tmp_path / "o"), ("portable",), targets=("host",))
    with pytest.raises(firmware.FirmwareError, match="CMSIS"):
        firmware.check(
            export_dir, str(tmp_path / "o"), ("cmsis",), "/nonexistent/cmsis", 4, ("host",)
        )
    with pytest.raises(firmware.FirmwareError, match="unknown backend"):
        firmware.check(export_dir, str(tmp_path / "o"), ("tinyengine",), None, 4, ("host",))


def test_device_output_parser_rejects_short_and_long_output():
    blob = bytes(3 + 2 * 2 * 1) + (5).to_bytes(4, "little") + b"frame" + bytes(4 * 3)
    out = mcu.parse_outputs(blob, 1, 3, (2, 2, 1), 1)
    assert out.frames == [b"frame"] and out.features.shape == (1, 2, 2, 1)
    with pytest.raises(mcu.ToolchainError, match="ends inside sample"):
        mcu.parse_outputs(blob[:-1], 1, 3, (2, 2, 1), 1)
    with pytest.raises(mcu.ToolchainError, match="trailing"):
        mcu.parse_outputs(blob + b"x", 1, 3, (2, 2, 1), 1)
    np.testing.assert_array_equal(out.logits, np.zeros((1, 3), np.int8))


def test_firmware_cli_on_the_host_with_a_relative_output_dir(export_dir, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "firmware.py"),
            f"--export_dir={export_dir}",
            "--output_dir=fw",  # relative: the program runs in a temporary directory
            "--backends=portable",
            "--targets=host",
            "--num_samples=8",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "AgileNN firmware" in r.stdout and "frames=Python 8/8" in r.stdout
    assert os.path.exists(tmp_path / "fw" / firmware.REPORT_FILE)
