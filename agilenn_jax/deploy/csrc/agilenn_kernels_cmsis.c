/* AgileNN int8 kernels, CMSIS-NN back-end: the same interface as agilenn_kernels_portable.c,
 * implemented with Arm's CMSIS-NN (the kernels TFLite Micro uses on Cortex-M; bit-exact with
 * TFLite's int8 reference). Build with CMSIS-NN's Include/ on the include path and the sources
 * agilenn_jax.deploy.codegen.cmsis_build_inputs() lists.
 *
 * The generator sizes each layer's scratch buffer for CMSIS-NN's plain-C and DSP (Cortex-M4/M7/
 * M33) code paths; every call first checks that *_get_buffer_size() fits and returns
 * AGILENN_ERR_SCRATCH if it does not (e.g. on a Helium core). Define
 * AGILENN_CMSIS_CHECK_DSP_SCRATCH on a host build to also check the DSP sizes there. */
#include <string.h>

#include "agilenn_kernels.h"
#include "arm_nnfunctions.h"

#ifdef AGILENN_CMSIS_CHECK_DSP_SCRATCH
#define NEED(generic, dsp) ((generic) > (dsp) ? (generic) : (dsp))
#else
#define NEED(generic, dsp) (generic)
#endif

static int status(arm_cmsis_nn_status s)
{
    return s == ARM_CMSIS_NN_SUCCESS ? 0 : AGILENN_ERR_KERNEL;
}

static cmsis_nn_per_channel_quant_params quant(const agilenn_op *op)
{
    /* CMSIS-NN takes non-const pointers but only reads them. */
    cmsis_nn_per_channel_quant_params q;
    q.multiplier = (int32_t *)(uintptr_t)op->mult;
    q.shift = (int32_t *)(uintptr_t)op->shift;
    return q;
}

static cmsis_nn_dims dims(int32_t n, int32_t h, int32_t w, int32_t c)
{
    cmsis_nn_dims d;
    d.n = n;
    d.h = h;
    d.w = w;
    d.c = c;
    return d;
}

int agilenn_conv_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    const cmsis_nn_conv_params p = {op->in_offset, op->out_offset, {op->stride_w, op->stride_h},
                                    {op->pad_w, op->pad_h}, {1, 1}, {op->act_min, op->act_max}};
    const cmsis_nn_per_channel_quant_params q = quant(op);
    const cmsis_nn_dims id = dims(1, op->in_h, op->in_w, op->in_c);
    const cmsis_nn_dims fd = dims(op->out_c, op->k_h, op->k_w, op->in_c);
    const cmsis_nn_dims bd = dims(1, 1, 1, op->out_c);
    const cmsis_nn_dims od = dims(1, op->out_h, op->out_w, op->out_c);
    const cmsis_nn_context ctx = {scratch, op->scratch_bytes};
    if (NEED(arm_convolve_wrapper_s8_get_buffer_size(&p, &id, &fd, &od),
             arm_convolve_wrapper_s8_get_buffer_size_dsp(&p, &id, &fd, &od)) > op->scratch_bytes) {
        return AGILENN_ERR_SCRATCH;
    }
    return status(arm_convolve_wrapper_s8(&ctx, &p, &q, &id, in, &fd, op->weights, &bd, op->bias, &od, out));
}

int agilenn_dwconv_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    const cmsis_nn_dw_conv_params p = {op->in_offset, op->out_offset, op->depth_mult,
                                       {op->stride_w, op->stride_h}, {op->pad_w, op->pad_h}, {1, 1},
                                       {op->act_min, op->act_max}};
    const cmsis_nn_per_channel_quant_params q = quant(op);
    const cmsis_nn_dims id = dims(1, op->in_h, op->in_w, op->in_c);
    const cmsis_nn_dims fd = dims(1, op->k_h, op->k_w, op->out_c);
    const cmsis_nn_dims bd = dims(1, 1, 1, op->out_c);
    const cmsis_nn_dims od = dims(1, op->out_h, op->out_w, op->out_c);
    const cmsis_nn_context ctx = {scratch, op->scratch_bytes};
    if (NEED(arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &id, &fd, &od),
             arm_depthwise_conv_wrapper_s8_get_buffer_size_dsp(&p, &id, &fd, &od)) > op->scratch_bytes) {
        return AGILENN_ERR_SCRATCH;
    }
    return status(
        arm_depthwise_conv_wrapper_s8(&ctx, &p, &q, &id, in, &fd, op->weights, &bd, op->bias, &od, out));
}

