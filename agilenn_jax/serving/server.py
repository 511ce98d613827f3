"""The remote-NN server: asyncio TCP, dynamic batching, one inference thread.

The server never trusts a client: a bad frame gets an error reply and the connection stays
usable; frames over ``max_frame_bytes`` and connections over ``max_connections`` are refused
with a reply; a frame declaring a feature-map shape other than the model's is refused from its
header, so the jitted remote NN only ever sees one shape (at most log2(max_batch) + 1 programs,
all compiled at start-up). With device keys (``protocol.KeyRing``) only authenticated, fresh
requests are served; without them the server refuses to bind beyond loopback unless told to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import jax.numpy as jnp
import numpy as np
from absl import logging

from agilenn_jax import inference
from agilenn_jax.serving import codec, image_codec, protocol
from agilenn_jax.serving.protocol import (
    BAD_FRAME,
    BUSY,
    INTERNAL,
    LEN,
    OK,
    TOO_LARGE,
    UNAUTHORIZED,
    encode_reply,
)

DEVICE_META_FILE = "device_meta.json"
CODEC_MODEL_FILE = "codec_model.json"


class RemoteModel:
    """The remote NN of a trained workdir on centroid indices; batch sizes are bucketed to
    powers of two so dynamic batching compiles at most log2(max_batch) + 1 programs."""

    def __init__(self, workdir: str, max_batch: int = 32):
        run = inference.load_run(workdir)
        self.model, self.variables = run.model, run.variables
        self.num_classes = int(run.config.data.num_classes)
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")

    def bucket(self, n: int) -> int:
        return min(self.max_batch, 1 << max(0, (n - 1).bit_length()))

    def compiled_programs(self) -> int:
        """How many programs ``inference.remote_logits`` holds, for every model in the process."""
        return inference.remote_logits._cache_size()

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """indices [B, H, W, C_r] uint8 -> remote logits [B, num_classes]."""
        n = indices.shape[0]
        b = self.bucket(n)
        padded = np.zeros((b, *indices.shape[1:]), np.uint8)
        padded[:n] = indices
        return np.asarray(inference.remote_logits(self.model, self.variables, jnp.asarray(padded)))[
            :n
        ]

    def warmup(self, shape: tuple[int, int, int]) -> None:
        """Compile every batch bucket, max_batch included when it is not a power of two."""
        for b in sorted({self.bucket(n) for n in range(1, self.max_batch + 1)}):
            self(np.zeros((b, *shape), np.uint8))


def is_loopback(host: str) -> bool:
    """Only loopback addresses count; "" and "0.0.0.0" bind every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """Decode frames, batch them dynamically through the remote NN, reply."""

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
        keyring: protocol.KeyRing | None = None,
        allow_unauthenticated: bool = False,
    ):
        if codec_.shape is None:
            raise ValueError("the server's codec must know the model's feature-map shape")
        if keyring is None and not is_loopback(host) and not allow_unauthenticated:
            raise ValueError(
                f"refusing to serve unauthenticated requests on {host!r} (beyond loopback): "
                "pass device keys (--keys_file), or --allow_unauthenticated to accept the risk"
            )
        self.remote, self.codec, self.keyring = remote, codec_, keyring
        self.host, self.port = host, port
        self.max_frame_bytes, self.max_connections = max_frame_bytes, max_connections
        self.max_delay_s, self.read_timeout_s = max_delay_ms / 1e3, read_timeout_s
        self._queue: asyncio.Queue | None = None
        self._server: asyncio.base_events.Server | None = None
        self._batcher: asyncio.Task | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self.stats = {
            "requests": 0,
            "errors": 0,
            "batches": 0,
            "refused_connections": 0,
            "unauthorized": 0,
        }

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

    async def _read(self, reader: asyncio.StreamReader, n: int) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.readexactly(n), self.read_timeout_s)
        # asyncio.TimeoutError: the builtin's alias on 3.11, its own class on 3.10 (supported)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):  # noqa: UP041
            return None

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
                head = await self._read(reader, LEN.size)
                if head is None:
                    return
                (n,) = LEN.unpack(head)
                if n > self.max_frame_bytes:
                    self.stats["errors"] += 1
                    message = f"frame of {n} bytes exceeds the {self.max_frame_bytes}-byte limit"
                    await self._reply(writer, encode_reply(TOO_LARGE, 0.0, message=message))
                    return  # cannot resynchronise without reading it: drop the connection
                body = await self._read(reader, n)
                if body is None:
                    return
                reply, keep = await self._answer(body)
                await self._reply(writer, reply)
                if not keep:
                    return
        except (ConnectionError, OSError):  # a client vanishing mid-write
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _answer(self, body: bytes) -> tuple[bytes, bool]:
        """(reply body, keep the connection open)."""
        if self.keyring is None:
            return await self._process(body), True
        try:
            device_id, counter, frame = self.keyring.open_request(body)
        except protocol.AuthError as e:
            self.stats["unauthorized"] += 1
            return encode_reply(UNAUTHORIZED, 0.0, message=str(e)), False
        reply = await self._process(frame)
        return reply + protocol.reply_tag(self.keyring.key(device_id), counter, reply), True

    async def _process(self, frame: bytes) -> bytes:
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        try:
            indices = self.codec.decode(frame)
        except codec.FrameError as e:
            self.stats["errors"] += 1
            return encode_reply(BAD_FRAME, 0.0, message=str(e))
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((indices, fut))
        try:
            logits = await fut
        except Exception as e:  # the model failed on a valid frame: report, keep serving
            logging.exception("remote NN failed")
            self.stats["errors"] += 1
            return encode_reply(INTERNAL, 0.0, message=f"{type(e).__name__}: {e}")
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
                except asyncio.TimeoutError:  # noqa: UP041 (not the builtin on 3.10)
                    break
            try:  # every frame has the model's shape: the codec refused the others
                batch = np.stack([indices for indices, _ in items])
                logits = await loop.run_in_executor(self._pool, self.remote, batch)
                for (_, fut), row in zip(items, logits, strict=True):
                    if not fut.done():
                        fut.set_result(row)
            except Exception as e:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
            self.stats["batches"] += 1


