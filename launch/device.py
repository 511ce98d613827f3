"""Play the MCU: run the int8 device model on held-out images, offload to a running server.

    python -m launch.device --export_dir=/tmp/agilenn_qs/export --link=wifi_6m --num_samples=500
        [--keys_file=keys.json --device_id=0]

Falls back to the local prediction (and says so) when the server is unreachable or times out.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from agilenn_jax import inference, layout  # noqa: E402
from agilenn_jax.checkpoint import CheckpointError  # noqa: E402
from agilenn_jax.input_pipeline import DatasetError  # noqa: E402
from agilenn_jax.serving import client, codec, evaluation, image_codec  # noqa: E402

_EXPORT = flags.DEFINE_string("export_dir", None, "Export dir written by launch/export.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (default: from the report).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Server address.")
_PORT = flags.DEFINE_integer("port", 50051, "Server port.")
_LINK = flags.DEFINE_enum("link", "wifi_6m", list(client.LINK_PRESETS), "Link preset.")
_BW = flags.DEFINE_float("bandwidth_kbps", None, "Override the preset's bandwidth.")
_RTT = flags.DEFINE_float("rtt_ms", None, "Override the preset's round-trip time.")
_LOSS = flags.DEFINE_float("loss", None, "Override the preset's packet loss rate.")
_CODER = flags.DEFINE_enum(
    "coder", "ctx", sorted(codec.CODERS), "Entropy coder (ctx: what the C firmware sends)."
)
_N = flags.DEFINE_integer("num_samples", 500, "Held-out samples to run.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 2.0, "Server timeout before local fallback.")
_KEYS = flags.DEFINE_string("keys_file", None, "Key file holding this device's key.")
_DEVICE_ID = flags.DEFINE_integer("device_id", 0, "This device's id in the key file.")
_OUT = flags.DEFINE_string("output", None, "Write the JSON report here.")
flags.mark_flag_as_required("export_dir")


def variant_of(config) -> str:
    """The run's label within its method in launch.compare (what distinguishes its variants)."""
    b, method = config.get("baseline"), config.get("method", "agilenn")
    if method == "edge_only":
        return image_codec.image_codec_name(b.image_codec, b.image_quality)
    if method == "deepcod":
        return f"rate={b.rate_weight:g}"
    if method == "spinn":
        return f"b={b.split_block}" + (f",exit@{b.exit_threshold:g}" if b.exit_head else "")
    if method == "local_only":
        return f"width={b.net_width:g}"
    return ""


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    link = client.LINK_PRESETS[_LINK.value]
    link = client.Link(
        link.name,
        _BW.value * 1e3 if _BW.value else link.bandwidth_bps,
        _RTT.value / 1e3 if _RTT.value is not None else link.rtt_s,
        _LOSS.value if _LOSS.value is not None else link.loss,
    )
    try:
        with open(os.path.join(_EXPORT.value, "export_report.json")) as f:
            workdir = _WORKDIR.value or json.load(f)["workdir"]
        creds = client.Credentials.from_file(_KEYS.value, _DEVICE_ID.value) if _KEYS.value else None
        device = client.Device(
            _EXPORT.value,
            _HOST.value,
            _PORT.value,
            link,
            _CODER.value,
            _TIMEOUT.value,
            credentials=creds,
        )
        config = layout.read_config(workdir)
        images, labels = inference.held_out_images(config, _N.value)
        if device.method == "agilenn":
            report = evaluation.run_device(device, workdir, images, labels)
        else:
            report = evaluation.run_baseline_device(device, workdir, images, labels)
        report["workdir"] = os.path.abspath(workdir)
    except (OSError, ValueError, CheckpointError, DatasetError) as e:
        sys.exit(f"error: {e}")
    if device.method == "agilenn":
        print(evaluation.format_device_report(report), flush=True)
    else:
        print(evaluation.format_baseline_report(report), flush=True)
    summary = evaluation.method_summary(device, report, config, variant_of(config))
    layout.write_json(os.path.join(_EXPORT.value, "method_summary.json"), summary)
    if report["fallbacks"]:
        print(
            f"WARNING: {report['fallbacks']} samples fell back to the local prediction "
            "(server unreachable, timed out or refused)"
        )
    out = _OUT.value or os.path.join(_EXPORT.value, f"device_report_{link.name}.json")
    layout.write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
