"""Framed bitstream for the "Edge-only" baseline: the MCU sends its raw 8-bit RGB camera image
(uint8 [H, W, 3]) and the server decodes and classifies it.

Frame (little-endian)::

    magic "AGIM" | version u8 | format u8 | quality u8 | H u16 | W u16 | payload_len u32
    | payload | crc32 u32 (over everything before it)

Formats: ``png`` (Pillow, optimize=True), ``lzw`` (``codec.LZWCoder`` over the row-major RGB
bytes: the paper's Edge-only coder), ``raw`` (the bytes as they are), all lossless; ``jpeg`` and
``webp`` (Pillow) are lossy. ``quality`` is written for the lossy formats and 0 for the lossless
ones. Malformed frames raise ``codec.FrameError``, as feature frames do, so the server treats
both kinds of bad frame alike.
"""

from __future__ import annotations

import io
import operator
import struct
import zlib

import numpy as np
from PIL import Image

from agilenn_jax.serving.codec import FrameError, LZWCoder, _payload_error

MAGIC = b"AGIM"
VERSION = 1
HEADER = struct.Struct("<4sBBBHHI")
CRC = struct.Struct("<I")
OVERHEAD = HEADER.size + CRC.size  # bytes of framing around every payload

IMAGE_FORMATS = ("png", "lzw", "jpeg", "webp", "raw")
LOSSLESS = frozenset({"png", "lzw", "raw"})
# Wire ids, fixed independently of IMAGE_FORMATS' order so that reordering it changes no frame.
FORMAT_IDS = {"png": 1, "lzw": 2, "jpeg": 3, "webp": 4, "raw": 5}
_BY_ID = {i: f for f, i in FORMAT_IDS.items()}
_PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# Largest side each Pillow format can store (the header's u16 allows 65535).
_MAX_SIDE = {"jpeg": 65500, "webp": 16383}
JPEG_444_FROM_QUALITY = 90

# The codec's LZW is adaptive: its probability model is never read, so None stands in for it.
_LZW = LZWCoder(None)


def _check_format(fmt: str) -> None:
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {IMAGE_FORMATS}")


def _check_quality(quality: int) -> int:
    try:
        q = operator.index(quality)
    except TypeError:
        raise ValueError(f"quality must be an integer in [1, 100], got {quality!r}") from None
    if not 1 <= q <= 100:
        raise ValueError(f"quality must be in [1, 100], got {q}")
    return q


def image_codec_name(fmt: str, quality: int) -> str:
    """Label for reports: the format, plus ``_q<quality>`` where quality changes the bytes."""
    _check_format(fmt)
    if fmt in LOSSLESS:
        return fmt
    return f"{fmt}_q{_check_quality(quality)}"


# --------------------------------------------------------------------------- MCU cost model

# ASSUMED Cortex-M7 cycles per input byte (H * W * 3) of a software encoder, from the work
# each one does per byte; NOT measurements. Calibrate on a board (DWT->CYCCNT around the
# encoder) before quoting absolute energies; only their order is meant to be trustworthy.
CYCLES_PER_BYTE_RAW = 1.0  # a copy into the radio's buffer (memcpy/DMA staging)
CYCLES_PER_BYTE_LZW = 60.0  # one hash-table dictionary probe + compare + 12-bit code packing
CYCLES_PER_BYTE_PNG = 150.0  # per-row filter choice (5 filters tried) + deflate's match search
CYCLES_PER_BYTE_JPEG = 40.0  # RGB->YCbCr, 8x8 integer DCT, quantization, Huffman
CYCLES_PER_BYTE_WEBP = 100.0  # VP8 intra mode search, 4x4 transforms, boolean arithmetic coder
CYCLES_PER_BYTE = {
    "raw": CYCLES_PER_BYTE_RAW,
    "lzw": CYCLES_PER_BYTE_LZW,
    "png": CYCLES_PER_BYTE_PNG,
    "jpeg": CYCLES_PER_BYTE_JPEG,
    "webp": CYCLES_PER_BYTE_WEBP,
}


def encode_cost_cycles(fmt: str, num_bytes_in: int) -> float:
    """Estimated Cortex-M7 cycles to encode ``num_bytes_in`` image bytes as ``fmt``.

    Linear in the input size with the assumed ``CYCLES_PER_BYTE`` rates above (assumptions, not
    measurements: calibrate on a board). One-off setup (clearing LZW's hash table, deflate's
    window, JPEG's tables) is left out; it matters only for the smallest images.
    """
    _check_format(fmt)
    n = operator.index(num_bytes_in)
    if n < 0:
        raise ValueError(f"num_bytes_in must be >= 0, got {n}")
    return CYCLES_PER_BYTE[fmt] * float(n)


# --------------------------------------------------------------------------- frames


