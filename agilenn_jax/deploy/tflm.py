"""The int8 device model on the TFLite Micro Python runtime: the interpreter the MCU runs."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile

import numpy as np

from agilenn_jax.deploy.int8 import quantize
from agilenn_jax.deploy.tflite import quant_params


class TFLMRunner:
    """Runs one image at a time, as the MCU does; reports TFLM's measured arena."""

    def __init__(self, model: bytes, arena_size: int = 1 << 20):
        from tflite_micro.python.tflite_micro import runtime

        self._interp = runtime.Interpreter.from_bytes(model, arena_size=arena_size)
        self.qp = quant_params(model)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One float image [1, H, W, 3] -> (int8 local logits, int8 remote features)."""
        return self.run_int8(quantize(image, self.qp["input"]))

    def run_int8(self, image_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One int8 image [1, H, W, 3] (already quantized) -> the int8 outputs."""
        self._interp.set_input(np.asarray(image_q, np.int8), 0)
        self._interp.invoke()
        return tuple(self._interp.get_output(i) for i in self.qp["output_positions"])

    def named(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One float image -> its int8 outputs by name (``local_logits``, ``remote_features``;
        a baseline's device model may have only one of them)."""
        names = [n for n in self.qp if n in ("local_logits", "remote_features")]  # output order
        return dict(zip(names, self(image), strict=True))

    def arena_bytes(self) -> int:
        """Arena bytes TFLM actually allocated (from its recording allocator's report)."""
        with tempfile.TemporaryFile(mode="w+b") as tmp:
            with _redirect_fd(tmp.fileno()):
                self._interp.print_allocations()
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
        for line in text.splitlines():
            if "Arena allocation total" in line:
                return int(line.split("total")[1].split("bytes")[0])
        raise RuntimeError(f"TFLM did not report its arena usage; it printed: {text[-500:]!r}")


@contextlib.contextmanager
def _redirect_fd(target: int):
    """Capture C-level writes to stdout and stderr (TFLM's MicroPrintf)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(target, fd)
    try:
        yield
    finally:
        libc.fflush(None)
        for fd, old in saved.items():
            os.dup2(old, fd)
            os.close(old)
