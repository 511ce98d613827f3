"""The ctx coder: Python rANS round trips, the C device encoder byte for byte against the
Python reference, malformed payloads, and codec models that predate the coder."""

import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agilenn_jax.deploy import encoder
from agilenn_jax.deploy.int8 import indices_from_int8
from agilenn_jax.serving import codec, rans
from tests.conftest import ROOT

RNG = np.random.default_rng(0)
M = 1 << rans.PROB_BITS


def _skewed_model(rng, c, ncent, caps):
    nctx = int(np.prod([1 if cap < 0 else cap + 2 for cap in caps]))
    probs = rng.dirichlet(np.full(ncent, 0.3), size=(nctx, c))
    freqs = np.stack([rans.quantize_row(p, rans.PROB_BITS) for p in probs.reshape(-1, ncent)])
    return rans.ContextModel(tuple(caps), rans.PROB_BITS, freqs.reshape(nctx, c, ncent))


@st.composite
def _cases(draw):
    ncent = draw(st.integers(2, 9))
    h, w, c = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    caps = tuple(draw(st.integers(-1, ncent - 1)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["random", "zeros", "max"]))
    return ncent, (h, w, c), caps, seed, kind


@settings(max_examples=120, deadline=None)
@given(case=_cases())
def test_python_roundtrip_random_tables(case):
    ncent, shape, caps, seed, kind = case
    rng = np.random.default_rng(seed)
    model = _skewed_model(rng, shape[2], ncent, caps)
    idx = {
        "random": rng.integers(0, ncent, shape),
        "zeros": np.zeros(shape, np.int64),
        "max": np.full(shape, ncent - 1),
    }[kind].astype(np.uint8)
    payload = model.encode(idx)
    np.testing.assert_array_equal(model.decode(payload, shape), idx)
    # within the rANS bound of the ideal code length, plus the 4-byte final state
    ideal = model.code_lengths(idx[None])[0]
    assert len(payload) <= np.ceil((ideal + idx.size * 0.006) / 8) + rans.STATE_BYTES