def load_meta(export_dir: str) -> dict:
    """The export's ``device_meta.json`` (``method`` is agilenn when absent: older exports)."""
    meta_path = os.path.join(export_dir, DEVICE_META_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: run launch/export.py on the workdir first")
    with open(meta_path) as f:
        meta = json.load(f)
    meta.setdefault("method", "agilenn")
    return meta


def load_codec(
    export_dir: str, coder: str = "range"
) -> tuple[codec.Codec | image_codec.ImageCodec | None, dict]:
    """The codec an export describes (probabilities, k, the model's feature-map shape); for
    Edge-only the image codec, for local-only None (nothing is sent)."""
    meta = load_meta(export_dir)
    if meta["method"] == "local_only":
        return None, meta
    if meta["method"] == "edge_only":
        shape = tuple(meta["remote_shape"])
        return image_codec.ImageCodec(meta["image_codec"], shape, meta["image_quality"]), meta
    model_path = os.path.join(export_dir, CODEC_MODEL_FILE)
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} not found: run launch/export.py on the workdir")
    model = codec.ProbabilityModel.load(model_path)
    return codec.Codec(model, meta["k"], coder, tuple(meta["remote_shape"])), meta


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
    keys_file: str | None = None,
    allow_unauthenticated: bool = False,
) -> dict[str, int]:
    """Run until SIGTERM/SIGINT; returns the server's counters."""
    codec_, meta = load_codec(export_dir)
    if codec_ is None:
        raise ValueError(
            f"{export_dir} is a {meta['method']} export: nothing is offloaded to serve"
        )
    keyring = protocol.KeyRing(protocol.load_keys(keys_file)) if keys_file else None
    remote = RemoteModel(workdir, max_batch)
    remote.warmup(tuple(meta["remote_shape"]))
    server = Server(
        remote,
        codec_,
        host,
        port,
        max_frame_bytes,
        max_connections,
        max_delay_ms,
        keyring=keyring,
        allow_unauthenticated=allow_unauthenticated,
    )
    bound = await server.start()
    auth = "device keys required" if keyring else "NO authentication"
    print(f"serving remote NN on {host}:{bound} (max batch {max_batch}, {auth})", flush=True)
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
