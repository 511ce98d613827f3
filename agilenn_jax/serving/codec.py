"""Versioned, framed bitstream for one sample's offloaded features (quantizer indices).

Frame (little-endian)::

    magic "AGNN" | version u8 | coder u8 | k u8 | num_centroids u16 | H u16 | W u16 | C_r u16
    | model_id u32 | payload_len u32 | payload | crc32 u32 (over everything before it)

Coders share one interface (``encode(indices) -> payload`` / ``decode(payload, shape)``):
``range`` (constriction's range coder with a static per-channel categorical model fitted on
training data: the default), ``huffman`` (per-channel static Huffman codes via constriction, the
paper's choice), ``lzw`` (12-bit LZW), ``zstd``, ``raw`` (bit-packing) and ``ctx`` (see ``rans``).
Every decode is lossless and every malformed frame raises ``FrameError`` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import constriction
import numpy as np

from agilenn_jax import bitrate
from agilenn_jax.serving import rans
from agilenn_jax.serving.rans import FrameError

MAGIC = b"AGNN"
VERSION = 1
HEADER = struct.Struct("<4sBBBHHHHII")
CRC = struct.Struct("<I")
MAX_SYMBOLS = 1 << 22  # sanity bound on H * W * C_r from a header


def _payload_error(coder: str, err: BaseException) -> FrameError:
    """constriction reports invalid data as AssertionError / ValueError, and a Rust panic as
    pyo3's PanicException, which derives from BaseException. Those become a FrameError;
    anything else (KeyboardInterrupt, SystemExit, ...) is re-raised by the caller."""
    return FrameError(f"{coder} payload does not decode: {type(err).__name__}: {err}")


def _is_decoder_failure(err: BaseException) -> bool:
    return isinstance(err, Exception) or type(err).__name__ == "PanicException"


@dataclasses.dataclass(frozen=True)
class ProbabilityModel:
    """Per-channel probabilities [C_r, L] and the ctx coder's tables (``rans.context_of``)."""

    probs: np.ndarray
    model_id: int
    context: rans.ContextModel | None = rans.FROM_PROBS

    def __post_init__(self):
        object.__setattr__(self, "context", rans.context_of(self.context, self.probs))

    @classmethod
    def fit(cls, indices: np.ndarray, num_centroids: int, model_id: int) -> ProbabilityModel:
        """Laplace-smoothed per-channel and per-context frequencies of indices [N, H, W, C_r]."""
        counts = bitrate.channel_histograms(indices, num_centroids).astype(np.float64)
        probs = (counts + 1.0) / (counts + 1.0).sum(axis=1, keepdims=True)
        return cls(probs, int(model_id), rans.ContextModel.fit(indices, num_centroids))

    @property
    def num_centroids(self) -> int:
        return int(self.probs.shape[1])

    def to_json(self) -> dict:
        d = {"model_id": self.model_id, "probs": self.probs.tolist()}
        return d | rans.to_json(self.context)

    @classmethod
    def from_json(cls, d: dict) -> ProbabilityModel:
        return cls(np.asarray(d["probs"], np.float64), int(d["model_id"]), rans.from_json(d))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f)

    @classmethod
    def load(cls, path: str) -> ProbabilityModel:
        with open(path) as f:
            return cls.from_json(json.load(f))

    def entropy_bits(self, indices: np.ndarray) -> float:
        """Empirical entropy of ``indices`` [N, H, W, C_r] (per-channel), bits per sample."""
        counts = bitrate.channel_histograms(indices, self.num_centroids)
        positions = indices.size // (indices.shape[0] * indices.shape[-1])
        return bitrate.per_channel_entropy_bits(counts) * positions


# --------------------------------------------------------------------------- coders


