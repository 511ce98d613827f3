"""Context-modelled static rANS: the ``ctx`` coder's model, reference encoder and decoder.

Neighbouring quantizer indices are correlated, which an i.i.d. per-channel model ignores. This
coder conditions each index on already-coded neighbours through small static integer tables,
and its algorithm is fully specified here so the device's C encoder
(``deploy/csrc/agilenn_encoder.c``) produces the very same bytes.

Context. Indices [H, W, C] are coded in raster order (y, x, c). Index (y, x, c) is coded with
the frequency row ``freqs[ctx, c]``, ``ctx = (b_l * n_u + b_u) * n_p + b_p``, from its left
(y, x-1, c), up (y-1, x, c) and previous-channel (y, x, c-1) neighbours, each bucketed by its
cap: ``b = min(v, cap)``, or ``cap + 1`` when the neighbour is outside the map, ``n = cap + 2``;
a cap of -1 drops that neighbour (``b = 0``, ``n = 1``).

rANS. 32-bit state, ``RANS_L = 2**23``, ``M = 2**prob_bits``, byte-wise renormalisation. The
encoder starts at ``x = RANS_L`` and codes symbols last to first; for symbol frequency ``f`` and
cumulative frequency ``c``: ``while x >= (RANS_L >> prob_bits << 8) * f: emit(x & 255); x >>= 8``
then ``x = (x // f << prob_bits) + x % f + c``. Bytes are emitted backwards, then the final
state's four bytes, so a payload is: final state (u32 little-endian) | renormalisation bytes in
the order the decoder reads them. The decoder reads the state, then per symbol first to last:
``slot = x & (M - 1)``, the ``s`` with ``c_s <= slot < c_s + f_s``,
``x = f_s * (x >> prob_bits) + slot - c_s``, ``while x < RANS_L: x = x << 8 | next_byte``. A
payload is valid only if decoding consumes every byte and ends in state ``RANS_L``.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from typing import Any

import numpy as np

RANS_L = 1 << 23
# Smallest payloads of 10..15 on quick-start indices (the rANS loss, < log2(1 + 2**(PROB_BITS -
# 23)) bits a symbol, stays negligible) and cumulative freqs up to 2**15 still fit a uint16.
PROB_BITS = 15
DEFAULT_CAPS = (2, 2, -1)  # (left, up, previous channel); benchmarks/coders.py: the knee
STATE_BYTES = 4
FROM_PROBS: Any = object()  # ProbabilityModel's default context: derived from its probs
LEGACY = (
    "this codec model predates the ctx coder (its JSON has no context tables): re-export the "
    "run to fit them (and regenerate the device encoder), or use another coder"
)


class FrameError(ValueError):
    """A frame is corrupt, truncated, of another version or for another model."""


def _buckets(cap: int) -> int:
    return 1 if cap < 0 else cap + 2


def quantize_row(p: np.ndarray, prob_bits: int) -> np.ndarray:
    """Integer frequencies >= 1 summing exactly to 2**prob_bits, closest to ``p`` in code length.

    Greedy from floor(p * M): each step moves one unit where it lowers the expected code
    length most (raises it least), which is optimal for this separable concave objective.
    Ties go to the lowest symbol, so the result is deterministic.
    """
    total, p = 1 << prob_bits, np.asarray(p, np.float64)
    if len(p) > total or not np.all(np.isfinite(p)) or p.min() < 0 or p.sum() <= 0:
        raise ValueError(f"cannot quantize {len(p)} probabilities to {prob_bits} bits: {p}")
    p = p / p.sum()
    f = np.maximum(1, np.floor(p * total)).astype(np.int64)
    while (diff := int(f.sum()) - total) != 0:
        if diff < 0:
            f[int(np.argmax(p * np.log2((f + 1) / f)))] += 1
        else:
            cost = np.where(f > 1, p * np.log2(f / np.maximum(f - 1, 1)), np.inf)
            f[int(np.argmin(cost))] -= 1
    return f


@dataclasses.dataclass(frozen=True, eq=False)
class ContextModel:
    """Static integer frequency tables ``freqs`` [contexts, C, L] for the ``ctx`` coder."""

    caps: tuple[int, int, int]
    prob_bits: int
    freqs: np.ndarray

    def __post_init__(self):
        f, caps = np.asarray(self.freqs), tuple(int(c) for c in self.caps)
        object.__setattr__(self, "caps", caps)
        object.__setattr__(self, "freqs", f.astype(np.int64))
        if len(caps) != 3 or not 1 <= self.prob_bits <= 15:
            raise ValueError(f"bad context model: caps {caps}, prob_bits {self.prob_bits}")
        if f.ndim != 3 or f.shape[0] != self.num_contexts:
            raise ValueError(f"freqs {f.shape} must be [{self.num_contexts}, C, L] for caps {caps}")
        if any(c < -1 or c >= f.shape[2] for c in caps):
            raise ValueError(f"caps {caps} must be in [-1, {f.shape[2] - 1}]")
        if f.size and (f.min() < 1 or np.any(f.sum(-1) != 1 << self.prob_bits)):
            raise ValueError(f"every freq must be >= 1, every row sum 2**{self.prob_bits}")

    @property
    def num_contexts(self) -> int:
        return int(np.prod([_buckets(c) for c in self.caps]))

    @property
    def num_symbols(self) -> int:
        return int(self.freqs.shape[2])

    @classmethod
    def fit(
        cls,
        indices: np.ndarray,
        num_symbols: int,
        caps: tuple[int, int, int] = DEFAULT_CAPS,
        prob_bits: int = PROB_BITS,
        alpha: float = 1.0,
    ) -> ContextModel:
        """Laplace-smoothed (``alpha``) conditional counts of training indices [N, H, W, C]."""
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 4 or (
            indices.size and not 0 <= indices.min() <= indices.max() < num_symbols
        ):
            raise ValueError(
                f"indices must be [N, H, W, C] in [0, {num_symbols}), got {indices.shape}"
            )
        c = indices.shape[-1]
        ctx = _contexts(indices, caps, num_symbols)
        key = (ctx * c + np.arange(c)) * num_symbols + indices
        counts = np.bincount(key.reshape(-1), minlength=_ncontexts(caps) * c * num_symbols)
        counts = counts.reshape(-1, num_symbols) + alpha
        freqs = np.stack([quantize_row(row, prob_bits) for row in counts])
        return cls(caps, prob_bits, freqs.reshape(-1, c, num_symbols))

    @classmethod
    def from_probs(cls, probs: np.ndarray, prob_bits: int = PROB_BITS) -> ContextModel:
        """The context-free model (all caps -1) of per-channel probabilities [C, L]."""
        rows = [quantize_row(p, prob_bits) for p in np.asarray(probs, np.float64)]
        return cls((-1, -1, -1), prob_bits, np.stack(rows)[None])

    def to_json(self) -> dict:
        return {"caps": list(self.caps), "prob_bits": self.prob_bits, "freqs": self.freqs.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> ContextModel:
        return cls(tuple(d["caps"]), int(d["prob_bits"]), np.asarray(d["freqs"], np.int64))

    @functools.cached_property
    def _cum(self) -> np.ndarray:
        """[contexts, C, L + 1] cumulative frequencies, starting at 0."""
        return np.concatenate([np.zeros(self.freqs.shape[:2] + (1,), np.int64),
                               np.cumsum(self.freqs, -1)], -1)  # fmt: skip

    @functools.cached_property
    def _decode_tables(self) -> tuple[list[list[int]], list[list[int]]]:
        """Cumulative rows per ``ctx * C + c`` and, per neighbour, a value -> ctx term map
        (value ``L`` = outside the map): Python lists, so the decode loop stays on ints."""
        rows = self._cum.reshape(-1, self.num_symbols + 1).tolist()
        return rows, _bucket_maps(self.caps, self.num_symbols).tolist()

    def contexts(self, indices: np.ndarray) -> np.ndarray:
        """Context id of every index in ``indices`` [..., H, W, C]."""
        return _contexts(np.asarray(indices, np.int64), self.caps, self.num_symbols)

    def code_lengths(self, indices: np.ndarray) -> np.ndarray:
        """Ideal code length in bits, -log2(f / 2**prob_bits) summed per sample of [N, H, W, C]."""
        indices = np.asarray(indices, np.int64)
        f = self.freqs[self.contexts(indices), np.arange(indices.shape[-1]), indices]
        return (self.prob_bits - np.log2(f)).reshape(len(indices), -1).sum(-1)

    def encode(self, indices: np.ndarray) -> bytes:
        """The rANS payload of one sample's indices [H, W, C] (the reference the C matches)."""
        indices = np.asarray(indices, np.int64)
        ctx = self.contexts(indices)
        chan = np.arange(indices.shape[-1])
        freqs = self.freqs[ctx, chan, indices].reshape(-1).tolist()
        cums = self._cum[ctx, chan, indices].reshape(-1).tolist()
        bits, unit = self.prob_bits, (RANS_L >> self.prob_bits) << 8
        x, out = RANS_L, bytearray()
        for f, c in zip(reversed(freqs), reversed(cums), strict=True):
            x_max = unit * f
            while x >= x_max:
                out.append(x & 0xFF)
                x >>= 8
            x = ((x // f) << bits) + x % f + c
        out += x.to_bytes(STATE_BYTES, "big")
        out.reverse()
        return bytes(out)

    def decode(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """Indices [H, W, C] from a payload; FrameError if it is not exactly a valid stream."""
        h, w, c = (int(d) for d in shape)
        if c != self.freqs.shape[1]:
            raise FrameError(f"ctx model has {self.freqs.shape[1]} channels, frame {c}")
        if len(payload) < STATE_BYTES:
            raise FrameError(f"ctx payload truncated: {len(payload)} bytes, no rANS state")
        x = int.from_bytes(payload[:STATE_BYTES], "little")
        if not RANS_L <= x < RANS_L << 8:
            raise FrameError(f"ctx payload starts with an invalid rANS state {x:#x}")
        rows, (lmap, umap, pmap) = self._decode_tables
        bits, mask, ns = self.prob_bits, (1 << self.prob_bits) - 1, self.num_symbols
        data, pos, end = payload, STATE_BYTES, len(payload)
        out = [0] * (h * w * c)
        bisect_right = bisect.bisect_right
        i = 0
        for y in range(h):
            for xx in range(w):
                for ch in range(c):
                    ctx = lmap[out[i - c] if xx else ns] + umap[out[i - w * c] if y else ns]
                    ctx += pmap[out[i - 1] if ch else ns]
                    row = rows[ctx * c + ch]
                    slot = x & mask
                    s = bisect_right(row, slot) - 1
                    lo = row[s]
                    x = (row[s + 1] - lo) * (x >> bits) + slot - lo
                    while x < RANS_L:
                        if pos >= end:
                            raise FrameError("ctx payload truncated: rANS stream ends early")
                        x = (x << 8) | data[pos]
                        pos += 1
                    out[i] = s
                    i += 1
        if pos != end:
            raise FrameError(f"ctx payload has {end - pos} trailing bytes")
        if x != RANS_L:
            raise FrameError(f"ctx payload ends in rANS state {x:#x}, not {RANS_L:#x} (corrupt)")
        return np.asarray(out, np.uint8).reshape(h, w, c)


def context_of(context: Any, probs: np.ndarray) -> ContextModel | None:
    """A ProbabilityModel's ctx tables: fitted ones, context-free ones from its ``probs`` when
    none are given, or None for a codec JSON written before the ctx coder existed."""
    if context is FROM_PROBS:
        return ContextModel.from_probs(probs)
    if context is not None and context.freqs.shape[1:] != np.shape(probs):
        raise ValueError(f"context tables {context.freqs.shape} do not fit probs")
    return context


def to_json(context: ContextModel | None) -> dict:
    """A codec model JSON's ``context`` entry (none for a model that predates the ctx coder)."""
    return {} if context is None else {"context": context.to_json()}


def from_json(d: dict) -> ContextModel | None:
    return ContextModel.from_json(d["context"]) if "context" in d else None


def require(context: ContextModel | None, error: type[Exception] = ValueError) -> ContextModel:
    """The tables the ctx coder needs, or a clear error for a codec model that predates them."""
    if context is None:
        raise error(LEGACY)
    return context


def _ncontexts(caps) -> int:
    return int(np.prod([_buckets(c) for c in caps]))


def _bucket_maps(caps, num_symbols: int) -> np.ndarray:
    """[3, L + 1]: neighbour value (L = outside) -> its term of the context id."""
    n = [_buckets(c) for c in caps]
    strides = (n[1] * n[2], n[2], 1)
    v = np.arange(num_symbols + 1)
    maps = [
        np.zeros_like(v) if cap < 0 else np.where(v == num_symbols, cap + 1, np.minimum(v, cap))
        for cap in caps
    ]
    return np.stack(maps) * np.asarray(strides)[:, None]


def _contexts(indices: np.ndarray, caps, num_symbols: int) -> np.ndarray:
    lmap, umap, pmap = _bucket_maps(caps, num_symbols)
    left, up, prev = (np.full_like(indices, num_symbols) for _ in range(3))
    left[..., 1:, :] = indices[..., :-1, :]
    up[..., 1:, :, :] = indices[..., :-1, :, :]
    prev[..., 1:] = indices[..., :-1]
    return lmap[left] + umap[up] + pmap[prev]