/* CMSIS-NN pools dense tensors only: a channel slice (the local channels of the extractor
 * output) is pooled over all in_stride channels into the scratch buffer, and the slice's
 * channels are copied out. Channels are independent, so the result is the same. */
int agilenn_avgpool_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    const int32_t all_c = op->in_stride;
    const int32_t sliced = all_c != op->in_c;
    const int32_t skip = sliced ? (all_c + 3) & ~3 : 0; /* pooled bytes, then CMSIS's buffer */
    const cmsis_nn_pool_params p = {{op->k_w, op->k_h}, {0, 0}, {op->act_min, op->act_max}};
    const cmsis_nn_dims id = dims(1, op->in_h, op->in_w, all_c);
    const cmsis_nn_dims fd = dims(1, op->k_h, op->k_w, 1);
    const cmsis_nn_dims od = dims(1, 1, 1, all_c);
    const cmsis_nn_context ctx = {(uint8_t *)scratch + skip, op->scratch_bytes - skip};
    int rc;
    if (skip + NEED(arm_avgpool_s8_get_buffer_size(1, all_c), arm_avgpool_s8_get_buffer_size_dsp(1, all_c)) >
        op->scratch_bytes) {
        return AGILENN_ERR_SCRATCH;
    }
    rc = status(arm_avgpool_s8(&ctx, &p, &id, in - op->in_ch0, &fd, &od, sliced ? (int8_t *)scratch : out));
    if (rc == 0 && sliced) {
        memcpy(out, (const int8_t *)scratch + op->in_ch0, (size_t)op->in_c);
    }
    return rc;
}

int agilenn_fc_s8(const agilenn_op *op, const int8_t *in, int8_t *out, void *scratch)
{
    const cmsis_nn_fc_params p = {op->in_offset, op->filter_offset, op->out_offset, {op->act_min, op->act_max}};
    const cmsis_nn_quant_params q = {(int32_t *)(uintptr_t)op->mult, (int32_t *)(uintptr_t)op->shift,
                                     op->per_channel};
    const cmsis_nn_dims id = dims(1, 1, 1, op->in_c);
    const cmsis_nn_dims fd = dims(op->in_c, 1, 1, op->out_c); /* n: accumulation depth, c: outputs */
    const cmsis_nn_dims bd = dims(1, 1, 1, op->out_c);
    const cmsis_nn_dims od = dims(1, 1, 1, op->out_c);
    const cmsis_nn_context ctx = {scratch, op->scratch_bytes};
    if (NEED(arm_fully_connected_s8_get_buffer_size(&fd), arm_fully_connected_s8_get_buffer_size_dsp(&fd)) >
        op->scratch_bytes) {
        return AGILENN_ERR_SCRATCH;
    }
#if defined(ARM_MATH_MVEI)
    /* Helium kernels read precomputed kernel sums (bias folded in) from the context buffer. */
    if (arm_fully_connected_s8_get_buffer_size(&fd) > 0) {
        arm_vector_sum_s8((int32_t *)scratch, op->in_c, op->out_c, op->weights, op->in_offset, op->filter_offset,
                          op->bias);
    }
#endif
    return status(arm_fully_connected_wrapper_s8(&ctx, &p, &q, &id, in, &fd, op->weights, &bd, op->bias, &od, out));
}
