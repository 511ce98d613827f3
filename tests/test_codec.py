import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agilenn_jax.serving import codec

L, C = 8, 3
RNG = np.random.default_rng(0)
MODEL = codec.ProbabilityModel(RNG.dirichlet(np.ones(L), size=C), model_id=0xC0FFEE)

indices_st = hnp.arrays(
    np.uint8,
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(C)),
    elements=st.integers(0, L - 1),
)


@settings(max_examples=40, deadline=None)
@given(indices=indices_st, coder=st.sampled_from(sorted(codec.CODERS)))
def test_roundtrip_is_lossless(indices, coder):
    c = codec.Codec(MODEL, k=2, coder=coder)
    np.testing.assert_array_equal(c.decode(c.encode(indices)), indices)


def test_lzw_roundtrip_past_dictionary_reset():
    idx = RNG.integers(0, L, (64, 64, C)).astype(np.uint8)  # > 4096 new strings
    c = codec.Codec(MODEL, k=2, coder="lzw")
    np.testing.assert_array_equal(c.decode(c.encode(idx)), idx)


def test_range_coder_is_near_the_entropy_and_beats_lzw():
    probs = MODEL.probs
    idx = np.stack([RNG.choice(L, size=(32, 32), p=probs[ch]) for ch in range(C)], -1)
    idx = idx.astype(np.uint8)
    fitted = codec.ProbabilityModel.fit(idx[None], L, model_id=1)
    entropy_bytes = fitted.entropy_bits(idx[None]) / 8
    overhead = codec.HEADER.size + codec.CRC.size
    sizes = {
        name: len(codec.Codec(fitted, 2, name).encode(idx)) - overhead for name in codec.CODERS
    }
    assert sizes["range"] <= 1.03 * entropy_bytes + 8  # within a few percent (+ final word)
    assert sizes["range"] < sizes["huffman"] < sizes["raw"]
    assert sizes["range"] < sizes["lzw"]


def _frame():
    return codec.Codec(MODEL, k=2).encode(RNG.integers(0, L, (4, 4, C)).astype(np.uint8))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda f: f[:10], "truncated"),
        (lambda f: f[:-1], "length"),
        (lambda f: b"XXXX" + f[4:], "magic"),
        (lambda f: f[:4] + bytes([9]) + f[5:], "version"),
        (lambda f: f[:30] + bytes([f[30] ^ 0xFF]) + f[31:], "CRC32"),
    ],
)
def test_corrupt_frames_are_rejected(mutate, match):
    with pytest.raises(codec.FrameError, match=match):
        codec.Codec(MODEL, k=2).decode(mutate(_frame()))


def test_wrong_model_is_rejected():
    other = codec.ProbabilityModel(MODEL.probs, model_id=7)
    with pytest.raises(codec.FrameError, match="model"):
        codec.Codec(other, k=2).decode(_frame())
    with pytest.raises(ValueError, match="coder"):
        codec.Codec(MODEL, k=2, coder="gzip")
    with pytest.raises(ValueError, match="indices must be"):
        codec.Codec(MODEL, k=2).encode(np.zeros((2, 2, C + 1), np.uint8))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        codec.Codec(MODEL, k=2).decode(data)
    except codec.FrameError:
        pass


def test_probability_model_save_load(tmp_path):
    MODEL.save(str(tmp_path / "m.json"))
    m = codec.ProbabilityModel.load(str(tmp_path / "m.json"))
    np.testing.assert_allclose(m.probs, MODEL.probs)
    assert m.model_id == MODEL.model_id


SHAPE = (4, 4, C)


def _lying_frame(h: int, w: int) -> bytes:
    """A frame valid in every way (model id, k, centroids, channels, CRC) but of shape h x w:
    a codec built without ``shape`` accepts any H, W."""
    return codec.Codec(MODEL, k=2).encode(RNG.integers(0, L, (h, w, C)).astype(np.uint8))


@pytest.mark.parametrize("h,w", [(5, 4), (4, 5), (1, 1), (40, 40), (7, 100)])
def test_codec_with_shape_refuses_frames_of_another_shape(h, w):
    strict = codec.Codec(MODEL, k=2, shape=SHAPE)
    frame = _lying_frame(h, w)
    np.testing.assert_array_equal(codec.Codec(MODEL, k=2).decode(frame).shape, (h, w, C))
    with pytest.raises(codec.FrameError, match=f"{h}x{w}x{C}.*4x4x{C}"):
        strict.decode(frame)
    idx = RNG.integers(0, L, SHAPE).astype(np.uint8)  # its own shape still round-trips
    np.testing.assert_array_equal(strict.decode(strict.encode(idx)), idx)


def test_shape_is_checked_from_the_header_before_the_payload():
    # Header declares 40x40 with a garbage payload and a correct CRC: the shape is what is
    # refused, so the payload was never handed to the decoder.
    head = codec.HEADER.pack(
        codec.MAGIC,
        codec.VERSION,
        codec.CODERS["range"].ident,
        2,
        L,
        40,
        40,
        C,
        MODEL.model_id,
        7,
    )
    body = head + bytes(range(7))  # not whole 32-bit words
    frame = body + codec.CRC.pack(zlib.crc32(body))
    with pytest.raises(codec.FrameError, match="payload"):
        codec.Codec(MODEL, k=2).decode(frame)  # without a shape: the payload is decoded
    with pytest.raises(codec.FrameError, match="feature map"):
        codec.Codec(MODEL, k=2, shape=SHAPE).decode(frame)


def test_codec_with_shape_refuses_to_encode_another_shape():
    strict = codec.Codec(MODEL, k=2, shape=SHAPE)
    with pytest.raises(ValueError, match="model's shape"):
        strict.encode(np.zeros((5, 4, C), np.uint8))
    with pytest.raises(ValueError, match="for this model"):
        codec.Codec(MODEL, k=2, shape=(4, 4, C + 1))
    with pytest.raises(ValueError, match="for this model"):
        codec.Codec(MODEL, k=2, shape=(4, 4))
