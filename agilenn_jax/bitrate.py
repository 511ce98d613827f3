"""Entropy of quantizer indices: the one definition training's evaluation and the codec share."""

from __future__ import annotations

import numpy as np


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits per symbol) of a histogram of symbol counts."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def channel_histograms(indices: np.ndarray, num_symbols: int) -> np.ndarray:
    """Counts [C, L] of each symbol per channel, from indices [..., C]."""
    flat = np.asarray(indices).reshape(-1, np.shape(indices)[-1])
    return np.stack([np.bincount(flat[:, c], minlength=num_symbols) for c in range(flat.shape[1])])


def per_channel_entropy_bits(counts: np.ndarray) -> float:
    """Bits per spatial position for a per-channel i.i.d. model: the sum of channel entropies.

    ``counts`` is [C, L]; multiply by H * W for bits per sample.
    """
    return float(sum(entropy_bits(row) for row in np.asarray(counts)))
