/* AgileNN device encoder: offloaded int8 features -> one complete `ctx` frame.
 *
 * Dependency-free C99 (stdint/stddef only, no malloc, no libc, no static RAM). The tables it
 * needs (shape, k, model id, centroid index table, cumulative frequency and context term tables)
 * are generated per export in agilenn_codec_tables.h/.c by agilenn_jax.deploy.encoder. The bytes
 * it writes are exactly those of the Python reference,
 * agilenn_jax.serving.codec.Codec(model, k, "ctx", shape).encode, and the server's Codec.decode
 * reads them; the algorithm is specified in agilenn_jax/serving/rans.py.
 */
#ifndef AGILENN_ENCODER_H_
#define AGILENN_ENCODER_H_

#include <stddef.h>
#include <stdint.h>

#include "agilenn_codec_tables.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Worst-case frame bytes for one sample (== AGILENN_ENC_FRAME_BOUND): a frame buffer this large
 * never makes agilenn_encode_frame fail. */
size_t agilenn_frame_bound(void);

/* features: int8 extractor output of the offloaded channels: element (y, x, c) at
 * features[(y * AGILENN_ENC_W + x) * pixel_stride + c], c < AGILENN_ENC_CR (pixel_stride is the
 * extractor's channel count when features points at its first offloaded channel). Each index is
 * #{j : q > thresholds[j]} (read from the generated 256-entry table agilenn_enc_index, that rule
 * evaluated for every int8 q). Writes one complete frame (header, ctx-coded payload, CRC32) to
 * frame; returns its length, or 0 if capacity is too small. The payload is coded backwards into
 * the tail of frame itself, so no other buffer is needed. */
size_t agilenn_encode_frame(const int8_t *features, size_t pixel_stride, uint8_t *frame,
                            size_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* AGILENN_ENCODER_H_ */
