"""N concurrent device clients against the remote-NN server for a bounded time (loopback).

    python benchmarks/serve_load.py --workdir=/tmp/agilenn_qs --clients=1,8,32 --seconds=10

Starts the server in-process on 127.0.0.1 (ephemeral port), sends valid range-coded frames of
indices drawn from the export's probability model, and prints throughput, p50/p99 latency,
errors (must be 0) and the mean dynamic batch size for each client count.
"""

import asyncio
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from agilenn_jax.serving import protocol, server  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (with an export).")
_EXPORT = flags.DEFINE_string("export_dir", None, "Export dir (default WORKDIR/export).")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "32"], "Concurrent client counts.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Duration of each load level.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 32, "Server's largest dynamic batch.")
flags.mark_flag_as_required("workdir")


def _client(port, frames, stop_at, lat, errs):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        i = 0
        while time.perf_counter() < stop_at:
            body = frames[i % len(frames)]
            t = time.perf_counter()
            s.sendall(struct.pack("<I", len(body)) + body)
            n = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))[0]
            status, _, _ = protocol.decode_reply(s.recv(n, socket.MSG_WAITALL))
            lat.append(time.perf_counter() - t)
            errs.append(status != protocol.OK)
            i += 1


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    export_dir = _EXPORT.value or os.path.join(_WORKDIR.value, "export")
    codec_, meta = server.load_codec(export_dir)
    remote = server.RemoteModel(_WORKDIR.value, _MAX_BATCH.value)
    shape = tuple(meta["remote_shape"])
    remote.warmup(shape)
    rng = np.random.default_rng(0)
    probs = codec_.model.probs
    frames = []
    for _ in range(64):
        idx = np.stack([rng.choice(len(p), size=shape[:2], p=p) for p in probs], -1)
        frames.append(codec_.encode(idx.astype(np.uint8)))

    loop = asyncio.new_event_loop()
    srv = server.Server(remote, codec_, port=0, max_connections=256)
    port = loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rows = []
    try:
        for n in [int(c) for c in _CLIENTS.value]:
            lat, errs = [], []
            b0 = srv.stats["batches"]
            r0 = srv.stats["requests"]
            stop_at = time.perf_counter() + _SECONDS.value
            threads = [
                threading.Thread(target=_client, args=(port, frames, stop_at, lat, errs))
                for _ in range(n)
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            batches = max(1, srv.stats["batches"] - b0)
            ms = 1e3 * np.asarray(lat)
            rows.append(
                (
                    n,
                    len(lat) / wall,
                    np.percentile(ms, 50),
                    np.percentile(ms, 99),
                    int(sum(errs)),
                    (srv.stats["requests"] - r0) / batches,
                )
            )
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
    print(
        f"\nremote NN server on loopback, frames {np.mean([len(f) for f in frames]):.0f} B, "
        f"{_SECONDS.value:.0f} s per level"
    )
    print(f"{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'batch':>8}")
    for n, rps, p50, p99, e, b in rows:
        print(f"{n:>8}{rps:>10.1f}{p50:>10.2f}{p99:>10.2f}{e:>8}{b:>8.1f}")


if __name__ == "__main__":
    app.run(main)
