"""Provision device keys for an authenticated server.

    python -m launch.keys --out=keys.json --device_ids=0,1,2

Writes one random 256-bit key per device (file mode 0600). The server loads the whole file
(``launch.serve --keys_file``); each device gets its own entry (``launch.device --keys_file
--device_id``). Removing a device's line from the server's file revokes it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from agilenn_jax.serving import protocol  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Key file to write (must not exist).")
_IDS = flags.DEFINE_list("device_ids", ["0"], "Device ids to provision.")
flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if os.path.exists(_OUT.value):
        sys.exit(f"error: {_OUT.value} exists; refusing to overwrite keys")
    try:
        ids = [int(d) for d in _IDS.value]
    except ValueError:
        sys.exit(f"error: --device_ids must be integers, got {_IDS.value}")
    protocol.save_keys(_OUT.value, protocol.generate_keys(ids))
    print(f"wrote keys for devices {ids} to {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
