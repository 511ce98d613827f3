"""Serve a trained run's remote NN over TCP (loopback by default) until SIGTERM/SIGINT.

    python -m launch.serve --workdir=/tmp/agilenn_qs [--export_dir=/tmp/agilenn_qs/export]
    python -m launch.serve --workdir=... --host=0.0.0.0 --keys_file=keys.json   # beyond loopback

Beyond loopback the server requires device keys (``python -m launch.keys``) unless
``--allow_unauthenticated`` is given; see ``agilenn_jax/serving/protocol.py`` for what the
authentication protects and what it does not.
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from agilenn_jax.checkpoint import CheckpointError  # noqa: E402
from agilenn_jax.serving import server  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
_EXPORT = flags.DEFINE_string("export_dir", None, "Export dir (default WORKDIR/export).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
_PORT = flags.DEFINE_integer("port", 50051, "Port to bind (0: any free port).")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 32, "Largest dynamic batch.")
_DELAY = flags.DEFINE_float("max_delay_ms", 2.0, "How long a request waits for batch-mates.")
_CONNS = flags.DEFINE_integer("max_connections", 64, "Concurrent connections allowed.")
_FRAME = flags.DEFINE_integer("max_frame_bytes", 1 << 20, "Largest accepted frame.")
_READY = flags.DEFINE_string("ready_file", None, "Write the bound port here once serving.")
_KEYS = flags.DEFINE_string("keys_file", None, "Device keys: serve authenticated requests only.")
_INSECURE = flags.DEFINE_bool(
    "allow_unauthenticated", False, "Serve beyond loopback without device keys (unsafe)."
)
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        asyncio.run(
            server.serve(
                _WORKDIR.value,
                _EXPORT.value or os.path.join(_WORKDIR.value, "export"),
                _HOST.value,
                _PORT.value,
                _MAX_BATCH.value,
                _DELAY.value,
                _CONNS.value,
                _FRAME.value,
                _READY.value,
                _KEYS.value,
                _INSECURE.value,
            )
        )
    except (FileNotFoundError, CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
