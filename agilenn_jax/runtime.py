"""The online half of AgileNN: a remote-NN server and a device client over a real TCP socket.

Wire format: every message is ``u32 length | body``. A request body is one codec frame
(``agilenn_jax.codec``). A reply body is ``"AGNR" | status u8 | server_ms f32 | n u16 | data``:
``n`` float32 remote logits when status is OK, else an n-byte UTF-8 error message. The server
never trusts a client: bad frames get an error reply and the connection stays usable; frames
over ``max_frame_bytes`` and connections over ``max_connections`` are refused with a reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from agilenn_jax import codec, export, input_pipeline, train

LEN = struct.Struct("<I")
REPLY = struct.Struct("<4sBfH")
REPLY_MAGIC = b"AGNR"
OK, BAD_FRAME, TOO_LARGE, BUSY, INTERNAL = range(5)
STATUS_NAMES = {
    OK: "ok",
    BAD_FRAME: "bad frame",
    TOO_LARGE: "too large",
    BUSY: "busy",
    INTERNAL: "internal error",
}


@dataclasses.dataclass(frozen=True)
class Link:
    """An emulated wireless link: bandwidth, round-trip time and per-packet loss."""

    name: str
    bandwidth_bps: float
    rtt_s: float
    loss: float = 0.0
    mtu_bytes: int = 1500

    def transmit_seconds(self, nbytes: int, rng: np.random.Generator) -> float:
        """Uplink serialisation + one RTT; each lost packet costs a retransmission (one RTT
        plus its own serialisation)."""
        packets = max(1, math.ceil(nbytes / self.mtu_bytes))
        lost = int(rng.binomial(packets, self.loss)) if self.loss > 0 else 0
        per_packet = min(nbytes, self.mtu_bytes) * 8 / self.bandwidth_bps
        return nbytes * 8 / self.bandwidth_bps + self.rtt_s + lost * (self.rtt_s + per_packet)


# Bandwidths as in the paper (BLE 270 kbps / 2 Mbps, WiFi ~6 Mbps); RTTs are assumptions for a
# one-hop link to a nearby server (BLE connection interval ~7.5-15 ms, WiFi ~2 ms).
LINK_PRESETS = {
    "ble_270k": Link("ble_270k", 270e3, 0.015),
    "ble_2m": Link("ble_2m", 2e6, 0.0075),
    "wifi_6m": Link("wifi_6m", 6e6, 0.002),
}


def encode_reply(
    status: int, server_ms: float, logits: np.ndarray | None = None, message: str = ""
) -> bytes:
    if status == OK:
        data = np.asarray(logits, "<f4").tobytes()
        n = len(logits)
    else:
        data = message.encode()[:1000]
        n = len(data)
    return REPLY.pack(REPLY_MAGIC, status, server_ms, n) + data


def decode_reply(body: bytes) -> tuple[int, float, np.ndarray | str]:
    if len(body) < REPLY.size:
        raise ConnectionError("truncated reply")
    magic, status, server_ms, n = REPLY.unpack_from(body)
    if magic != REPLY_MAGIC:
        raise ConnectionError("bad reply magic")
    data = body[REPLY.size :]
    if status == OK:
        return status, server_ms, np.frombuffer(data, "<f4", count=n).copy()
    return status, server_ms, data.decode(errors="replace")


# --------------------------------------------------------------------------- the remote side


class RemoteModel:
    """The remote NN of a trained workdir, jitted on centroid indices, batch sizes bucketed to
    powers of two so dynamic batching compiles at most log2(max_batch) + 1 programs."""

    def __init__(self, workdir: str, max_batch: int = 32):
        config = export.load_workdir_config(workdir)
        try:
            state, _ = train.load_agilenn(config, None, workdir, train.make_mesh())
        except train.CheckpointError as e:
            raise export.ExportError(str(e)) from None
        model = train.build_agilenn(config)
        variables = jax.device_get(state.variables())
        self.centroids = jnp.asarray(model.apply(variables, method="centroids"))
        self.num_classes = int(config.data.num_classes)
        self.max_batch = int(max_batch)
        self._fn = jax.jit(
            lambda idx: model.apply(
                variables, self.centroids[idx.astype(jnp.int32)], method="server"
            )
        )

    def bucket(self, n: int) -> int:
        return min(self.max_batch, 1 << max(0, (n - 1).bit_length()))

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """indices [B, H, W, C_r] uint8 -> remote logits [B, num_classes]."""
        n = indices.shape[0]
        b = self.bucket(n)
        padded = np.zeros((b, *indices.shape[1:]), np.uint8)
        padded[:n] = indices
        return np.asarray(self._fn(padded))[:n]

    def warmup(self, shape: tuple[int, int, int]) -> None:
        b = 1
        while b <= self.max_batch:
            self(np.zeros((b, *shape), np.uint8))
            b *= 2


class Server:
    """asyncio TCP server: decode frames, dynamically batch them through the remote NN."""

    def __init__(
        self,
        remote: RemoteModel,
        codec_: codec.Codec,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = 1 << 20,
        max_connections: int = 64,
        max_delay_ms: float = 2.0,
        read_timeout_s: float = 30.0,
    ):
        self.remote, self.codec = remote, codec_
        self.host, self.port = host, port
        self.max_frame_bytes, self.max_connections = max_frame_bytes, max_connections
        self.max_delay_s, self.read_timeout_s = max_delay_ms / 1e3, read_timeout_s
        self._queue: asyncio.Queue | None = None
        self._server: asyncio.base_events.Server | None = None
        self._batcher: asyncio.Task | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self.stats = {"requests": 0, "errors": 0, "batches": 0, "refused_connections": 0}

    async def start(self) -> int:
        self._queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop())
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()
        self._pool.shutdown(wait=True)

    async def _reply(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(LEN.pack(len(body)) + body)
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.max_connections:
            self.stats["refused_connections"] += 1
            try:
                await self._reply(writer, encode_reply(BUSY, 0.0, message="too many connections"))
            finally:
                writer.close()
            return
        self._conns.add(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(LEN.size), self.read_timeout_s)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                (n,) = LEN.unpack(head)
                if n > self.max_frame_bytes:
                    self.stats["errors"] += 1
                    await self._reply(
                        writer,
                        encode_reply(
                            TOO_LARGE,
                            0.0,
                            message=f"frame of {n} bytes exceeds the "
                            f"{self.max_frame_bytes}-byte limit",
                        ),
                    )
                    return  # cannot resynchronise without reading it: drop the connection
                try:
                    frame = await asyncio.wait_for(reader.readexactly(n), self.read_timeout_s)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                await self._reply(writer, await self._process(frame))
        except Exception:  # a client vanishing mid-write must not take the server down
            logging.exception("connection handler failed")
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _process(self, frame: bytes) -> bytes:
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        try:
            indices = self.codec.decode(frame)
        except codec.FrameError as e:
            self.stats["errors"] += 1
            return encode_reply(BAD_FRAME, 0.0, message=str(e))
        except Exception as e:
            self.stats["errors"] += 1
            return encode_reply(BAD_FRAME, 0.0, message=f"undecodable frame: {e}")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((indices, fut))
        try:
            logits = await fut
        except Exception as e:
            self.stats["errors"] += 1
            return encode_reply(INTERNAL, 0.0, message=str(e))
        return encode_reply(OK, 1e3 * (time.perf_counter() - t0), logits)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self.max_delay_s
            while len(items) < self.remote.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            shapes = {it[0].shape for it in items}
            groups = [[it for it in items if it[0].shape == s] for s in shapes]
            for group in groups:
                try:
                    batch = np.stack([it[0] for it in group])
                    logits = await loop.run_in_executor(self._pool, self.remote, batch)
                    for (_, fut), row in zip(group, logits, strict=True):
                        if not fut.done():
                            fut.set_result(row)
                except Exception as e:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)
                self.stats["batches"] += 1


def load_codec(export_dir: str, coder: str = "range") -> tuple[codec.Codec, dict[str, Any]]:
    meta_path = os.path.join(export_dir, "device_meta.json")
    model_path = os.path.join(export_dir, "codec_model.json")
    for p in (meta_path, model_path):
        if not os.path.exists(p):
            raise export.ExportError(f"{p} not found: run launch/export.py on the workdir first")
    with open(meta_path) as f:
        meta = json.load(f)
    return codec.Codec(codec.ProbabilityModel.load(model_path), meta["k"], coder), meta


async def serve(
    workdir: str,
    export_dir: str,
    host: str,
    port: int,
    max_batch: int,
    max_delay_ms: float,
    max_connections: int,
    max_frame_bytes: int,
    ready_file: str | None = None,
) -> dict[str, int]:
    """Run until SIGTERM/SIGINT; returns the server's counters."""
    codec_, meta = load_codec(export_dir)
    remote = RemoteModel(workdir, max_batch)
    remote.warmup(tuple(meta["remote_shape"]))
    server = Server(remote, codec_, host, port, max_frame_bytes, max_connections, max_delay_ms)
    bound = await server.start()
    print(f"serving remote NN on {host}:{bound} (max batch {max_batch})", flush=True)
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(str(bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    print(f"server stopped cleanly: {server.stats}", flush=True)
    return server.stats


# --------------------------------------------------------------------------- the device side


class RemoteClient:
    """Blocking client with one persistent connection, reconnecting after errors."""

    def __init__(self, host: str, port: int, timeout_s: float = 2.0):
        self.addr, self.timeout_s = (host, port), timeout_s
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self.addr, timeout=self.timeout_s)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, body: bytes) -> tuple[int, float, np.ndarray | str]:
        try:
            sock = self._connect()
            sock.sendall(LEN.pack(len(body)) + body)
            (n,) = LEN.unpack(self._recv(LEN.size))
            return decode_reply(self._recv(n))
        except (OSError, ConnectionError):
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Device:
    """Plays the MCU: int8 device model on TFLM, index lookup, encode, send, combine."""

    def __init__(
        self,
        export_dir: str,
        host: str = "127.0.0.1",
        port: int = 0,
        link: Link = LINK_PRESETS["wifi_6m"],
        coder: str = "range",
        timeout_s: float = 2.0,
        seed: int = 0,
    ):
        with open(os.path.join(export_dir, "device_int8.tflite"), "rb") as f:
            self.runner = export.TFLMRunner(f.read())
        self.codec, self.meta = load_codec(export_dir, coder)
        with open(os.path.join(export_dir, "export_report.json")) as f:
            report = json.load(f)
        self.mcu_local_ms = float(report["latency_estimate"]["ms_at_216mhz"])
        self.thresholds = np.asarray(self.meta["int8_thresholds"])
        self.alpha = float(self.meta["alpha"])
        self.link = link
        self.client = RemoteClient(host, port, timeout_s)
        self.rng = np.random.default_rng(seed)

    def local(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        logits_q, feat_q = self.runner(image)
        host_ms = 1e3 * (time.perf_counter() - t0)
        logits = export.dequantize(logits_q, self.meta["quant"]["local_logits"])[0]
        idx = export.indices_from_int8(feat_q, self.thresholds)[0]
        return logits, idx, host_ms

    def infer(self, image: np.ndarray) -> dict[str, Any]:
        return self.offload(*self.local(image))

    def offload(self, local_logits: np.ndarray, idx: np.ndarray, host_ms: float) -> dict[str, Any]:
        """Encode, send and combine, given the device model's output for one sample."""
        t0 = time.perf_counter()
        frame = self.codec.encode(idx)
        encode_ms = 1e3 * (time.perf_counter() - t0)
        out = {
            "local_host_ms": host_ms,
            "local_mcu_est_ms": self.mcu_local_ms,
            "encode_ms": encode_ms,
            "bytes": len(frame),
            "transmit_ms": 1e3 * self.link.transmit_seconds(len(frame), self.rng),
        }
        t0 = time.perf_counter()
        try:
            status, server_ms, data = self.client.request(frame)
        except (OSError, ConnectionError) as e:
            status, server_ms, data = -1, 0.0, f"server unreachable: {e}"
        out["round_trip_ms"] = 1e3 * (time.perf_counter() - t0)
        out["server_ms"] = server_ms
        if status == OK:
            combined = self.alpha * local_logits + (1 - self.alpha) * data
            out.update(prediction=int(np.argmax(combined)), fallback=False)
        else:
            out.update(prediction=int(np.argmax(local_logits)), fallback=True, reason=str(data))
        out["total_ms"] = (
            out["local_mcu_est_ms"]
            + encode_ms
            + out["transmit_ms"]
            + (server_ms if status == OK else 0.0)
        )
        return out


def eval_images(workdir: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` held-out samples of the run's eval split, preprocessed like training."""
    config = export.load_workdir_config(workdir)
    data = input_pipeline.load(config.data, config.seed)
    n = min(n, len(data.eval))
    sub = input_pipeline.Split(data.eval.images[:n], data.eval.labels[:n])
    pipe = input_pipeline.Pipeline(config.data, config.seed)
    return export.sample_images(pipe, sub, n), sub.labels


def coder_sizes(codec_: codec.Codec, indices: np.ndarray) -> dict[str, float]:
    """Mean frame bytes per sample for every coder on the same indices [N, H, W, C_r]."""
    out = {}
    for name in codec.CODERS:
        c = codec.Codec(codec_.model, codec_.k, name)
        sizes = []
        for idx in indices:
            frame = c.encode(idx)
            assert np.array_equal(c.decode(frame), idx)  # lossless, checked on real data
            sizes.append(len(frame))
        out[name] = float(np.mean(sizes))
    return out


def run_device(
    device: Device, workdir: str, images: np.ndarray, labels: np.ndarray, progress_every: int = 100
) -> dict[str, Any]:
    """Infer every image through the socket; compare with the offline (in-process) path."""
    # Offline evaluation of the same deployed model: the same TFLM output per sample, with the
    # remote NN run in-process instead of behind codec + socket + server.
    remote = RemoteModel(workdir, max_batch=1)
    rows, all_idx, offline = [], [], []
    for i, img in enumerate(images):
        logits, idx, host_ms = device.local(img[None])
        rows.append(device.offload(logits, idx, host_ms))
        all_idx.append(idx)
        r = remote(idx[None])[0]
        offline.append(int(np.argmax(device.alpha * logits + (1 - device.alpha) * r)))
        if progress_every and (i + 1) % progress_every == 0:
            logging.warning("device: %d/%d samples", i + 1, len(images))
    preds = np.asarray([r["prediction"] for r in rows])
    offline = np.asarray(offline)
    idx = np.stack(all_idx)
    header_bytes = codec.HEADER.size + codec.CRC.size
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    probs = device.codec.model.probs
    ch = np.arange(idx.shape[-1])
    model_bits = float(-np.log2(probs[ch, idx]).sum() / len(idx))
    return {
        "samples": len(images),
        "link": dataclasses.asdict(device.link),
        "accuracy": float(np.mean(preds == labels)),
        "offline_accuracy": float(np.mean(offline == labels)),
        "same_predictions_as_offline": float(np.mean(preds == offline)),
        "fallbacks": int(sum(r["fallback"] for r in rows)),
        "latency_ms": {
            key: mean(key)
            for key in (
                "local_host_ms",
                "local_mcu_est_ms",
                "encode_ms",
                "transmit_ms",
                "server_ms",
                "round_trip_ms",
                "total_ms",
            )
        },
        "bytes_per_sample": mean("bytes"),
        "frame_header_bytes": header_bytes,
        "coder_bytes_per_sample": coder_sizes(device.codec, idx),
        "empirical_entropy_bytes_per_sample": device.codec.model.entropy_bits(idx) / 8,
        "static_model_bytes_per_sample": model_bits / 8,
        "symbols_per_sample": int(idx[0].size),
    }


def format_device_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"AgileNN device run over {r['link']['name']} ({r['samples']} samples)",
        f"  accuracy {r['accuracy']:.4f} (offline {r['offline_accuracy']:.4f}, same prediction "
        f"on {100 * r['same_predictions_as_offline']:.1f}% of samples), fallbacks "
        f"{r['fallbacks']}",
        "  latency (ms, mean): " + ", ".join(f"{k}={v:.2f}" for k, v in lat.items()),
        f"  {'coder':<10}{'bytes/sample':>14}  (frame header+crc {r['frame_header_bytes']} B)",
    ]
    for name, b in sorted(r["coder_bytes_per_sample"].items(), key=lambda kv: kv[1]):
        lines.append(f"  {name:<10}{b:>14.1f}")
    lines.append(
        f"  {'entropy':<10}{r['empirical_entropy_bytes_per_sample']:>14.1f}  "
        f"(empirical, per channel; static model: "
        f"{r['static_model_bytes_per_sample']:.1f})"
    )
    return "\n".join(lines)
