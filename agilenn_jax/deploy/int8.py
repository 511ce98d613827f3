"""The integer arithmetic the MCU does around the model, shared by export, client and tests.

With ascending scalar centroids (ties allowed) the quantizer's argmin is exactly
``index = #{j : q > t_j}`` for int8 thresholds ``t_j`` (the centroid midpoints mapped to the
output's int8 scale): a few integer compares in C instead of an argmin in the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def quantize(x: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return np.clip(np.round(x / p["scale"] + p["zero_point"]), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return (q.astype(np.float32) - p["zero_point"]) * p["scale"]


def int8_thresholds(centroids: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """int8 t_j such that nearest-centroid index of the dequantized feature == #{j: q > t_j}.

    Tied centroids (equal values, a legitimate training outcome) are allowed: the threshold
    between two equal centroids is set to the next one up, so the count skips the higher index
    and lands on the lowest index of the tied group, which is what the model's argmin returns
    (both dequantize to the same value, so the remote NN cannot tell them apart anyway).
    Centroids out of order (c_{j+1} < c_j) have no such rule and raise ``ValueError``.
    """
    c = np.asarray(centroids, np.float64)
    if np.any(np.diff(c) < 0):
        raise ValueError(
            f"centroids are out of order ({c}); the int8 index rule needs ascending centroids "
            f"(ties are fine), order {np.argsort(c, kind='stable')}"
        )
    mids = (c[1:] + c[:-1]) / 2.0
    # q > t  <=>  (q - zp) * s > mid  <=>  q > mid / s + zp ; q integer -> t = floor(mid/s + zp)
    t = np.floor(mids / p["scale"] + p["zero_point"]).clip(-129, 127)
    for j in range(len(t) - 1, -1, -1):
        if c[j + 1] == c[j]:
            t[j] = t[j + 1] if j + 1 < len(t) else 127
    return t.astype(np.int32)


def camera_uint8(images: np.ndarray, mean, std) -> np.ndarray:
    """The device camera's 8-bit image from a preprocessed one (what Edge-only sends)."""
    x = np.asarray(images, np.float64) * np.asarray(std) + np.asarray(mean)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def exits_on_device(logits: np.ndarray, threshold: float) -> np.ndarray:
    """SPINN's early exit: True where the device head's softmax max reaches ``threshold``."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).max(-1) >= threshold


def indices_from_int8(q: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """What the MCU sends: centroid index per offloaded feature, from its int8 value."""
    return np.sum(q[..., None].astype(np.int32) > thresholds, axis=-1).astype(np.uint8)
