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
 * up and previous-channel neighbours, which the decoder has already decoded.
 *
 * Per symbol everything is a table look-up (agilenn_codec_tables.h): its centroid index from the
 * 256-entry index table (the threshold rule #{j : q > t_j} evaluated for every int8 q), each
 * used neighbour's context term from its 256-entry term table (already an offset into the
 * cumulative table), then its cumulative frequency and frequency from one cumulative row; the
 * division stays a UDIV. A neighbour outside the map reads a zero feature through a one-entry
 * term table holding the outside term, so the channel loop has no branch for the borders.
 */
#include "agilenn_encoder.h"

#define ENC_RANS_L ((uint32_t)1 << 23)
#define ENC_HEADER_BYTES 23u
#define ENC_STATE_BYTES 4u
#define ENC_CRC_BYTES 4u
#define ENC_BUCKETS(cap) ((cap) < 0 ? 1u : (uint32_t)(cap) + 2u)
/* agilenn_enc_cum elements per channel row, per previous-channel, up and left bucket */
#define ENC_ROW ((uint32_t)AGILENN_ENC_NUM_CENTROIDS + 1u)
#define ENC_STRIDE_PREV ((uint32_t)AGILENN_ENC_CR * ENC_ROW)
#define ENC_STRIDE_UP (ENC_BUCKETS(AGILENN_ENC_CAP_PREV) * ENC_STRIDE_PREV)
#define ENC_STRIDE_LEFT (ENC_BUCKETS(AGILENN_ENC_CAP_UP) * ENC_STRIDE_UP)
/* The context term of a neighbour outside the map (bucket cap + 1). */
#define ENC_OUTSIDE(cap, stride) ((cap) < 0 ? 0u : ((uint32_t)(cap) + 1u) * (stride))
#define ENC_HAS_LEFT (AGILENN_ENC_CAP_LEFT >= 0)
#define ENC_HAS_UP (AGILENN_ENC_CAP_UP >= 0)
#define ENC_HAS_PREV (AGILENN_ENC_CAP_PREV >= 0)
/* Renormalisation is rare (most symbols emit no byte): keep it off the hot path. */
#if defined(__GNUC__)
#define ENC_RARELY(cond) __builtin_expect(!!(cond), 0)
#else
#define ENC_RARELY(cond) (cond)
#endif

/* The generated tables must describe a model this encoder can code. */
typedef char agilenn_enc_check_prob_bits
    [(AGILENN_ENC_PROB_BITS >= 1 && AGILENN_ENC_PROB_BITS <= 15) ? 1 : -1];
typedef char agilenn_enc_check_centroids
    [(AGILENN_ENC_NUM_CENTROIDS >= 2 && AGILENN_ENC_NUM_CENTROIDS <= 256) ? 1 : -1];
typedef char agilenn_enc_check_contexts
    [(AGILENN_ENC_NUM_CONTEXTS == ENC_BUCKETS(AGILENN_ENC_CAP_LEFT) *
                                      ENC_BUCKETS(AGILENN_ENC_CAP_UP) *
                                      ENC_BUCKETS(AGILENN_ENC_CAP_PREV)) ? 1 : -1];
typedef char agilenn_enc_check_terms
    [(sizeof(agilenn_enc_term_t) >= 4 ||
      (uint32_t)AGILENN_ENC_NUM_CONTEXTS * ENC_STRIDE_PREV <= 65536u) ? 1 : -1];

#if ENC_HAS_LEFT
static const agilenn_enc_term_t enc_outside_left =
    ENC_OUTSIDE(AGILENN_ENC_CAP_LEFT, ENC_STRIDE_LEFT);
#endif
#if ENC_HAS_UP
static const agilenn_enc_term_t enc_outside_up = ENC_OUTSIDE(AGILENN_ENC_CAP_UP, ENC_STRIDE_UP);
#endif
#if ENC_HAS_LEFT || ENC_HAS_UP
/* What an outside neighbour "reads": q = 0 of a one-entry term table, for every channel. */
static const int8_t enc_zeros[AGILENN_ENC_CR] = {0};
#endif

