import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from agilenn_jax import codec, export, runtime
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def exported_dir(trained_workdir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export_rt"))
    export.export(trained_workdir, out, num_calibration=32, num_verify=16)
    return out


def _send(sock, body: bytes):
    sock.sendall(struct.pack("<I", len(body)) + body)
    n = struct.unpack("<I", sock.recv(4, socket.MSG_WAITALL))[0]
    return runtime.decode_reply(sock.recv(n, socket.MSG_WAITALL))


def test_server_survives_fuzz_then_answers_correctly(trained_workdir, exported_dir):
    codec_, meta = runtime.load_codec(exported_dir)
    remote = runtime.RemoteModel(trained_workdir, max_batch=4)
    shape = tuple(meta["remote_shape"])
    idx = np.random.default_rng(0).integers(0, len(meta["centroids"]), shape).astype(np.uint8)
    valid = codec_.encode(idx)
    expected = remote(idx[None])[0]

    async def scenario():
        server = runtime.Server(remote, codec_, port=0, max_frame_bytes=4096, max_connections=8)
        port = await server.start()

        def client():
            rng = np.random.default_rng(1)
            errors = 0
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                for i in range(60):  # malformed frames on one connection: errors, no crash
                    kind = i % 4
                    if kind == 0:
                        body = rng.bytes(int(rng.integers(0, 300)))
                    elif kind == 1:
                        body = valid[: int(rng.integers(1, len(valid)))]
                    elif kind == 2:
                        b = bytearray(valid)
                        b[int(rng.integers(0, len(b)))] ^= 0xFF
                        body = bytes(b)
                    else:  # right CRC, wrong version
                        b = bytearray(valid[:-4])
                        b[4] = 99
                        body = bytes(b) + struct.pack("<I", zlib.crc32(bytes(b)))
                    status, _, msg = _send(s, body)
                    errors += status != runtime.OK
                    assert isinstance(msg, str) and msg
                status, _, logits = _send(s, valid)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(struct.pack("<I", 10**7))  # oversized: refused with a reply
                n = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))[0]
                too_large = runtime.decode_reply(s.recv(n, socket.MSG_WAITALL))

            # Concurrent valid requests are batched and all answered.
            def one():
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    return _send(s, valid)

            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(6) as pool:
                many = list(pool.map(lambda _: one(), range(12)))
            return errors, status, logits, too_large, many

        try:
            return await asyncio.get_running_loop().run_in_executor(None, client)
        finally:
            await server.stop()

    errors, status, logits, too_large, many = asyncio.run(scenario())
    assert errors == 60
    assert status == runtime.OK
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert too_large[0] == runtime.TOO_LARGE and "exceeds" in too_large[2]
    assert all(m[0] == runtime.OK for m in many)
    for m in many:
        np.testing.assert_allclose(m[2], expected, rtol=1e-4, atol=1e-4)


def test_connection_limit_is_enforced(trained_workdir, exported_dir):
    codec_, _ = runtime.load_codec(exported_dir)
    remote = runtime.RemoteModel(trained_workdir, max_batch=1)

    async def scenario():
        server = runtime.Server(remote, codec_, port=0, max_connections=1)
        port = await server.start()

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
                first.sendall(struct.pack("<I", 4) + b"junk")  # holds the only slot
                first.recv(4, socket.MSG_WAITALL)
                with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                    n = struct.unpack("<I", second.recv(4, socket.MSG_WAITALL))[0]
                    return runtime.decode_reply(second.recv(n, socket.MSG_WAITALL))

        try:
            return await asyncio.get_running_loop().run_in_executor(None, client)
        finally:
            await server.stop()

    status, _, message = asyncio.run(scenario())
    assert status == runtime.BUSY and "too many connections" in message


def test_device_falls_back_without_server(exported_dir):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = runtime.Device(exported_dir, port=port, timeout_s=0.5)
    meta = dev.meta
    img = np.zeros((1, meta["image_size"], meta["image_size"], 3), np.float32)
    out = dev.infer(img)
    assert out["fallback"] is True and "unreachable" in out["reason"]
    local_logits, _, _ = dev.local(img)
    assert out["prediction"] == int(np.argmax(local_logits))


def test_link_emulation():
    rng = np.random.default_rng(0)
    wifi, ble = runtime.LINK_PRESETS["wifi_6m"], runtime.LINK_PRESETS["ble_270k"]
    assert wifi.transmit_seconds(750, rng) == pytest.approx(750 * 8 / 6e6 + wifi.rtt_s)
    assert ble.transmit_seconds(750, rng) > 10 * wifi.transmit_seconds(750, rng)
    lossy = runtime.Link("lossy", 1e6, 0.01, loss=0.5)
    assert np.mean([lossy.transmit_seconds(15000, rng) for _ in range(50)]) > 0.01 + 0.12


def test_socket_path_equals_offline_and_sigterm_shutdown(trained_workdir, exported_dir, tmp_path):
    ready = tmp_path / "port"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.serve",
            f"--workdir={trained_workdir}",
            f"--export_dir={exported_dir}",
            "--port=0",
            f"--ready_file={ready}",
            "--max_batch=8",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            if ready.exists() and ready.read_text():
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        port = int(ready.read_text())
        out = tmp_path / "report.json"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "launch.device",
                f"--export_dir={exported_dir}",
                f"--workdir={trained_workdir}",
                f"--port={port}",
                "--num_samples=40",
                "--link=ble_270k",
                f"--output={out}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        import json

        report = json.loads(out.read_text())
        assert report["fallbacks"] == 0
        assert report["same_predictions_as_offline"] == 1.0
        assert report["accuracy"] == report["offline_accuracy"]
        assert report["latency_ms"]["transmit_ms"] > 15.0  # BLE: 15 ms RTT + serialisation
        assert set(report["coder_bytes_per_sample"]) == set(codec.CODERS)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped cleanly" in stdout