class ImageCodec:
    """Frames uint8 RGB images of one fixed ``shape`` (H, W, 3) in one format.

    Decoding refuses frames of any other format, quality or shape from the header alone, before
    the payload is decoded: a mismatch means a misconfigured client, whose bytes would be
    reported under the wrong label, and a new shape would cost the server a compilation.

    JPEG is written with 4:4:4 chroma (``subsampling=0``) at quality >= 90 and Pillow's default
    4:2:0 below it: at high quality the point is fidelity, and on tiny images 4:2:0 cuts the
    colour samples of an already small image to a quarter. ``optimize=True`` (optimal Huffman
    tables) for JPEG and PNG, since only the bytes on the wire count here. WebP uses Pillow's
    defaults (lossy, method 4).
    """

    def __init__(self, fmt: str, shape: tuple[int, int, int], quality: int = 90):
        _check_format(fmt)
        self.quality = _check_quality(quality)
        try:
            dims = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise ValueError(f"shape must be (H, W, 3) integers, got {shape!r}") from None
        if len(dims) != 3 or dims[2] != 3:
            raise ValueError(f"shape must be (H, W, 3) for an RGB image, got {dims}")
        if not (1 <= dims[0] <= 0xFFFF and 1 <= dims[1] <= 0xFFFF):
            raise ValueError(f"shape {dims}: H and W must be in 1..65535")
        limit = _MAX_SIDE.get(fmt)
        if limit is not None and max(dims[:2]) > limit:
            raise ValueError(f"shape {dims}: {fmt} images are at most {limit} pixels a side")
        h, w, c = dims
        self.fmt = fmt
        self.shape: tuple[int, int, int] = (h, w, c)
        self.lossless = fmt in LOSSLESS
        self._wire_quality = 0 if self.lossless else self.quality

    @property
    def name(self) -> str:
        return image_codec_name(self.fmt, self.quality)

    def encode(self, image: np.ndarray) -> bytes:
        """One frame for ``image`` (uint8 [H, W, 3] of exactly this codec's shape)."""
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.shape != self.shape:
            raise ValueError(
                f"image must be uint8 {self.shape}, got {arr.dtype} {tuple(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr)
        payload = self._encode_payload(arr)
        h, w, _ = self.shape
        head = HEADER.pack(
            MAGIC, VERSION, FORMAT_IDS[self.fmt], self._wire_quality, h, w, len(payload)
        )
        body = head + payload
        return body + CRC.pack(zlib.crc32(body))

    def _encode_payload(self, arr: np.ndarray) -> bytes:
        if self.fmt == "raw":
            return arr.tobytes()
        if self.fmt == "lzw":
            return _LZW.encode(arr)
        options: dict = {"optimize": True}
        if self.fmt == "jpeg":
            options["quality"] = self.quality
            if self.quality >= JPEG_444_FROM_QUALITY:
                options["subsampling"] = 0
        elif self.fmt == "webp":
            options = {"quality": self.quality}
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=_PIL_NAMES[self.fmt], **options)
        return buf.getvalue()

    def decode(self, frame: bytes) -> np.ndarray:
        """The uint8 [H, W, 3] image in ``frame``; FrameError saying why for any bad frame."""
        frame = bytes(frame)
        if len(frame) < OVERHEAD:
            raise FrameError(
                f"image frame truncated: {len(frame)} bytes is shorter than header + CRC "
                f"({OVERHEAD})"
            )
        magic, version, ident, quality, h, w, plen = HEADER.unpack_from(frame)
        if magic != MAGIC:
            raise FrameError(f"not an image frame (bad magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise FrameError(f"image frame version {version} is not supported (this is {VERSION})")
        if len(frame) != OVERHEAD + plen:
            raise FrameError(
                f"image frame is {len(frame)} bytes but its header declares {OVERHEAD} + {plen} "
                "(truncated or padded)"
            )
        (crc,) = CRC.unpack_from(frame, len(frame) - CRC.size)
        if crc != zlib.crc32(frame[: -CRC.size]):
            raise FrameError("image frame CRC32 mismatch (corrupted in transit)")
        fmt = _BY_ID.get(ident)
        if fmt is None:
            raise FrameError(f"unknown image format id {ident}")
        if fmt != self.fmt or quality != self._wire_quality:
            raise FrameError(
                f"frame is {_label(fmt, quality)}; this codec decodes "
                f"{_label(self.fmt, self._wire_quality)}"
            )
        if (h, w, 3) != self.shape:
            raise FrameError(
                f"frame declares a {h}x{w}x3 image; this codec's is "
                f"{self.shape[0]}x{self.shape[1]}x3"
            )
        return self._decode_payload(frame[HEADER.size : HEADER.size + plen])

    def _decode_payload(self, payload: bytes) -> np.ndarray:
        h, w, c = self.shape
        if self.fmt == "raw":
            if len(payload) != h * w * c:
                raise FrameError(
                    f"raw payload is {len(payload)} bytes, {h}x{w}x{c} needs {h * w * c}"
                )
            return np.frombuffer(payload, np.uint8).reshape(self.shape).copy()
        if self.fmt == "lzw":
            return _LZW.decode(payload, self.shape).copy()  # writable, like the others
        try:
            with Image.open(io.BytesIO(payload), formats=[_PIL_NAMES[self.fmt]]) as im:
                # Checked before load(): a payload declaring a huge image is never decoded.
                if im.size != (w, h) or im.mode != "RGB":
                    raise FrameError(
                        f"{self.fmt} payload holds a {im.size[0]}x{im.size[1]} {im.mode} image; "
                        f"expected {w}x{h} RGB (width x height)"
                    )
                im.load()
                out = np.array(im, np.uint8)
        except FrameError:
            raise
        except Exception as e:  # Pillow reports bad data as OSError, SyntaxError, ValueError, ...
            raise _payload_error(self.fmt, e) from None
        if out.shape != self.shape:
            raise FrameError(f"{self.fmt} payload decodes to {out.shape}, expected {self.shape}")
        return out


def _label(fmt: str, wire_quality: int) -> str:
    if fmt in LOSSLESS and wire_quality == 0:
        return fmt
    return f"{fmt} at quality {wire_quality}"
