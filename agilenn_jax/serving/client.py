"""The device side at run time: the int8 model on TFLite Micro, index lookup, encode, send,
combine; with an emulated wireless link and a local fallback when the server is unreachable."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from typing import Any

import numpy as np

from agilenn_jax.deploy.cost import CLOCKS_MHZ
from agilenn_jax.deploy.int8 import (
    camera_uint8,
    dequantize,
    exits_on_device,
    indices_from_int8,
)
from agilenn_jax.deploy.tflm import TFLMRunner
from agilenn_jax.models import combine
from agilenn_jax.serving import image_codec, protocol
from agilenn_jax.serving.protocol import LEN, OK, decode_reply
from agilenn_jax.serving.server import load_codec


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


@dataclasses.dataclass(frozen=True)
class Credentials:
    """This device's id and key, as provisioned in the server's key file."""

    device_id: int
    key: bytes

    @classmethod
    def from_file(cls, path: str, device_id: int) -> Credentials:
        keys = protocol.load_keys(path)
        if device_id not in keys:
            raise protocol.AuthError(f"{path} has no key for device {device_id}")
        return cls(device_id, keys[device_id])


# Replies the server sends before, or instead of, reading and authenticating a request: never
# tagged, and followed by the server closing the connection.
_REFUSALS = frozenset({protocol.UNAUTHORIZED, protocol.TOO_LARGE, protocol.BUSY})


class RemoteClient:
    """Blocking client with one persistent connection, reconnecting after errors."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float = 2.0,
        credentials: Credentials | None = None,
    ):
        self.addr, self.timeout_s = (host, port), timeout_s
        self.credentials = credentials
        self._counter = protocol.RequestCounter()
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

    def request(self, frame: bytes) -> tuple[int, float, np.ndarray | str]:
        """Send one frame; (status, server ms, logits or error message)."""
        body, counter = frame, None
        if self.credentials is not None:
            counter = self._counter.next()
            c = self.credentials
            body = protocol.seal_request(c.key, c.device_id, counter, frame)
        try:
            sock = self._connect()
            sock.sendall(LEN.pack(len(body)) + body)
            (n,) = LEN.unpack(self._recv(LEN.size))
            reply = self._recv(n)
        except (OSError, ConnectionError):
            self.close()
            raise
        status = reply[4] if len(reply) > 4 else None
        if status in _REFUSALS:
            self.close()  # the server closed the connection after it; the next request reconnects
        elif counter is not None:
            reply = protocol.open_reply(self.credentials.key, counter, reply)
        return decode_reply(reply)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


FIRMWARE_REPORT = os.path.join("firmware", "firmware_report.json")


def mcu_estimate(export_dir: str) -> tuple[float, bool, str]:
    """(ms on the MCU at 216 MHz, whether that includes the entropy encoder, its source).

    The generated firmware's report (``launch.firmware``), when present, is the better number:
    instructions counted in QEMU for the model and the C encoder, times the midpoint of its
    stated cycles-per-instruction range (CMSIS-NN back-end when built). Otherwise the export's
    cycles-per-MAC estimate of the model alone, which is uncalibrated.
    """
    fw_path = os.path.join(export_dir, FIRMWARE_REPORT)
    if os.path.exists(fw_path):
        with open(fw_path) as f:
            backends = json.load(f)["backends"]
        for name in ("cmsis", "portable"):
            speed = backends.get(name, {}).get("m7", {}).get("speed")
            if speed:
                lo, hi = speed["ms_at_216mhz"]
                cpi = "-".join(f"{c:g}" for c in speed["cpi_range"])
                return (lo + hi) / 2, True, f"firmware {name}: QEMU instructions x CPI {cpi}"
    with open(os.path.join(export_dir, "export_report.json")) as f:
        report = json.load(f)
    ms = float(report["latency_estimate"]["ms_at_216mhz"])
    return ms, False, "export cost model (cycles per MAC, uncalibrated; no firmware report)"


ENCODER_CYCLES_PER_SYMBOL = 22.0  # the generated C ctx encoder: 22 instructions/symbol (QEMU)


