/* AgileNN int8 kernels: the four layer types of the device model, one interface, two back-ends.
 *
 * agilenn_kernels_portable.c is dependency-free C99; agilenn_kernels_cmsis.c calls Arm's
 * CMSIS-NN. Both reproduce TFLite's int8 kernels bit for bit: per-channel requantisation with
 * TFLite's default double rounding (SaturatingRoundingDoublingHighMul, then
 * RoundingDivideByPOT), every multiplier, shift, clamp range and padding offset precomputed by
 * the generator (agilenn_jax.deploy.codegen) exactly as TFLite computes them.
 *
 * Tensors are int8 NHWC with batch 1. Each call returns 0, or one of the AGILENN_ERR_* codes.
 */
#ifndef AGILENN_KERNELS_H_
#define AGILENN_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#define AGILENN_ERR_KERNEL 1  /* a CMSIS-NN kernel rejected its arguments */
#define AGILENN_ERR_SCRATCH 2 /* the generated scratch buffer is smaller than CMSIS-NN needs */

typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t in_ch0, in_stride; /* input = channels [in_ch0, in_ch0 + in_c) of pixels in_stride apart */
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, pad_h, pad_w; /* pad_*: TFLite's top/left offset */
    int32_t depth_mult;
    int32_t in_offset, filter_offset, out_offset; /* -input zp, -filter zp, +output zp */
    int32_t act_min, act_max;
    int32_t per_channel; /* mult/shift hold out_c entries (else one, for every channel) */
    const int8_t *weights;
    const int32_t *bias; /* may be NULL */
    const int32_t *mult, *shift;
    int32_t scratch_bytes; /* bytes at the scratch pointer (CMSIS-NN back-end only) */
} agilenn_op;

/* CONV_2D: weights [out_c, k_h, k_w, in_c]. */
int agilenn_conv_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch);
/* DEPTHWISE_CONV_2D: weights [1, k_h, k_w, out_c], out channel = in channel * depth_mult + m. */
int agilenn_dwconv_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch);
/* Global AVERAGE_POOL_2D (window = input, output 1x1); input may be a channel slice. */
int agilenn_avgpool_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch);
/* FULLY_CONNECTED: weights [out_c, in_c], batch 1. */
int agilenn_fc_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch);

#endif /* AGILENN_KERNELS_H_ */
