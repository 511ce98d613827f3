"""Messages on the socket, and their authentication.

Every message is ``u32 length | body``. A request body is one codec frame, or, when the server
holds device keys, an authenticated envelope around it::

    "AGNA" | device_id u32 | counter u64 | tag (32 B) | frame

with ``tag = HMAC-SHA256(key[device_id], "AGNA" | device_id | counter | frame)``. The counter
must grow from one request to the next of a device (the client uses a nanosecond clock, so a
rebooted device needs no saved state); a replayed or reordered request is refused. A reply body
is ``"AGNR" | status u8 | server_ms f32 | n u16 | data``: ``n`` float32 remote logits when
status is OK, else an n-byte UTF-8 message. Replies to authenticated requests end with
``HMAC-SHA256(key, "AGNR" | counter | reply)``, so the device also knows who answered.

What this protects: only holders of a device key can make the server work, forged or altered
requests and replies are detected, and a recorded request cannot be replayed to a running
server. What it does not: the features are not encrypted (anyone on the path can read them);
the last accepted counter lives in the server's memory, so after a server restart a recorded
request can be replayed once per device; refusals (busy, too large, unauthorized) are untagged,
so an attacker on the path can forge one, which only forces the device's local fallback; a
device whose clock restarts lower than before (an MCU without a real-time clock) is refused as
stale until it passes its last counter, so such a device should persist its counter instead;
and a key taken from a device's flash lets its holder act as that device until the key is
removed from the server's key file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
import threading
import time

import numpy as np

LEN = struct.Struct("<I")
REPLY = struct.Struct("<4sBfH")
REPLY_MAGIC = b"AGNR"
AUTH_MAGIC = b"AGNA"
AUTH_HEAD = struct.Struct("<4sIQ")
TAG_BYTES = 32
KEY_BYTES = 32
OK, BAD_FRAME, TOO_LARGE, BUSY, INTERNAL, UNAUTHORIZED = range(6)
STATUS_NAMES = {
    OK: "ok",
    BAD_FRAME: "bad frame",
    TOO_LARGE: "too large",
    BUSY: "busy",
    INTERNAL: "internal error",
    UNAUTHORIZED: "unauthorized",
}


class AuthError(ValueError):
    """A request or reply failed authentication; the message says why."""


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
        if len(data) != 4 * n:
            raise ConnectionError(f"reply holds {len(data)} bytes for {n} logits")
        return status, server_ms, np.frombuffer(data, "<f4", count=n).copy()
    return status, server_ms, data.decode(errors="replace")


# --------------------------------------------------------------------------- keys


def generate_keys(device_ids: list[int]) -> dict[int, bytes]:
    return {int(d): secrets.token_bytes(KEY_BYTES) for d in device_ids}


def save_keys(path: str, keys: dict[int, bytes]) -> None:
    """Write a key file readable only by its owner (it holds secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # os.open's mode applies only to a new file, not to one it truncates
    with os.fdopen(fd, "w") as f:
        json.dump({"devices": {str(d): k.hex() for d, k in sorted(keys.items())}}, f, indent=2)


def load_keys(path: str) -> dict[int, bytes]:
    """``{"devices": {"<id>": "<64 hex digits>", ...}}`` -> {id: key}."""
    try:
        with open(path) as f:
            raw = json.load(f)["devices"]
        keys = {int(d): bytes.fromhex(k) for d, k in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AuthError(f"cannot read device keys from {path}: {type(e).__name__}: {e}") from None
    bad = [d for d, k in keys.items() if len(k) < 16 or not 0 <= d < 2**32]
    if not keys or bad:
        raise AuthError(f"{path}: need >= 1 device, ids in [0, 2^32), keys >= 16 bytes ({bad})")
    return keys


# --------------------------------------------------------------------------- envelopes


def _tag(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def seal_request(key: bytes, device_id: int, counter: int, frame: bytes) -> bytes:
    head = AUTH_HEAD.pack(AUTH_MAGIC, device_id, counter)
    return head + _tag(key, head, frame) + frame


def reply_tag(key: bytes, counter: int, reply: bytes) -> bytes:
    return _tag(key, REPLY_MAGIC, struct.pack("<Q", counter), reply)


def open_reply(key: bytes, counter: int, body: bytes) -> bytes:
    """The reply inside an authenticated reply body; raises ``AuthError`` if it was altered."""
    if len(body) < TAG_BYTES:
        raise AuthError("reply too short to carry its tag")
    reply, tag = body[:-TAG_BYTES], body[-TAG_BYTES:]
    if not hmac.compare_digest(tag, reply_tag(key, counter, reply)):
        raise AuthError("reply tag mismatch: not from a server holding this device's key")
    return reply


class KeyRing:
    """The server's device keys and the last counter accepted from each device."""

    def __init__(self, keys: dict[int, bytes]):
        self._keys = dict(keys)
        self._last: dict[int, int] = {}
        self._lock = threading.Lock()

    def open_request(self, body: bytes) -> tuple[int, int, bytes]:
        """(device_id, counter, frame) of an authentic, fresh request; else ``AuthError``."""
        if len(body) < AUTH_HEAD.size + TAG_BYTES or body[:4] != AUTH_MAGIC:
            raise AuthError("request is not authenticated (this server requires device keys)")
        magic, device_id, counter = AUTH_HEAD.unpack_from(body)
        key = self._keys.get(device_id)
        if key is None:
            raise AuthError(f"unknown device id {device_id}")
        head = body[: AUTH_HEAD.size]
        tag = body[AUTH_HEAD.size : AUTH_HEAD.size + TAG_BYTES]
        frame = body[AUTH_HEAD.size + TAG_BYTES :]
        if not hmac.compare_digest(tag, _tag(key, head, frame)):
            raise AuthError(f"bad tag for device {device_id}")
        with self._lock:
            if counter <= self._last.get(device_id, -1):
                raise AuthError(f"replayed or stale request from device {device_id}")
            self._last[device_id] = counter
        return device_id, counter, frame

    def key(self, device_id: int) -> bytes:
        return self._keys[device_id]


class RequestCounter:
    """Strictly increasing request counters that survive a device reboot without storage."""

    def __init__(self):
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns())
        return self._last