class Coder:
    name = ""
    ident = 0

    def __init__(self, model: ProbabilityModel):
        self.model = model

    def encode(self, indices: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        raise NotImplementedError


def _channel_of(shape: tuple[int, int, int]) -> np.ndarray:
    return np.tile(np.arange(shape[2]), shape[0] * shape[1])


class RangeCoder(Coder):
    """constriction's range coder, one static categorical model per channel."""

    name, ident = "range", 1
    _family = constriction.stream.model.Categorical(perfect=False)

    def encode(self, indices):
        probs = self.model.probs[_channel_of(indices.shape)]
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(indices.reshape(-1).astype(np.int32), self._family, probs)
        return enc.get_compressed().astype("<u4").tobytes()

    def decode(self, payload, shape):
        if len(payload) % 4:
            raise FrameError("range payload is not a whole number of 32-bit words")
        words = np.frombuffer(payload, "<u4").astype(np.uint32)
        probs = self.model.probs[_channel_of(shape)]
        try:
            out = constriction.stream.queue.RangeDecoder(words).decode(self._family, probs)
        except BaseException as e:
            if not _is_decoder_failure(e):
                raise
            raise _payload_error("range", e) from None
        return np.asarray(out, np.uint8).reshape(shape)


class HuffmanCoder(Coder):
    """Static per-channel Huffman codes (the paper's choice) via constriction."""

    name, ident = "huffman", 2

    def __init__(self, model):
        super().__init__(model)
        hf = constriction.symbol.huffman
        self._enc = [hf.EncoderHuffmanTree(p) for p in model.probs]
        self._dec = [hf.DecoderHuffmanTree(p) for p in model.probs]

    def encode(self, indices):
        enc = constriction.symbol.QueueEncoder()
        flat = indices.reshape(-1, indices.shape[-1])
        for row in flat:
            for c, s in enumerate(row):
                enc.encode_symbol(int(s), self._enc[c])
        words, _ = enc.get_compressed()
        return np.asarray(words, "<u4").tobytes()

    def decode(self, payload, shape):
        if len(payload) % 4:
            raise FrameError("huffman payload is not a whole number of 32-bit words")
        dec = constriction.symbol.QueueDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        out = np.empty(shape[0] * shape[1] * shape[2], np.uint8)
        try:
            for i in range(out.size):
                out[i] = dec.decode_symbol(self._dec[i % shape[2]])
        except BaseException as e:
            if not _is_decoder_failure(e):
                raise
            raise _payload_error("huffman", e) from None
        return out.reshape(shape)


class LZWCoder(Coder):
    """Classic LZW over the index bytes with fixed 12-bit codes (dictionary reset when full)."""

    name, ident = "lzw", 3
    BITS, MAX_CODE = 12, 4096

    def encode(self, indices):
        data = indices.reshape(-1).astype(np.uint8).tobytes()
        table = {bytes([i]): i for i in range(256)}
        codes, w = [], b""
        for b in data:
            wc = w + bytes([b])
            if wc in table:
                w = wc
                continue
            codes.append(table[w])
            if len(table) < self.MAX_CODE:
                table[wc] = len(table)
            else:
                table = {bytes([i]): i for i in range(256)}
            w = bytes([b])
        if w:
            codes.append(table[w])
        return _pack(np.asarray(codes, np.uint32), self.BITS)

    def decode(self, payload, shape):
        n = shape[0] * shape[1] * shape[2]
        codes = _unpack(payload, self.BITS)
        table = {i: bytes([i]) for i in range(256)}
        out = bytearray()
        w = None
        for code in codes.tolist():
            if w is None:
                if code > 255:
                    raise FrameError("lzw stream starts with an undefined code")
                w = table[code]
                out += w
                continue
            if code in table:
                entry = table[code]
            elif code == len(table):
                entry = w + w[:1]
            else:
                raise FrameError(f"lzw code {code} is undefined")
            out += entry
            if len(table) < self.MAX_CODE:
                table[len(table)] = w + entry[:1]
                w = entry
            else:
                table = {i: bytes([i]) for i in range(256)}
                w = entry
            if len(out) > n:
                break
        if len(out) != n:
            raise FrameError(f"lzw stream decodes to {len(out)} symbols, header says {n}")
        return np.frombuffer(bytes(out), np.uint8).reshape(shape)


class ZstdCoder(Coder):
    name, ident = "zstd", 4

    def encode(self, indices):
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(indices.astype(np.uint8).tobytes())

    def decode(self, payload, shape):
        import zstandard

        n = shape[0] * shape[1] * shape[2]
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=n)
        except zstandard.ZstdError as e:
            raise FrameError(f"zstd payload does not decode: {e}") from None
        if len(raw) != n:
            raise FrameError(f"zstd payload holds {len(raw)} symbols, header says {n}")
        return np.frombuffer(raw, np.uint8).reshape(shape)


class RawCoder(Coder):
    """Fixed-width bit packing (ceil(log2 L) bits per index): the no-entropy-coding baseline."""

    name, ident = "raw", 5

    def _bits(self) -> int:
        return max(1, int(np.ceil(np.log2(self.model.num_centroids))))

    def encode(self, indices):
        return _pack(indices.reshape(-1).astype(np.uint32), self._bits())

    def decode(self, payload, shape):
        n = shape[0] * shape[1] * shape[2]
        vals = _unpack(payload, self._bits())
        if len(vals) < n:
            raise FrameError(f"raw payload holds {len(vals)} symbols, header says {n}")
        return vals[:n].astype(np.uint8).reshape(shape)


class ContextCoder(Coder):
    """Static rANS conditioned on already-coded neighbours (``rans``): the MCU's coder."""

    name, ident = "ctx", 6

    def encode(self, indices):
        return rans.require(self.model.context).encode(indices)

    def decode(self, payload, shape):
        return rans.require(self.model.context, FrameError).decode(payload, shape)


