/* AgileNN device encoder: static context-modelled rANS, bit-exact with the Python reference
 * (agilenn_jax/serving/rans.py holds the specification; this file implements it).
 *
 * Frame (little-endian), as agilenn_jax/serving/codec.py reads it:
 *   "AGNN" | version u8 | coder u8 | k u8 | num_centroids u16 | H u16 | W u16 | C_r u16
 *   | model_id u32 | payload_len u32 | payload | crc32 u32 (zlib's, over everything before it)
 *
 * Payload: rANS with a 32-bit state, L = 2^23, M = 2^AGILENN_ENC_PROB_BITS and byte-wise
 * renormalisation. Symbols are coded last to first (reverse raster order y, x, c) and bytes are
 * written backwards, so the decoder reads forwards; each symbol's context comes from its left,
 * up and previous-channel neighbours, which the decoder has already decoded. Indices are
 * recomputed from the int8 features (a few compares each) instead of being stored.
 */
#include "agilenn_encoder.h"

#define ENC_RANS_L ((uint32_t)1 << 23)
#define ENC_HEADER_BYTES 23u
#define ENC_STATE_BYTES 4u
#define ENC_CRC_BYTES 4u
#define ENC_BUCKETS(cap) ((cap) < 0 ? 1u : (uint32_t)(cap) + 2u)

/* The generated tables must describe a model this encoder can code. */
typedef char agilenn_enc_check_prob_bits
    [(AGILENN_ENC_PROB_BITS >= 1 && AGILENN_ENC_PROB_BITS <= 15) ? 1 : -1];
typedef char agilenn_enc_check_centroids
    [(AGILENN_ENC_NUM_CENTROIDS >= 2 && AGILENN_ENC_NUM_CENTROIDS <= 256) ? 1 : -1];
typedef char agilenn_enc_check_contexts
    [(AGILENN_ENC_NUM_CONTEXTS == ENC_BUCKETS(AGILENN_ENC_CAP_LEFT) *
                                      ENC_BUCKETS(AGILENN_ENC_CAP_UP) *
                                      ENC_BUCKETS(AGILENN_ENC_CAP_PREV)) ? 1 : -1];

size_t agilenn_frame_bound(void) { return (size_t)AGILENN_ENC_FRAME_BOUND; }

/* Centroid index of feature (y, x, c): #{j : q > t_j}, exactly as the server expects. */
static int enc_index(const int8_t *features, size_t stride, uint32_t y, uint32_t x,
                     uint32_t c) {
  const int q = features[((size_t)y * AGILENN_ENC_W + x) * stride + c];
  int n = 0, j;
  for (j = 0; j < AGILENN_ENC_NUM_CENTROIDS - 1; ++j) n += q > agilenn_enc_thresholds[j];
  return n;
}

/* A neighbour's bucket: min(v, cap), cap + 1 outside the map (v < 0), 0 if unused (cap < 0). */
static uint32_t enc_bucket(int v, int cap) {
  if (cap < 0) return 0u;
  if (v < 0) return (uint32_t)cap + 1u;
  return (uint32_t)(v < cap ? v : cap);
}

static void enc_put_u16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void enc_put_u32(uint8_t *p, uint32_t v) {
  enc_put_u16(p, v);
  enc_put_u16(p + 2, v >> 16);
}

/* zlib's CRC-32 (reflected, polynomial 0xEDB88320), bitwise: no table in flash. */
static uint32_t enc_crc32(const uint8_t *p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  int k;
  while (n--) {
    crc ^= *p++;
    for (k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

size_t agilenn_encode_frame(const int8_t *features, size_t pixel_stride, uint8_t *frame,
                            size_t capacity) {
  const uint32_t unit = (ENC_RANS_L >> AGILENN_ENC_PROB_BITS) << 8;
  uint8_t *lo, *ptr, *end;
  uint32_t state = ENC_RANS_L, y, x, c;
  size_t len, i;

  if (features == NULL || frame == NULL ||
      capacity < ENC_HEADER_BYTES + ENC_STATE_BYTES + ENC_CRC_BYTES) {
    return 0;
  }
  lo = frame + ENC_HEADER_BYTES;
  end = frame + capacity - ENC_CRC_BYTES; /* the payload is coded backwards, ending here */
  ptr = end;
  for (y = AGILENN_ENC_H; y-- > 0;) {
    for (x = AGILENN_ENC_W; x-- > 0;) {
      for (c = AGILENN_ENC_CR; c-- > 0;) {
        const int s = enc_index(features, pixel_stride, y, x, c);
        const int left = (AGILENN_ENC_CAP_LEFT >= 0 && x > 0)
                             ? enc_index(features, pixel_stride, y, x - 1, c) : -1;
        const int up = (AGILENN_ENC_CAP_UP >= 0 && y > 0)
                           ? enc_index(features, pixel_stride, y - 1, x, c) : -1;
        const int prev = (AGILENN_ENC_CAP_PREV >= 0 && c > 0)
                             ? enc_index(features, pixel_stride, y, x, c - 1) : -1;
        const uint32_t ctx = (enc_bucket(left, AGILENN_ENC_CAP_LEFT) *
                                  ENC_BUCKETS(AGILENN_ENC_CAP_UP) +
                              enc_bucket(up, AGILENN_ENC_CAP_UP)) *
                                 ENC_BUCKETS(AGILENN_ENC_CAP_PREV) +
                             enc_bucket(prev, AGILENN_ENC_CAP_PREV);
        const uint16_t *row = agilenn_enc_freqs[ctx][c];
        const uint32_t freq = row[s];
        uint32_t cum = 0;
        int j;
        for (j = 0; j < s; ++j) cum += row[j];
        while (state >= unit * freq) { /* renormalise: state < unit * freq keeps it < 2^31 */
          if (ptr == lo) return 0;
          *--ptr = (uint8_t)state;
          state >>= 8;
        }
        state = ((state / freq) << AGILENN_ENC_PROB_BITS) + state % freq + cum;
      }
    }
  }
  if ((size_t)(ptr - lo) < ENC_STATE_BYTES) return 0;
  ptr -= ENC_STATE_BYTES; /* the final state, little-endian: what the decoder reads first */
  enc_put_u32(ptr, state);
  len = (size_t)(end - ptr);
  for (i = 0; i < len; ++i) lo[i] = ptr[i]; /* forward copy is safe: lo <= ptr */

  frame[0] = 'A';
  frame[1] = 'G';
  frame[2] = 'N';
  frame[3] = 'N';
  frame[4] = (uint8_t)AGILENN_ENC_FRAME_VERSION;
  frame[5] = (uint8_t)AGILENN_ENC_CODER_ID;
  frame[6] = (uint8_t)AGILENN_ENC_K;
  enc_put_u16(frame + 7, AGILENN_ENC_NUM_CENTROIDS);
  enc_put_u16(frame + 9, AGILENN_ENC_H);
  enc_put_u16(frame + 11, AGILENN_ENC_W);
  enc_put_u16(frame + 13, AGILENN_ENC_CR);
  enc_put_u32(frame + 15, AGILENN_ENC_MODEL_ID);
  enc_put_u32(frame + 19, (uint32_t)len);
  enc_put_u32(lo + len, enc_crc32(frame, ENC_HEADER_BYTES + len));
  return ENC_HEADER_BYTES + len + ENC_CRC_BYTES;
}