def device_cost(export_dir: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The device's compute and compression time per sample at each MCU clock, from one cost
    model for every method: the export's cycles-per-MAC estimate of the device network, plus
    the encoder (``ENCODER_CYCLES_PER_SYMBOL`` per index, measured on AgileNN's generated
    encoder; an image format's assumed cycles per byte for Edge-only). Estimates, not a board.
    """
    with open(os.path.join(export_dir, "export_report.json")) as f:
        report = json.load(f)
    lat = report["latency_estimate"]
    method = meta.get("method", "agilenn")
    if method == "edge_only":
        encode_cycles = image_codec.encode_cost_cycles(
            meta["image_codec"], int(np.prod(meta["remote_shape"]))
        )
    elif method == "local_only":
        encode_cycles = 0.0
    else:
        encode_cycles = ENCODER_CYCLES_PER_SYMBOL * float(np.prod(meta["remote_shape"]))
    budget = report["budget"]
    return {
        "macs": int(sum(r.get("macs", 0) for r in report["layers"])),
        "flash_bytes": int(budget["flash_bytes"]),
        "arena_bytes": int(budget["arena_bytes"]),
        "over_budget": list(report.get("over_budget", [])),
        "ms_at_mhz": {str(m): float(lat[f"ms_at_{m}mhz"]) for m in CLOCKS_MHZ},
        "encode_ms_at_mhz": {str(m): encode_cycles / (m * 1e3) for m in CLOCKS_MHZ},
        "source": "export cost model (cycles per MAC, deploy/cost.py) + encoder estimate "
        f"({ENCODER_CYCLES_PER_SYMBOL:g} cycles/index, or the image format's cycles/byte)",
    }


class Device:
    """Plays the MCU: int8 device model on TFLM, index lookup, encode, send, combine.

    Any method's export: AgileNN combines local and remote logits; DeepCOD-/SPINN-style send the
    quantized activation and take the server's prediction (SPINN exits early on the device when
    its head is confident); Edge-only sends its 8-bit image; local-only never sends anything.
    """

    def __init__(
        self,
        export_dir: str,
        host: str = "127.0.0.1",
        port: int = 0,
        link: Link = LINK_PRESETS["wifi_6m"],
        coder: str = "ctx",
        timeout_s: float = 2.0,
        seed: int = 0,
        credentials: Credentials | None = None,
    ):
        self.codec, self.meta = load_codec(export_dir, coder)
        self.method = self.meta["method"]
        self.runner = None
        if self.method != "edge_only":
            with open(os.path.join(export_dir, "device_int8.tflite"), "rb") as f:
                self.runner = TFLMRunner(f.read())
        self.cost = device_cost(export_dir, self.meta)
        if self.method == "agilenn":  # its firmware's QEMU count, when the export has one
            self.mcu_local_ms, self.mcu_includes_encoder, self.mcu_source = mcu_estimate(export_dir)
        else:  # one cost model for every baseline (see device_cost)
            self.mcu_local_ms = self.cost["ms_at_mhz"]["216"] + self.cost["encode_ms_at_mhz"]["216"]
            self.mcu_includes_encoder, self.mcu_source = True, self.cost["source"]
        thresholds = self.meta.get("int8_thresholds")
        self.thresholds = None if thresholds is None else np.asarray(thresholds)
        self.alpha = float(self.meta["alpha"])
        self.exit_threshold = self.meta.get("exit_threshold")
        self.link = link
        self.client = RemoteClient(host, port, timeout_s, credentials)
        self.rng = np.random.default_rng(seed)

    def local(self, image: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        """(dequantized device logits or None, what to send or None, host ms) for one image
        [1, H, W, 3]: centroid indices, or the 8-bit image for Edge-only."""
        t0 = time.perf_counter()
        if self.runner is None:  # edge_only: the camera's 8-bit image is the payload
            payload = camera_uint8(image[0], self.meta["mean"], self.meta["std"])
            return None, payload, 1e3 * (time.perf_counter() - t0)
        got = self.runner.named(image)
        host_ms = 1e3 * (time.perf_counter() - t0)
        logits = None
        if "local_logits" in got:
            logits = dequantize(got["local_logits"], self.meta["quant"]["local_logits"])[0]
        idx = None
        if "remote_features" in got:
            idx = indices_from_int8(got["remote_features"], self.thresholds)[0]
        return logits, idx, host_ms

    def infer(self, image: np.ndarray) -> dict[str, Any]:
        return self.offload(*self.local(image))

    def exits_locally(self, local_logits: np.ndarray | None) -> bool:
        """Local-only always; SPINN when its exit head's softmax max reaches the threshold."""
        if self.method == "local_only":
            return True
        if self.exit_threshold is None or local_logits is None:
            return False
        return bool(exits_on_device(local_logits, self.exit_threshold))

    def offload(
        self, local_logits: np.ndarray | None, idx: np.ndarray | None, host_ms: float
    ) -> dict[str, Any]:
        """Encode, send and combine, given the device model's output for one sample."""
        out = {"local_host_ms": host_ms, "local_mcu_est_ms": self.mcu_local_ms}
        if self.exits_locally(local_logits):
            out.update(
                encode_ms=0.0,
                bytes=0,
                transmit_ms=0.0,
                round_trip_ms=0.0,
                server_ms=0.0,
                prediction=int(np.argmax(local_logits)),
                fallback=False,
                offloaded=False,
                total_ms=self.cost["ms_at_mhz"]["216"],
            )
            return out
        t0 = time.perf_counter()
        frame = self.codec.encode(idx)
        encode_ms = 1e3 * (time.perf_counter() - t0)
        out.update(
            encode_ms=encode_ms,
            bytes=len(frame),
            transmit_ms=1e3 * self.link.transmit_seconds(len(frame), self.rng),
            offloaded=True,
        )
        t0 = time.perf_counter()
        try:
            status, server_ms, data = self.client.request(frame)
        except (OSError, ConnectionError) as e:
            status, server_ms, data = -1, 0.0, f"server unreachable: {e}"
        except protocol.AuthError as e:
            status, server_ms, data = -1, 0.0, f"reply failed authentication: {e}"
        out["round_trip_ms"] = 1e3 * (time.perf_counter() - t0)
        out["server_ms"] = server_ms
        if status == OK:
            pred = data if local_logits is None or self.method != "agilenn" else None
            if pred is None:
                pred = combine(local_logits, data, self.alpha)
            out.update(prediction=int(np.argmax(pred)), fallback=False)
        else:  # no server: the device's own prediction if it has one, else none (-1)
            local = -1 if local_logits is None else int(np.argmax(local_logits))
            out.update(prediction=local, fallback=True, reason=str(data))
        out["total_ms"] = (
            out["local_mcu_est_ms"]
            + (0.0 if self.mcu_includes_encoder else encode_ms)
            + out["transmit_ms"]
            + (server_ms if status == OK else 0.0)
        )
        return out