def _pack(values: np.ndarray, bits: int) -> bytes:
    b = ((values[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)
    return np.packbits(b.reshape(-1)).tobytes()


def _unpack(payload: bytes, bits: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(payload, np.uint8))
    n = len(b) // bits
    b = b[: n * bits].reshape(n, bits).astype(np.uint32)
    return (b << np.arange(bits - 1, -1, -1, dtype=np.uint32)).sum(axis=1).astype(np.uint32)


CODERS: dict[str, type[Coder]] = {
    c.name: c for c in (RangeCoder, HuffmanCoder, LZWCoder, ZstdCoder, RawCoder, ContextCoder)
}
_BY_ID = {c.ident: c for c in CODERS.values()}


# --------------------------------------------------------------------------- frames


class Codec:
    """Frames one sample's indices [H, W, C_r] with the given coder; decodes any coder's frame.

    ``shape`` is the model's (H, W, C_r). When given, a frame declaring any other shape is
    refused from its header alone, before its payload is decoded: the remote NN would return
    meaningless logits for it, and every new shape would cost the server a compilation.
    """

    def __init__(
        self,
        model: ProbabilityModel,
        k: int,
        coder: str = "range",
        shape: tuple[int, int, int] | None = None,
    ):
        if coder not in CODERS:
            raise ValueError(f"unknown coder {coder!r}; expected one of {sorted(CODERS)}")
        self.model, self.k, self.coder_name = model, int(k), coder
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        if self.shape is not None and (
            len(self.shape) != 3 or self.shape[2] != model.probs.shape[0]
        ):
            raise ValueError(
                f"shape {self.shape} must be (H, W, {model.probs.shape[0]}) for this model"
            )
        self._coders: dict[int, Coder] = {}

    def _coder(self, ident: int) -> Coder:
        if ident not in self._coders:
            self._coders[ident] = _BY_ID[ident](self.model)
        return self._coders[ident]

    def encode(self, indices: np.ndarray) -> bytes:
        if indices.ndim != 3 or indices.shape[-1] != self.model.probs.shape[0]:
            raise ValueError(
                f"indices must be [H, W, {self.model.probs.shape[0]}], got {indices.shape}"
            )
        if self.shape is not None and indices.shape != self.shape:
            raise ValueError(
                f"indices must have the model's shape {self.shape}, got {indices.shape}"
            )
        if indices.size and int(indices.max()) >= self.model.num_centroids:
            raise ValueError("index out of range of the centroid table")
        ident = CODERS[self.coder_name].ident
        payload = self._coder(ident).encode(np.ascontiguousarray(indices, np.uint8))
        h, w, c = indices.shape
        head = HEADER.pack(
            MAGIC,
            VERSION,
            ident,
            self.k,
            self.model.num_centroids,
            h,
            w,
            c,
            self.model.model_id & 0xFFFFFFFF,
            len(payload),
        )
        body = head + payload
        return body + CRC.pack(zlib.crc32(body))

    def decode(self, frame: bytes) -> np.ndarray:
        if len(frame) < HEADER.size + CRC.size:
            raise FrameError(f"frame truncated: {len(frame)} bytes is shorter than a header")
        magic, version, ident, k, ncent, h, w, c, model_id, plen = HEADER.unpack_from(frame)
        if magic != MAGIC:
            raise FrameError("not an AgileNN frame (bad magic)")
        if version != VERSION:
            raise FrameError(f"frame version {version} is not supported (this is {VERSION})")
        if len(frame) != HEADER.size + plen + CRC.size:
            raise FrameError(f"frame length {len(frame)} does not match its payload length {plen}")
        (crc,) = CRC.unpack_from(frame, len(frame) - CRC.size)
        if crc != zlib.crc32(frame[: -CRC.size]):
            raise FrameError("frame CRC32 mismatch (corrupted in transit)")
        if ident not in _BY_ID:
            raise FrameError(f"unknown coder id {ident}")
        if model_id != self.model.model_id & 0xFFFFFFFF or k != self.k:
            raise FrameError(
                f"frame is for model {model_id:#010x} (k={k}); this side has "
                f"{self.model.model_id & 0xFFFFFFFF:#010x} (k={self.k})"
            )
        if ncent != self.model.num_centroids or c != self.model.probs.shape[0]:
            raise FrameError(f"frame has {ncent} centroids x {c} channels; model disagrees")
        if self.shape is not None and (h, w, c) != self.shape:
            raise FrameError(
                f"frame declares a {h}x{w}x{c} feature map; this model's is "
                f"{self.shape[0]}x{self.shape[1]}x{self.shape[2]}"
            )
        if h * w * c > MAX_SYMBOLS:
            raise FrameError(f"frame declares {h}x{w}x{c} symbols, over the limit")
        out = self._coder(ident).decode(frame[HEADER.size : HEADER.size + plen], (h, w, c))
        if int(out.max(initial=0)) >= ncent:
            raise FrameError("decoded index out of range")
        return out
