/* AgileNN int8 kernels, portable back-end: plain C99, TFLite's reference_integer_ops semantics.
 * Loops are kept simple on purpose (flash matters more than speed here; the CMSIS-NN back-end
 * is the fast one). Assumes >> on a negative int32 is an arithmetic shift, as TFLite does. */
#include "agilenn_kernels.h"

/* gemmlowp SaturatingRoundingDoublingHighMul. */
static int32_t srdhm(int32_t a, int32_t b)
{
    int64_t ab;
    int32_t nudge;
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* gemmlowp RoundingDivideByPOT: round to nearest, ties away from zero. */
static int32_t rdbpot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier + output offset + clamp to the fused activation's range. */
static int8_t requantize(const agilenn_op *op, int32_t acc, int32_t c)
{
    const int32_t i = op->per_channel ? c : 0;
    const int32_t shift = op->shift[i];
    const int32_t left = shift > 0 ? shift : 0;
    acc = rdbpot(srdhm(acc * (1 << left), op->mult[i]), shift > 0 ? 0 : -shift);
    acc += op->out_offset;
    acc = acc < op->act_min ? op->act_min : acc;
    return (int8_t)(acc > op->act_max ? op->act_max : acc);
}

/* Conv and depthwise conv: one loop nest; depthwise reads input channel oc / depth_mult and
 * the weight at [ky][kx][oc], conv sums all input channels with weights [oc][ky][kx][ic]. */
static int conv_common(const agilenn_op *op, const int8_t *in, int8_t *out, int depthwise)
{
    int32_t oy, ox, oc, ky, kx, ic;
    for (oy = 0; oy < op->out_h; ++oy) {
        for (ox = 0; ox < op->out_w; ++ox) {
            for (oc = 0; oc < op->out_c; ++oc) {
                int32_t acc = op->bias ? op->bias[oc] : 0;
                for (ky = 0; ky < op->k_h; ++ky) {
                    const int32_t iy = oy * op->stride_h - op->pad_h + ky;
                    if (iy < 0 || iy >= op->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < op->k_w; ++kx) {
                        const int32_t ix = ox * op->stride_w - op->pad_w + kx;
                        const int8_t *px = in + (iy * op->in_w + ix) * op->in_stride;
                        const int8_t *w;
                        if (ix < 0 || ix >= op->in_w) {
                            continue;
                        }
                        if (depthwise) {
                            w = op->weights + (ky * op->k_w + kx) * op->out_c + oc;
                            acc += *w * (px[oc / op->depth_mult] + op->in_offset);
                            continue;
                        }
                        w = op->weights + ((oc * op->k_h + ky) * op->k_w + kx) * op->in_c;
                        for (ic = 0; ic < op->in_c; ++ic) {
                            acc += w[ic] * (px[ic] + op->in_offset);
                        }
                    }
                }
                *out++ = requantize(op, acc, oc);
            }
        }
    }
    return 0;
}

int agilenn_conv_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    (void)scratch;
    return conv_common(op, in, out, 0);
}

int agilenn_dwconv_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    (void)scratch;
    return conv_common(op, in, out, 1);
}

int agilenn_avgpool_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    const int32_t n = op->in_h * op->in_w;
    int32_t c, p;
    (void)scratch;
    for (c = 0; c < op->out_c; ++c) {
        int32_t acc = 0;
        for (p = 0; p < n; ++p) {
            acc += in[p * op->in_stride + c];
        }
        acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
        acc = acc < op->act_min ? op->act_min : acc;
        out[c] = (int8_t)(acc > op->act_max ? op->act_max : acc);
    }
    return 0;
}

int agilenn_fc_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    int32_t o, i;
    (void)scratch;
    for (o = 0; o < op->out_c; ++o) {
        const int8_t *w = op->weights + o * op->in_c;
        int32_t acc = op->bias ? op->bias[o] : 0;
        for (i = 0; i < op->in_c; ++i) {
            acc += (w[i] + op->filter_offset) * (in[i] + op->in_offset);
        }
        out[o] = requantize(op, acc, o);
    }
    return 0;
}