/* zlib's CRC-32 (reflected, polynomial 0xEDB88320), four bits at a time. */
static const uint32_t enc_crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

size_t agilenn_frame_bound(void) { return (size_t)AGILENN_ENC_FRAME_BOUND; }

static void enc_put_u16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void enc_put_u32(uint8_t *p, uint32_t v) {
  enc_put_u16(p, v);
  enc_put_u16(p + 2, v >> 16);
}

static uint32_t enc_crc32(const uint8_t *p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  while (n--) {
    crc ^= *p++;
    crc = (crc >> 4) ^ enc_crc_nibble[crc & 15u];
    crc = (crc >> 4) ^ enc_crc_nibble[crc & 15u];
  }
  return ~crc;
}

size_t agilenn_encode_frame(const int8_t *features, size_t pixel_stride, uint8_t *frame,
                            size_t capacity) {
  const uint8_t *const index = agilenn_enc_index + 128; /* index[q], q an int8 */
  uint8_t *lo, *ptr, *end;
  uint32_t state = ENC_RANS_L, y, x;
  size_t len, i;

  if (features == NULL || frame == NULL ||
      capacity < ENC_HEADER_BYTES + ENC_STATE_BYTES + ENC_CRC_BYTES) {
    return 0;
  }
  lo = frame + ENC_HEADER_BYTES;
  end = frame + capacity - ENC_CRC_BYTES; /* the payload is coded backwards, ending here */
  ptr = end;
  for (y = AGILENN_ENC_H; y-- > 0;) {
#if ENC_HAS_UP
    /* the up neighbours' term table, or the outside term (read with q = 0) on the first row */
    const agilenn_enc_term_t *const up_terms =
        y > 0 ? agilenn_enc_up_terms + 128 : &enc_outside_up;
#endif
    for (x = AGILENN_ENC_W; x-- > 0;) {
      /* pixel (y, x): channels CR - 1 .. 0, q walking back from its end to p */
      const int8_t *const p = features + ((size_t)y * AGILENN_ENC_W + x) * pixel_stride;
      const int8_t *q = p + AGILENN_ENC_CR;
      const uint16_t *chan = &agilenn_enc_cum[0][AGILENN_ENC_CR - 1][0]; /* context 0's row */
#if ENC_HAS_LEFT
      const agilenn_enc_term_t *const left_terms =
          x > 0 ? agilenn_enc_left_terms + 128 : &enc_outside_left;
      const int8_t *left;
#endif
#if ENC_HAS_UP
      const int8_t *up;
#endif
#if ENC_HAS_LEFT
      left = (x > 0 ? p - pixel_stride : enc_zeros) + AGILENN_ENC_CR;
#endif
#if ENC_HAS_UP
      up = (y > 0 ? p - (size_t)AGILENN_ENC_W * pixel_stride : enc_zeros) + AGILENN_ENC_CR;
#endif
      do {
        const uint16_t *row = chan;
        uint32_t start, freq;
#if ENC_HAS_LEFT
        row += left_terms[*--left];
#endif
#if ENC_HAS_UP
        row += up_terms[*--up];
#endif
        row += index[*--q];
#if ENC_HAS_PREV
        row += q > p ? (uint32_t)agilenn_enc_prev_terms[128 + q[-1]]
                     : ENC_OUTSIDE(AGILENN_ENC_CAP_PREV, ENC_STRIDE_PREV);
#endif
        chan -= ENC_ROW;
        start = row[0];
        freq = row[1] - start;
        /* renormalise while state >= freq << (31 - PROB_BITS): then state < 2^31 after coding */
        while (ENC_RARELY((state >> (31 - AGILENN_ENC_PROB_BITS)) >= freq)) {
          if (ptr == lo) return 0;
          *--ptr = (uint8_t)state;
          state >>= 8;
        }
        state = ((state / freq) << AGILENN_ENC_PROB_BITS) + state % freq + start;
      } while (q != p);
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