def test_near_certain_symbol_and_extreme_tables():
    shape = (8, 8, 2)
    certain = np.tile([M - 3, 1, 1, 1], (1, 2, 1))  # p(0) ~ 1
    model = rans.ContextModel((-1, -1, -1), rans.PROB_BITS, certain)
    zeros = np.zeros(shape, np.uint8)
    assert len(model.encode(zeros)) == rans.STATE_BYTES  # 128 near-free symbols: state only
    for idx in (zeros, np.full(shape, 3, np.uint8), RNG.integers(0, 4, shape).astype(np.uint8)):
        np.testing.assert_array_equal(model.decode(model.encode(idx), shape), idx)
    big = rans.ContextModel((0, 0, 0), rans.PROB_BITS, np.full((8, 3, 256), M // 256))
    idx = RNG.integers(0, 256, (3, 4, 3)).astype(np.uint8)  # max index 255, uniform bytes
    np.testing.assert_array_equal(big.decode(big.encode(idx), idx.shape), idx)


@pytest.mark.parametrize(
    "p",
    [[1.0, 0, 0, 0], [0.25] * 4, [1e-9, 1 - 1e-9], [0.5, 0.5 - 1e-6, 1e-6] + [0] * 13, [1] * 300],
)
def test_quantized_freqs_are_exact_and_positive(p):
    f = rans.quantize_row(np.asarray(p, np.float64), rans.PROB_BITS)
    assert f.sum() == M and f.min() >= 1 and f.dtype == np.int64
    np.testing.assert_array_equal(f, rans.quantize_row(np.asarray(p), rans.PROB_BITS))


def test_invalid_inputs_are_refused():
    for p in ([0.0, 0.0], [np.nan, 1.0], [-0.5, 1.5], np.ones(M + 1)):
        with pytest.raises(ValueError, match="cannot quantize"):
            rans.quantize_row(np.asarray(p), rans.PROB_BITS)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        rans.ContextModel.fit(np.full((1, 2, 2, 1), 4), 4)
    with pytest.raises(ValueError, match="row sum"):
        rans.ContextModel((-1, -1, -1), rans.PROB_BITS, np.ones((1, 2, 4)))
    with pytest.raises(ValueError, match="must be"):
        rans.ContextModel((1, -1, -1), rans.PROB_BITS, np.full((1, 2, 4), M // 4))


def test_fit_is_deterministic_and_valid():
    idx = _correlated_indices(RNG, 30, (6, 7, 3), np.array([-40, -5, 0, 20, 60]))
    a, b = (rans.ContextModel.fit(idx, 6) for _ in range(2))
    np.testing.assert_array_equal(a.freqs, b.freqs)
    assert a.caps == rans.DEFAULT_CAPS and a.freqs.shape == (a.num_contexts, 3, 6)
    assert np.all(a.freqs.sum(-1) == M) and a.freqs.min() >= 1
    # conditioning helps on correlated data: below the per-channel (context-free) model
    iid = rans.ContextModel.fit(idx, 6, caps=(-1, -1, -1))
    assert a.code_lengths(idx).mean() < 0.9 * iid.code_lengths(idx).mean()


# --------------------------------------------------------------------------- malformed


def _payload():
    model = _skewed_model(np.random.default_rng(1), 3, 5, (2, 1, 0))
    idx = np.random.default_rng(2).integers(0, 5, (6, 6, 3)).astype(np.uint8)
    return model, model.encode(idx), idx.shape


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda p: b"", "truncated"),
        (lambda p: p[:3], "truncated"),
        (lambda p: p[:-1], "truncated|state"),
        (lambda p: p + b"\x00", "trailing"),
        (lambda p: (1).to_bytes(4, "little") + p[4:], "invalid rANS state"),
        (lambda p: (0xFFFFFFFF).to_bytes(4, "little") + p[4:], "invalid rANS state"),
        (lambda p: p[:4] + bytes([p[4] ^ 0x5A]) + p[5:], "state|truncated|trailing"),
        (lambda p: bytes([p[0] ^ 1]) + p[1:], "state|truncated|trailing"),
    ],
)
def test_malformed_payloads_raise_frame_error(mutate, match):
    model, payload, shape = _payload()
    with pytest.raises(codec.FrameError, match=match):
        model.decode(mutate(payload), shape)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_random_payloads_never_crash(data):
    model, _, shape = _payload()
    try:
        assert model.decode(data, shape).shape == shape
    except codec.FrameError:
        pass


def _reframe(frame: bytes, payload: bytes) -> bytes:
    """The frame with another payload, header length and CRC fixed up: only the payload lies."""
    head = bytearray(frame[: codec.HEADER.size])
    head[-4:] = len(payload).to_bytes(4, "little")
    body = bytes(head) + payload
    return body + codec.CRC.pack(zlib.crc32(body))


def test_malformed_ctx_frames_raise_frame_error():
    idx = _correlated_indices(RNG, 5, (6, 6, 3), np.array([-40, 0, 40]))
    model = codec.ProbabilityModel.fit(idx, 4, model_id=9)
    c = codec.Codec(model, 2, "ctx", (6, 6, 3))
    frame = c.encode(idx[0])
    payload = frame[codec.HEADER.size : -codec.CRC.size]
    for bad in (payload[:-1], payload + b"\x01", payload[:2], b""):
        with pytest.raises(codec.FrameError, match="ctx payload"):
            c.decode(_reframe(frame, bad))
    np.testing.assert_array_equal(c.decode(_reframe(frame, payload)), idx[0])


# --------------------------------------------------------------------------- codec models


def test_codec_model_json_roundtrip_and_legacy(tmp_path):
    idx = _correlated_indices(RNG, 10, (5, 5, 3), np.array([-40, 0, 40]))
    model = codec.ProbabilityModel.fit(idx, 4, model_id=3)
    model.save(str(tmp_path / "m.json"))
    loaded = codec.ProbabilityModel.load(str(tmp_path / "m.json"))
    np.testing.assert_array_equal(loaded.context.freqs, model.context.freqs)
    assert loaded.context.caps == model.context.caps
    frame = codec.Codec(model, 2, "ctx").encode(idx[0])
    np.testing.assert_array_equal(codec.Codec(loaded, 2).decode(frame), idx[0])

    legacy = json.loads((tmp_path / "m.json").read_text())
    del legacy["context"]
    old = codec.ProbabilityModel.from_json(legacy)
    assert old.context is None and "context" not in old.to_json()
    with pytest.raises(ValueError, match="predates the ctx coder.*re-export"):
        codec.Codec(old, 2, "ctx").encode(idx[0])
    with pytest.raises(codec.FrameError, match="predates the ctx coder"):
        codec.Codec(old, 2).decode(frame)
    with pytest.raises(ValueError, match="predates the ctx coder"):
        encoder.write_encoder(str(tmp_path / "fw"), old, 2, np.array([-40, 0, 40]), (5, 5, 3))
    rng_frame = codec.Codec(old, 2, "range").encode(idx[0])  # other coders are unaffected
    np.testing.assert_array_equal(codec.Codec(old, 2).decode(rng_frame), idx[0])


def test_model_built_from_probs_alone_gets_context_free_tables():
    probs = RNG.dirichlet(np.ones(6), size=3)
    model = codec.ProbabilityModel(probs, model_id=1)
    assert model.context.caps == (-1, -1, -1) and model.context.freqs.shape == (1, 3, 6)
    with pytest.raises(ValueError, match="do not fit"):
        codec.ProbabilityModel(probs[:2], 1, model.context)


# --------------------------------------------------------------------------- the C encoder

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "agilenn_encoder.h"

#define CANARY 64
/* argv: features n stride offset out. For every sample: encode into a bound-sized buffer,
   re-encode with capacity exactly the frame length (same bytes) and one less (returns 0), and
   check that nothing past the capacity was written. */
static int encode(const int8_t *f, size_t stride, uint8_t *buf, size_t cap, size_t *len) {
  size_t i;
  memset(buf, 0xA5, cap + CANARY);
  *len = agilenn_encode_frame(f, stride, buf, cap);
  for (i = cap; i < cap + CANARY; ++i) if (buf[i] != 0xA5) return 1;
  return 0;
}

int main(int argc, char **argv) {
  FILE *in, *out;
  long n, s;
  size_t stride, offset, per, bound = agilenn_frame_bound(), len, len2;
  int8_t *feat;
  uint8_t *buf, *ref;
  if (argc != 6 || bound != AGILENN_ENC_FRAME_BOUND) return 2;
  n = atol(argv[2]); stride = (size_t)atol(argv[3]); offset = (size_t)atol(argv[4]);
  per = (size_t)AGILENN_ENC_H * AGILENN_ENC_W * stride;
  feat = malloc(per * (size_t)n); buf = malloc(bound + CANARY); ref = malloc(bound);
  in = fopen(argv[1], "rb"); out = fopen(argv[5], "wb");
  if (!feat || !buf || !ref || !in || !out) return 3;
  if (fread(feat, 1, per * (size_t)n, in) != per * (size_t)n) return 4;
  for (s = 0; s < n; ++s) {
    const int8_t *f = feat + per * (size_t)s + offset;
    uint32_t l;
    if (encode(f, stride, buf, bound, &len) || len == 0) return 5;
    memcpy(ref, buf, len);
    if (encode(f, stride, buf, len, &len2) || len2 != len || memcmp(ref, buf, len)) return 6;
    if (encode(f, stride, buf, len - 1, &len2) || len2 != 0) return 7;
    if (agilenn_encode_frame(f, stride, buf, 30) != 0) return 8;
    l = (uint32_t)len;
    fwrite(&l, 4, 1, out); fwrite(ref, 1, len, out);
  }
  fclose(out); fclose(in); free(feat); free(buf); free(ref);
  return 0;
}
"""

needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc not found: the C device encoder is not tested"
)


def _correlated_features(rng, n, h, w, c):
    """Smooth int8 feature maps (random walks in x and y), so neighbouring indices correlate."""
    walk = rng.normal(0, 12, (n, h, w, c)).cumsum(1).cumsum(2) / 3
    walk += rng.normal(0, 60, (n, 1, 1, c)) + rng.normal(0, 5, (n, h, w, c))
    return np.clip(np.round(walk), -128, 127).astype(np.int8)


def _correlated_indices(rng, n, shape, thresholds):
    return indices_from_int8(_correlated_features(rng, n, *shape), thresholds)


def _c_frames(tmp_path, model, k, thr, shape, feats, stride, offset, flags=()):
    """Frames the generated C encoder writes for features [N, H, W, stride]."""
    d = tmp_path / "fw"
    info = encoder.write_encoder(str(d), model, k, thr, shape)
    (d / "main.c").write_text(HARNESS)
    exe = str(d / "enc")
    cmd = ["gcc", "-std=c99", "-O2", "-Wall", "-Werror", *flags, "-I", str(d), "-o", exe]
    cmd += [str(d / f) for f in ("main.c", "agilenn_encoder.c", "agilenn_codec_tables.c")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    feats_path, out_path = d / "features.bin", d / "frames.bin"
    feats.astype(np.int8).tofile(feats_path)
    args = [exe, str(feats_path), str(len(feats)), str(stride), str(offset), str(out_path)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"C harness failed with {r.returncode}: {r.stderr}"
    blob, frames = out_path.read_bytes(), []
    while blob:
        n = int.from_bytes(blob[:4], "little")
        frames.append(blob[4 : 4 + n])
        blob = blob[4 + n :]
    return frames, info


@needs_gcc
@pytest.mark.parametrize(
    "thr,shape,caps,k,n",
    [
        ([-60, -25, -5, 0, 10, 30, 70], (7, 9, 4), rans.DEFAULT_CAPS, 2, 300),
        ([-128, 5, 5, 30], (5, 6, 3), (1, 0, 3), 1, 200),  # tied thresholds; prev channel
        ([-129, -20, 0, 127], (4, 4, 2), (3, 3, 3), 0, 100),  # always-> and never-> thresholds
        ([-50, 0, 50], (24, 24, 6), rans.DEFAULT_CAPS, 3, 8),
        ([-30, 0, 30], (5, 4, 3), (-1, 1, 2), 1, 60),  # no left neighbour
        ([-30, 0, 30], (4, 5, 2), (2, -1, -1), 0, 60),  # left only
    ],
)
def test_c_encoder_frames_equal_python(tmp_path, thr, shape, caps, k, n):
    rng = np.random.default_rng(len(thr) * 7 + n)
    thr = np.asarray(thr)
    ncent = len(thr) + 1
    train = _correlated_indices(rng, 50, shape, thr)
    fitted = codec.ProbabilityModel.fit(train, ncent, model_id=0xDEADBEEF)
    model = codec.ProbabilityModel(
        fitted.probs, fitted.model_id, rans.ContextModel.fit(train, ncent, caps)
    )
    stride = shape[2] + k  # offloaded channels follow the k local ones in each pixel
    feats = _correlated_features(rng, n, shape[0], shape[1], stride)
    feats[: n // 10] = rng.integers(-128, 128, feats[: n // 10].shape)  # and some noise
    frames, info = _c_frames(tmp_path, model, k, thr, shape, feats, stride, k)
    c = codec.Codec(model, k, "ctx", shape)
    for f, frame in zip(feats, frames, strict=True):
        idx = indices_from_int8(f[..., k:], thr)
        assert frame == c.encode(idx)
        np.testing.assert_array_equal(c.decode(frame), idx)
        assert len(frame) <= info["frame_bound_bytes"]
    nctx, _, ncent = model.context.freqs.shape
    assert info["flash_bytes"]["cum_freq_tables"] == nctx * shape[2] * (ncent + 1) * 2
    assert info["flash_bytes"]["index_lut"] == 256


@needs_gcc
def test_c_encoder_wide_context_terms(tmp_path):
    """More than 2^16 cumulative-table entries: the context term tables are uint32."""
    thr = np.arange(-124, 128, 4)[:63]  # 64 centroids, all three neighbours with cap 5
    shape, caps = (5, 6, 4), (5, 5, 5)
    rng = np.random.default_rng(5)
    train = _correlated_indices(rng, 20, shape, thr)
    model = codec.ProbabilityModel.fit(train, 64, model_id=7)
    model = codec.ProbabilityModel(
        model.probs, model.model_id, rans.ContextModel.fit(train, 64, caps)
    )
    feats = _correlated_features(rng, 20, *shape)
    frames, info = _c_frames(tmp_path, model, 1, thr, shape, feats, shape[2], 0)
    assert (
        "typedef uint32_t agilenn_enc_term_t;" in (tmp_path / "fw" / encoder.TABLES_H).read_text()
    )
    assert info["flash_bytes"]["context_term_luts"] == 3 * 256 * 4
    c = codec.Codec(model, 1, "ctx", shape)
    assert frames == [c.encode(indices_from_int8(f, thr)) for f in feats]


@pytest.mark.parametrize(
    "thr", [[-60, -25, -5, 0, 10, 30, 70], [-128, 5, 5, 30], [-129, -20, 0, 127], [127] * 3, [0]]
)
def test_index_lut_is_the_threshold_rule(thr):
    """The C encoder's 256-entry index table equals the server's rule for every int8, ties,
    always-greater (-129) and never-greater (127) thresholds included."""
    q = np.arange(-128, 128).astype(np.int8)
    lut = encoder.index_lut(np.asarray(thr))
    np.testing.assert_array_equal(lut, indices_from_int8(q, np.asarray(thr)))


@needs_gcc
def test_c_encoder_worst_case_fits_the_bound(tmp_path):
    """Every coded symbol the rarest (freq 1 of 2^15): the frame still fits the bound."""
    shape, thr = (6, 5, 3), np.array([-100, 0, 100])
    freqs = np.tile([M - 3, 1, 1, 1], (1, 3, 1))
    model = codec.ProbabilityModel(
        np.full((3, 4), 0.25), 5, rans.ContextModel((-1, -1, -1), rans.PROB_BITS, freqs)
    )
    feats = np.full((2, 6, 5, 3), 127, np.int8)
    frames, info = _c_frames(tmp_path, model, 2, thr, shape, feats, 3, 0)
    assert frames[0] == codec.Codec(model, 2, "ctx").encode(np.full(shape, 3, np.uint8))
    assert len(frames[0]) > info["frame_bound_bytes"] - 8  # ~15 bits a symbol: tight


@needs_gcc
def test_c_encoder_is_clean_under_sanitizers(tmp_path):
    flags = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all")
    probe = subprocess.run(
        ["gcc", *flags, "-x", "c", "-", "-o", str(tmp_path / "probe")],
        input="int main(void){return 0;}",
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        pytest.skip("gcc cannot build with ASan/UBSan here")
    shape, thr = (6, 7, 3), np.array([-40, -5, 0, 20, 60])
    train = _correlated_indices(RNG, 30, shape, thr)
    model = codec.ProbabilityModel.fit(train, 6, model_id=1)
    feats = _correlated_features(RNG, 20, 6, 7, 3)
    frames, _ = _c_frames(tmp_path, model, 2, thr, shape, feats, 3, 0, flags)
    c = codec.Codec(model, 2, "ctx", shape)
    assert frames == [c.encode(indices_from_int8(f, thr)) for f in feats]


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="no arm-none-eabi-gcc")
def test_c_encoder_builds_for_cortex_m7(tmp_path):
    idx = _correlated_indices(RNG, 5, (4, 4, 2), np.array([-40, 0, 40]))
    model = codec.ProbabilityModel.fit(idx, 4, model_id=1)
    encoder.write_encoder(str(tmp_path), model, 2, np.array([-40, 0, 40]), (4, 4, 2))
    for src in ("agilenn_encoder.c", "agilenn_codec_tables.c"):
        cmd = ["arm-none-eabi-gcc", "-std=c99", "-mcpu=cortex-m7", "-mthumb", "-Os", "-Wall"]
        cmd += ["-Wextra", "-Werror", "-c", str(tmp_path / src), "-o", str(tmp_path / "o.o")]
        subprocess.run(cmd, check=True, capture_output=True)


def test_c_sources_ship_as_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    data = dict(cfg["options.package_data"])["agilenn_jax.deploy"].replace("\n", ",").split(",")
    patterns = {p.strip() for p in data}
    for name in encoder.STATIC_FILES:
        assert os.path.exists(os.path.join(encoder.CSRC, name))
        assert any(fnmatch.fnmatch(f"csrc/{name}", p) for p in patterns), patterns
