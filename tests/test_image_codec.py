import io
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from agilenn_jax.serving import image_codec as ic
from agilenn_jax.serving.codec import FrameError

SHAPES = [(8, 8, 3), (24, 24, 3), (32, 32, 3), (96, 96, 3), (1, 1, 3), (7, 13, 3)]
LOSSY = sorted(set(ic.IMAGE_FORMATS) - ic.LOSSLESS)


def gradient(h: int, w: int) -> np.ndarray:
    """Smooth, low-frequency colour fields: no two neighbours need be equal."""
    y, x = np.mgrid[:h, :w] / max(h, w)
    r = 128 + 90 * np.cos(np.pi * x) * np.cos(0.5 * np.pi * y)
    g = 128 + 80 * np.sin(np.pi * (x + y) / 2)
    b = 100 + 60 * np.cos(np.pi * y)
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


def scene(h: int, w: int) -> np.ndarray:
    """Flat regions with a gentle sky gradient: sky, ground and a disc."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    img = np.empty((h, w, 3))
    img[...] = [90, 140, 220]
    img[..., 2] -= 40 * y / h
    img[y > 0.6 * h] = [70, 120, 50]
    img[(x - 0.4 * w) ** 2 + (y - 0.45 * h) ** 2 < (0.2 * min(h, w)) ** 2] = [200, 60, 40]
    return img.round().astype(np.uint8)


def noise(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def frame(payload: bytes, fmt="png", quality=0, h=24, w=24, magic=ic.MAGIC, version=ic.VERSION):
    """A frame with a valid CRC around an arbitrary header and payload."""
    ident = ic.FORMAT_IDS.get(fmt, fmt)
    body = ic.HEADER.pack(magic, version, ident, quality, h, w, len(payload)) + payload
    return body + ic.CRC.pack(zlib.crc32(body))


def pil_bytes(img: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    im = Image.fromarray(img)
    if mode is not None:
        im = im.convert(mode)
    if mode == "RGBA":
        im.putalpha(128)  # translucent: an opaque alpha plane may be dropped by the encoder
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("make", [noise, gradient, scene])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", sorted(ic.LOSSLESS))
def test_lossless_roundtrip_is_bit_exact(fmt, shape, make):
    img = make(*shape[:2])
    c = ic.ImageCodec(fmt, shape)
    out = c.decode(c.encode(img))
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, img)
    out[0, 0, 0] ^= 1  # the decoded image is the caller's to modify


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", LOSSY)
def test_lossy_decodes_to_the_right_shape(fmt, shape):
    for quality in (1, 50, 90, 100):
        c = ic.ImageCodec(fmt, shape, quality)
        out = c.decode(c.encode(noise(*shape[:2])))
        assert out.dtype == np.uint8 and out.shape == shape


@pytest.mark.parametrize("shape", [(24, 24, 3), (32, 32, 3), (96, 96, 3)])
@pytest.mark.parametrize("fmt", LOSSY)
def test_lossy_q90_is_faithful_on_a_smooth_image(fmt, shape):
    img = gradient(*shape[:2])
    c = ic.ImageCodec(fmt, shape, 90)
    assert psnr(c.decode(c.encode(img)), img) > 35.0


@pytest.mark.parametrize("shape", [(24, 24, 3), (96, 96, 3)])
@pytest.mark.parametrize("fmt", LOSSY)
def test_lossy_frames_shrink_as_quality_drops(fmt, shape):
    img = gradient(*shape[:2])
    sizes = [len(ic.ImageCodec(fmt, shape, q).encode(img)) for q in (95, 75, 50, 25, 10)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1], sizes


def test_jpeg_keeps_full_chroma_from_quality_90():
    img = gradient(32, 32)
    for quality, sampling in ((90, 0), (100, 0), (89, 2), (50, 2)):  # 0: 4:4:4, 2: 4:2:0
        payload = ic.ImageCodec("jpeg", img.shape, quality).encode(img)[ic.HEADER.size : -4]
        with Image.open(io.BytesIO(payload)) as im:
            assert JpegImagePlugin.get_sampling(im) == sampling, quality


def test_lossless_formats_beat_raw_on_smooth_images():
    for h, w in ((24, 24), (32, 32), (96, 96)):
        raw = len(ic.ImageCodec("raw", (h, w, 3)).encode(scene(h, w)))
        assert raw == h * w * 3 + ic.OVERHEAD
        assert len(ic.ImageCodec("png", (h, w, 3)).encode(scene(h, w))) < raw / 2
        assert len(ic.ImageCodec("lzw", (h, w, 3)).encode(scene(h, w))) < raw / 2
        assert len(ic.ImageCodec("png", (h, w, 3)).encode(gradient(h, w))) < raw / 2


def test_frame_header_says_what_it_holds():
    c = ic.ImageCodec("webp", (24, 32, 3), 75)
    f = c.encode(gradient(24, 32))
    magic, version, ident, quality, h, w, plen = ic.HEADER.unpack_from(f)
    assert (magic, version, ident, quality, h, w) == (b"AGIM", 1, ic.FORMAT_IDS["webp"], 75, 24, 32)
    assert len(f) == ic.OVERHEAD + plen
    assert (
        ic.HEADER.unpack_from(ic.ImageCodec("png", (24, 32, 3), 75).encode(gradient(24, 32)))[3]
        == 0
    )


# --------------------------------------------------------------------------- bad frames


@pytest.mark.parametrize("fmt", ic.IMAGE_FORMATS)
def test_corrupted_frames_raise_frame_error(fmt):
    c = ic.ImageCodec(fmt, (24, 24, 3), 80)
    good = c.encode(scene(24, 24))
    flipped = bytearray(good)
    flipped[ic.HEADER.size + len(flipped[ic.HEADER.size : -4]) // 2] ^= 0x40
    with pytest.raises(FrameError, match="CRC32 mismatch"):
        c.decode(bytes(flipped))
    for n in (0, 5, ic.OVERHEAD - 1):
        with pytest.raises(FrameError, match="truncated"):
            c.decode(good[:n])
    for bad in (good[:-1], good[: ic.OVERHEAD + 1], good + b"\0"):
        with pytest.raises(FrameError, match="truncated or padded"):
            c.decode(bad)
    with pytest.raises(FrameError, match="bad magic"):
        c.decode(b"AGNN" + good[4:])
    with pytest.raises(FrameError, match="version 2"):
        c.decode(frame(good[ic.HEADER.size : -4], fmt, c._wire_quality, version=2))


def test_frames_for_another_configuration_are_refused_from_the_header():
    img = scene(24, 24)
    png24 = ic.ImageCodec("png", (24, 24, 3)).encode(img)
    with pytest.raises(FrameError, match="declares a 24x24x3 image; this codec's is 32x32x3"):
        ic.ImageCodec("png", (32, 32, 3)).decode(png24)
    with pytest.raises(FrameError, match="frame is png; this codec decodes lzw"):
        ic.ImageCodec("lzw", (24, 24, 3)).decode(png24)
    jpeg75 = ic.ImageCodec("jpeg", (24, 24, 3), 75).encode(img)
    with pytest.raises(
        FrameError, match="jpeg at quality 75; this codec decodes jpeg at quality 90"
    ):
        ic.ImageCodec("jpeg", (24, 24, 3), 90).decode(jpeg75)
    with pytest.raises(FrameError, match="unknown image format id 9"):
        ic.ImageCodec("png", (24, 24, 3)).decode(frame(b"x", 9))
    with pytest.raises(FrameError, match="png at quality 7"):
        ic.ImageCodec("png", (24, 24, 3)).decode(frame(png24[ic.HEADER.size : -4], quality=7))


@pytest.mark.parametrize("fmt", LOSSY + ["png"])
def test_payloads_pillow_cannot_decode_raise_frame_error(fmt):
    c = ic.ImageCodec(fmt, (24, 24, 3), 90)
    q = c._wire_quality
    good = c.encode(scene(24, 24))[ic.HEADER.size : -4]
    for payload in (b"", b"not an image at all", good[: len(good) // 2], good[:20] + bytes(200)):
        with pytest.raises(FrameError, match=f"{fmt}"):
            c.decode(frame(payload, fmt, q))
    other = "JPEG" if fmt != "jpeg" else "PNG"
    with pytest.raises(FrameError, match=f"{fmt} payload does not decode"):
        c.decode(frame(pil_bytes(scene(24, 24), other), fmt, q))


@pytest.mark.parametrize("fmt", LOSSY + ["png"])
def test_payloads_of_the_wrong_size_or_mode_raise_frame_error(fmt):
    c = ic.ImageCodec(fmt, (24, 24, 3), 90)
    pil = ic._PIL_NAMES[fmt]
    with pytest.raises(FrameError, match="holds a 32x24 RGB image; expected 24x24 RGB"):
        c.decode(frame(pil_bytes(scene(24, 32), pil), fmt, c._wire_quality))
    mode = "RGBA" if fmt == "webp" else "L"  # WebP has no greyscale
    with pytest.raises(FrameError, match=f"24x24 {mode} image"):
        c.decode(frame(pil_bytes(scene(24, 24), pil, mode), fmt, c._wire_quality))


def test_bad_lzw_and_raw_payloads_raise_frame_error():
    lzw = ic.ImageCodec("lzw", (8, 8, 3))
    good = lzw.encode(noise(8, 8))[ic.HEADER.size : -4]
    for payload in (b"", good[:-3], good + good, b"\xff\xff\xff"):
        with pytest.raises(FrameError, match="lzw"):
            lzw.decode(frame(payload, "lzw", h=8, w=8))
    raw = ic.ImageCodec("raw", (8, 8, 3))
    with pytest.raises(FrameError, match="raw payload is 191 bytes, 8x8x3 needs 192"):
        raw.decode(frame(bytes(191), "raw", h=8, w=8))


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "args, message",
    [
        (("gif", (24, 24, 3)), "unknown image format 'gif'"),
        (("jpeg", (24, 24, 3), 0), r"quality must be in \[1, 100\], got 0"),
        (("jpeg", (24, 24, 3), 101), r"quality must be in \[1, 100\], got 101"),
        (("png", (24, 24, 3), 2.5), "quality must be an integer"),
        (("png", (24, 24)), r"shape must be \(H, W, 3\)"),
        (("png", (24, 24, 4)), r"shape must be \(H, W, 3\)"),
        (("png", (24, 24, 3, 1)), r"shape must be \(H, W, 3\)"),
        (("png", (24.0, 24, 3)), "integers"),
        (("png", (0, 24, 3)), "H and W must be in 1..65535"),
        (("raw", (24, 65536, 3)), "H and W must be in 1..65535"),
        (("webp", (20000, 8, 3)), "webp images are at most 16383 pixels a side"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        ic.ImageCodec(*args)


def test_codec_attributes():
    c = ic.ImageCodec("jpeg", np.array([24, 32, 3]), np.int64(75))
    assert (c.fmt, c.shape, c.quality, c.lossless, c.name) == (
        "jpeg",
        (24, 32, 3),
        75,
        False,
        "jpeg_q75",
    )
    assert ic.ImageCodec("lzw", (8, 8, 3)).lossless


@pytest.mark.parametrize(
    "image, got",
    [
        (np.zeros((24, 32, 3), np.uint8), r"got uint8 \(24, 32, 3\)"),
        (np.zeros((24, 24, 4), np.uint8), r"got uint8 \(24, 24, 4\)"),
        (np.zeros((24, 24), np.uint8), r"got uint8 \(24, 24\)"),
        (np.zeros((24, 24, 3), np.float32), r"got float32 \(24, 24, 3\)"),
        (np.zeros((24, 24, 3), np.int16), r"got int16 \(24, 24, 3\)"),
    ],
)
def test_encode_refuses_images_of_another_shape_or_dtype(image, got):
    for fmt in ic.IMAGE_FORMATS:
        with pytest.raises(ValueError, match=r"image must be uint8 \(24, 24, 3\), " + got):
            ic.ImageCodec(fmt, (24, 24, 3)).encode(image)


def test_encode_accepts_non_contiguous_images():
    img = np.ascontiguousarray(scene(24, 48)[:, ::2])
    view = scene(24, 48)[:, ::2]
    for fmt in sorted(ic.LOSSLESS):
        c = ic.ImageCodec(fmt, (24, 24, 3))
        assert c.encode(view) == c.encode(img)


def test_image_codec_name():
    assert [ic.image_codec_name(f, 90) for f in ic.IMAGE_FORMATS] == [
        "png",
        "lzw",
        "jpeg_q90",
        "webp_q90",
        "raw",
    ]
    assert ic.image_codec_name("webp", 75) == "webp_q75"
    assert ic.image_codec_name("png", 5) == "png"
    with pytest.raises(ValueError, match="unknown image format"):
        ic.image_codec_name("bmp", 90)
    with pytest.raises(ValueError, match="quality"):
        ic.image_codec_name("jpeg", 0)


def test_encode_cost_cycles_is_positive_and_monotone():
    sizes = [1, 192, 1728, 3072, 27648]
    for fmt in ic.IMAGE_FORMATS:
        costs = [ic.encode_cost_cycles(fmt, n) for n in sizes]
        assert all(isinstance(c, float) and c > 0 for c in costs)
        assert costs == sorted(costs) and len(set(costs)) == len(costs)
        assert ic.encode_cost_cycles(fmt, 0) == 0.0
    n = 32 * 32 * 3
    assert ic.encode_cost_cycles("raw", n) < ic.encode_cost_cycles("jpeg", n)
    assert ic.encode_cost_cycles("lzw", n) < ic.encode_cost_cycles("png", n)
    with pytest.raises(ValueError, match="unknown image format"):
        ic.encode_cost_cycles("gif", n)
    with pytest.raises(ValueError, match=">= 0"):
        ic.encode_cost_cycles("raw", -1)
