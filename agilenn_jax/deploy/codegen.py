"""The int8 device model as a dependency-free C99 library: weights as ``const`` arrays (flash),
a fixed call sequence, and one static arena laid out here from tensor lifetimes.

``generate(model, out_dir, backend)`` writes ``agilenn_model.h`` / ``agilenn_model.c`` and
copies the kernel sources of ``backend``: "portable" (plain C, needs nothing but a compiler) or
"cmsis" (Arm's CMSIS-NN, which the user supplies: ``cmsis_build_inputs(root)`` lists what to
compile from their checkout; nothing of it is copied). Both reproduce the TFLite interpreter's
int8 outputs byte for byte (tests/test_codegen.py). The generated API::

    int8_t *agilenn_input(void);                     image in, int8 NHWC
    int agilenn_invoke(agilenn_hook hook, void *ctx);  0 = ok, else (layer << 8) | AGILENN_ERR_*
    const int8_t *agilenn_local_logits(void);        [AGILENN_NUM_CLASSES]
    const int8_t *agilenn_remote_features(void);     (y, x, c) at (y*W + x)*AGILENN_FEATURES_C + c
    uint8_t *agilenn_scratch(size_t *bytes);         arena bytes free once invoke has returned
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from typing import Any

import numpy as np

from agilenn_jax.deploy.tflite_graph import CodegenError, Graph, Layer, parse

__all__ = ["BACKENDS", "CodegenError", "cmsis_build_inputs", "generate"]

BACKENDS = ("portable", "cmsis")
ALIGN = 8
OP_DESCRIPTOR_BYTES = 104  # sizeof(agilenn_op) with 32-bit pointers
# CMSIS-NN sources the glue reaches on plain-C, DSP and Helium builds (the closure of its
# undefined symbols), relative to the checkout.
CMSIS_SOURCES = tuple(
    "Source/" + f
    for f in (
        "ConvolutionFunctions/arm_convolve_wrapper_s8.c",
        "ConvolutionFunctions/arm_convolve_get_buffer_sizes_s8.c",
        "ConvolutionFunctions/arm_convolve_s8.c",
        "ConvolutionFunctions/arm_convolve_1x1_s8.c",
        "ConvolutionFunctions/arm_convolve_1x1_s8_fast.c",
        "ConvolutionFunctions/arm_convolve_1_x_n_s8.c",
        "ConvolutionFunctions/arm_nn_mat_mult_kernel_s8_s16.c",
        "ConvolutionFunctions/arm_nn_mat_mult_kernel_row_offset_s8_s16.c",
        "ConvolutionFunctions/arm_depthwise_conv_wrapper_s8.c",
        "ConvolutionFunctions/arm_depthwise_conv_get_buffer_sizes_s8.c",
        "ConvolutionFunctions/arm_depthwise_conv_s8.c",
        "ConvolutionFunctions/arm_depthwise_conv_s8_opt.c",
        "ConvolutionFunctions/arm_depthwise_conv_3x3_s8.c",
        "FullyConnectedFunctions/arm_fully_connected_wrapper_s8.c",
        "FullyConnectedFunctions/arm_fully_connected_s8.c",
        "FullyConnectedFunctions/arm_fully_connected_per_channel_s8.c",
        "FullyConnectedFunctions/arm_fully_connected_get_buffer_sizes_s8.c",
        "FullyConnectedFunctions/arm_vector_sum_s8.c",
        "PoolingFunctions/arm_avgpool_s8.c",
        "PoolingFunctions/arm_avgpool_get_buffer_sizes_s8.c",
        "NNSupportFunctions/arm_nn_depthwise_conv_nt_t_s8.c",
        "NNSupportFunctions/arm_nn_mat_mult_nt_t_s8.c",
        "NNSupportFunctions/arm_nn_vec_mat_mult_t_s8.c",
        "NNSupportFunctions/arm_nn_vec_mat_mult_t_per_ch_s8.c",
        "NNSupportFunctions/arm_q7_to_q15_with_offset.c",
        "NNSupportFunctions/arm_s8_to_s16_unordered_with_offset.c",
        "TransposeFunctions/arm_transpose_s8.c",
    )
)


def cmsis_build_inputs(cmsis_root: str) -> tuple[list[str], list[str]]:
    """(C sources, include dirs) to compile from a CMSIS-NN checkout for the "cmsis" back-end;
    CodegenError, saying what is wrong, when ``cmsis_root`` is not such a checkout."""
    root = os.path.abspath(os.path.expanduser(cmsis_root or ""))
    if not cmsis_root or not os.path.isdir(root):
        raise CodegenError(
            f"CMSIS-NN not found at {cmsis_root!r}: pass the path of a CMSIS-NN checkout "
            "(github.com/ARM-software/CMSIS-NN), e.g. via $AGILENN_CMSIS_NN"
        )
    header = os.path.join(root, "Include", "arm_nnfunctions.h")
    if not os.path.isfile(header):
        raise CodegenError(f"{root} is not a CMSIS-NN checkout: {header} is missing")
    sources = [os.path.join(root, f) for f in CMSIS_SOURCES]
    missing = [s for s in sources if not os.path.isfile(s)]
    if missing:
        raise CodegenError(
            f"{root} lacks CMSIS-NN sources the back-end needs (too old or incomplete?): "
            + ", ".join(os.path.relpath(m, root) for m in missing)
        )
    return sources, [os.path.join(root, "Include")]


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def cmsis_scratch_bytes(layer: Layer) -> int:
    """Scratch a layer's CMSIS-NN call needs on its plain-C and DSP paths (GCC and Arm
    Compiler), mirroring CMSIS-NN's *_get_buffer_size(); the C checks it again at run time."""
    (_, _, ic), (_, _, oc), p = layer.in_shape, layer.out_shape, layer.p
    kh, kw = p.get("k_h", 1), p.get("k_w", 1)
    if layer.op == "conv":
        if (kh, kw, p["pad_h"], p["pad_w"]) == (1, 1, 0, 0):  # 1x1: only Arm Compiler's DSP path
            return 4 * ic if (p["stride_h"], p["stride_w"]) == (1, 1) else 0
        return 4 * (-(-kh * kw * ic // 4) * 4)  # im2col: 2 columns of int16
    if layer.op == "dwconv":
        if ic != oc or (kh, kw) == (3, 3) and max(p["pad_h"], p["pad_w"]) <= 1:
            return 0  # arm_depthwise_conv_s8 / _3x3_s8: no buffer
        return 2 * ic * kh * kw  # arm_depthwise_conv_s8_opt (DSP)
    if layer.op == "avgpool":
        c = layer.src.stride
        return (0 if layer.src.dense else _align(c)) + 4 * c  # pooled slice + DSP sums
    return 0  # fully connected: kernel sums only on Helium


def _plan(graph: Graph, scratch: list[int]) -> dict[str, Any]:
    """Offsets in one arena: each buffer at the lowest offset free over its lifetime (layers
    [first, last]), placed in a few greedy orders (by size as TFLM does, by first use, ...) of
    which the smallest arena wins; the outputs then move to leave the largest gap after invoke."""
    n = len(graph.layers)
    items = {("t", t): v for t, v in graph.buffers.items()}
    items.update({("s", i): (s, i, i) for i, s in enumerate(scratch) if s})

    def clashes(k, off: int, placed: dict) -> bool:
        size, a, b = items[k]
        return any(
            items[o][1] <= b and a <= items[o][2] and off < po + items[o][0] and po < off + size
            for o, po in placed.items()
            if o != k
        )

    def greedy(order) -> dict:
        placed: dict = {}
        for k in sorted(items, key=lambda k: (*order(*items[k]), str(k))):
            _, a, b = items[k]
            off = 0
            while clashes(k, off, placed):
                off = min(
                    _align(po + items[o][0])
                    for o, po in placed.items()
                    if items[o][1] <= b and a <= items[o][2] and po + items[o][0] > off
                )
            placed[k] = off
        return placed

    def gap(pl: dict, arena: int) -> tuple[int, int]:
        live = sorted((pl[k], pl[k] + items[k][0]) for k in items if items[k][2] >= n)
        best, cur = (0, 0), 0
        for start, end in [*live, (arena, arena)]:
            if start - _align(cur) > best[1]:
                best = (_align(cur), start - _align(cur))
            cur = max(cur, end)
        return best

    def finish(placed: dict) -> dict[str, Any]:
        arena = _align(max(placed[k] + items[k][0] for k in items))
        outs = sorted((k for k in items if items[k][2] >= n), key=lambda k: items[k][0])
        for k in outs[:-1]:  # small outputs (logits) next to the big one, not mid-arena
            size = items[k][0]
            cands = {0, (arena - size) // ALIGN * ALIGN}
            cands |= {_align(po + items[o][0]) for o, po in placed.items()}
            cands |= {(po - size) // ALIGN * ALIGN for po in placed.values()}
            ok = [c for c in cands if 0 <= c <= arena - size and not clashes(k, c, placed)]
            placed[k] = max(ok, key=lambda c: (gap({**placed, k: c}, arena)[1], -c))
        return {"offsets": placed, "arena": arena, "scratch": gap(placed, arena)}

    orders = (
        lambda s, a, b: (-s, a),
        lambda s, a, b: (a, -s),
        lambda s, a, b: (a - b, -s),
        lambda s, a, b: (-b, a),
    )
    plans = [finish(greedy(order)) for order in orders]
    return min(plans, key=lambda p: (p["arena"], -p["scratch"][1]))


def _c_array(ctype: str, name: str, values: np.ndarray) -> str:
    vals = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    rows = [", ".join(vals[i : i + 16]) for i in range(0, len(vals), 16)]
    return f"static const {ctype} {name}[{len(vals)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def _layer_c(layer: Layer, scratch: int) -> str:
    """The layer's constant arrays and its agilenn_op descriptor."""
    (ih, iw, ic), (oh, ow, oc), p, nm = layer.in_shape, layer.out_shape, layer.p, layer.name
    text = f"/* {nm}: {layer.op} {ih}x{iw}x{ic} -> {oh}x{ow}x{oc} */\n"
    fields = dict(
        in_h=ih, in_w=iw, in_c=ic, in_ch0=layer.src.ch0, in_stride=layer.src.stride,
        out_h=oh, out_w=ow, out_c=oc, k_h=p.get("k_h", ih), k_w=p.get("k_w", iw),
        stride_h=p.get("stride_h", ih), stride_w=p.get("stride_w", iw),
        pad_h=p.get("pad_h", 0), pad_w=p.get("pad_w", 0), depth_mult=p.get("depth_mult", 1),
        in_offset=p["in_offset"], filter_offset=p.get("filter_offset", 0),
        out_offset=p["out_offset"], act_min=p["act_min"], act_max=p["act_max"],
        per_channel=p.get("per_channel", 1), scratch_bytes=scratch,
    )  # fmt: skip
    refs = {}
    for key, ctype, arr in (
        ("weights", "int8_t", layer.weights),
        ("bias", "int32_t", layer.bias),
        ("mult", "int32_t", layer.mult),
        ("shift", "int32_t", layer.shift),
    ):
        if arr is not None:
            text += _c_array(ctype, f"{nm}_{key}", arr)
        refs[key] = f"{nm}_{key}" if arr is not None else "NULL"
    body = ",\n    ".join(f".{k} = {v}" for k, v in {**fields, **refs}.items())
    return text + f"static const agilenn_op {nm}_op = {{\n    {body}\n}};\n\n"


def _header(g: Graph, plan: dict[str, Any], backend: str) -> str:
    (ih, iw, ic), (fh, fw, fc) = g.layers[0].in_shape, g.features_shape
    q = g.quant
    defs = {
        "INPUT_H": ih, "INPUT_W": iw, "INPUT_C": ic,
        "NUM_CLASSES": g.logits.channels,
        "FEATURES_H": fh, "FEATURES_W": fw, "FEATURES_C": fc,
        "K": g.features.ch0, "REMOTE_C": g.features.channels,
        "NUM_LAYERS": len(g.layers), "ARENA_BYTES": plan["arena_bytes"],
        "SCRATCH_BYTES": plan["free_after_invoke"],
    }  # fmt: skip
    for key, name in (
        ("input", "INPUT"),
        ("local_logits", "LOGITS"),
        ("remote_features", "FEATURES"),
    ):
        defs[f"{name}_SCALE"] = f"{q[key]['scale']:.10g}f"
        defs[f"{name}_ZERO_POINT"] = q[key]["zero_point"]
    lines = "\n".join(f"#define AGILENN_{k} {v}" for k, v in defs.items())
    return f"""/* Generated by agilenn_jax.deploy.codegen ({backend} kernels) -- do not edit.
 * The int8 AgileNN device model (feature extractor + local NN), bit-exact with TFLite Micro. */
#ifndef AGILENN_MODEL_H_
#define AGILENN_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define AGILENN_BACKEND "{backend}"
{lines}

/* agilenn_invoke's error codes: (layer << 8) | code, layer = index of the failing layer. */
#define AGILENN_ERR_KERNEL 1  /* a CMSIS-NN kernel rejected its arguments */
#define AGILENN_ERR_SCRATCH 2 /* the generated scratch buffer is smaller than CMSIS-NN needs */

extern const char *const agilenn_layer_names[AGILENN_NUM_LAYERS];

/* Where the caller writes the int8 NHWC input image (inside the arena). */
int8_t *agilenn_input(void);
typedef void (*agilenn_hook)(void *ctx, int layer);
/* Runs every layer; calls hook(ctx, i) after layer i when hook is not NULL. 0 = ok. */
int agilenn_invoke(agilenn_hook hook, void *ctx);
/* [AGILENN_NUM_CLASSES] int8 local logits. */
const int8_t *agilenn_local_logits(void);
/* Offloaded channel c of pixel (y, x) at [(y * AGILENN_FEATURES_W + x) * AGILENN_FEATURES_C + c],
 * c < AGILENN_REMOTE_C: a view into the extractor output, not a copy. */
const int8_t *agilenn_remote_features(void);
/* AGILENN_SCRATCH_BYTES contiguous arena bytes that agilenn_invoke's outputs do not use: free
 * for the caller (e.g. the encoder's frame) until the next image is written to agilenn_input()
 * (the regions may overlap) or agilenn_invoke runs. */
uint8_t *agilenn_scratch(size_t *bytes);

#ifdef __cplusplus
}}
#endif

#endif /* AGILENN_MODEL_H_ */
"""


def _source(g: Graph, plan: dict[str, Any], offsets: dict, backend: str) -> str:
    def at(view) -> int:
        return offsets[("t", view.buf)] + view.ch0

    names = ", ".join(f'"{layer.name}"' for layer in g.layers)
    parts = [
        f"/* Generated by agilenn_jax.deploy.codegen ({backend} kernels) -- do not edit. */\n"
        '#include "agilenn_model.h"\n#include "agilenn_kernels.h"\n\n'
    ]
    calls = []
    for i, (layer, row) in enumerate(zip(g.layers, plan["layers"], strict=True)):
        parts.append(_layer_c(layer, row["scratch_bytes"]))
        s = f"A({offsets[('s', i)]})" if ("s", i) in offsets else "NULL"
        calls.append(
            f"    rc = agilenn_{layer.op}_s8(&{layer.name}_op, A({at(layer.src)}), "
            f"A({offsets[('t', layer.dst)]}), {s});\n"
            f"    if (rc != 0) {{\n        return ({i} << 8) | rc;\n    }}\n"
            f"    if (hook != NULL) {{\n        hook(ctx, {i});\n    }}\n"
        )
    so, sn = plan["scratch_offset"], plan["free_after_invoke"]
    parts.append(f"""const char *const agilenn_layer_names[AGILENN_NUM_LAYERS] = {{{names}}};

/* The arena: every activation and scratch buffer, placed by the generator (see the plan). */
static union {{
    int64_t align;
    uint8_t bytes[AGILENN_ARENA_BYTES];
}} g_arena;
#define A(offset) ((int8_t *)(g_arena.bytes + (offset)))

int8_t *agilenn_input(void)
{{
    return A({offsets[("t", g.input)]});
}}

int agilenn_invoke(agilenn_hook hook, void *ctx)
{{
    int rc;
{"".join(calls)}    return 0;
}}

const int8_t *agilenn_local_logits(void)
{{
    return A({at(g.logits)});
}}

const int8_t *agilenn_remote_features(void)
{{
    return A({at(g.features)});
}}

uint8_t *agilenn_scratch(size_t *bytes)
{{
    if (bytes != NULL) {{
        *bytes = {sn};
    }}
    return g_arena.bytes + {so};
}}
""")
    return "".join(parts)


def _macs(layer: Layer) -> int:
    (ih, iw, ic), (oh, ow, oc), p = layer.in_shape, layer.out_shape, layer.p
    if layer.op == "conv":
        return oh * ow * oc * p["k_h"] * p["k_w"] * ic
    if layer.op == "dwconv":
        return oh * ow * oc * p["k_h"] * p["k_w"]
    return ih * iw * ic * (oc if layer.op == "fc" else 1)  # pool: one add per input element


def generate(int8_model: bytes, out_dir: str, backend: str = "portable") -> dict[str, Any]:
    """Write the C library for the int8 device model to ``out_dir`` (nothing is written if the
    model is unsupported: CodegenError). Returns the plan: per layer name, op, shapes, MACs,
    weight bytes (weights + bias + multipliers + shifts) and CMSIS-NN scratch; ``arena_bytes``
    (the one static arena: activations + scratch), ``flash_bytes`` (const arrays + layer
    descriptors), ``free_after_invoke`` (the block agilenn_scratch() returns), the buffers'
    offsets and lifetimes (``tensors``), the outputs' quantisation and k."""
    if backend not in BACKENDS:
        raise CodegenError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    g = parse(int8_model)
    scratch = [cmsis_scratch_bytes(lay) if backend == "cmsis" else 0 for lay in g.layers]
    mem = _plan(g, scratch)
    layers = []
    for layer, s in zip(g.layers, scratch, strict=True):
        arrays = (layer.weights, layer.bias, layer.mult, layer.shift)
        layers.append(
            {
                "name": layer.name,
                "op": layer.op,
                "input_shape": list(layer.in_shape),
                "output_shape": list(layer.out_shape),
                "macs": _macs(layer),
                "weight_bytes": sum(a.nbytes for a in arrays if a is not None),
                "scratch_bytes": s,
            }
        )
    n = len(g.layers)
    tensors = [
        {"tensor": k[1], "offset": off, "bytes": g.buffers[k[1]][0], "layers": g.buffers[k[1]][1:]}
        for k, off in sorted(mem["offsets"].items(), key=lambda kv: kv[1])
        if k[0] == "t"
    ]
    plan = {
        "backend": backend,
        "layers": layers,
        "arena_bytes": mem["arena"],
        "flash_bytes": sum(r["weight_bytes"] for r in layers) + OP_DESCRIPTOR_BYTES * n,
        "free_after_invoke": mem["scratch"][1],
        "scratch_offset": mem["scratch"][0],
        "macs": sum(r["macs"] for r in layers),
        "tensors": tensors,
        "quant": g.quant,
        "k": g.features.ch0,
        "features_shape": list(g.features_shape),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "agilenn_model.h"), "w") as f:
        f.write(_header(g, plan, backend))
    with open(os.path.join(out_dir, "agilenn_model.c"), "w") as f:
        f.write(_source(g, plan, mem["offsets"], backend))
    csrc = resources.files("agilenn_jax.deploy").joinpath("csrc")
    for name in ("agilenn_kernels.h", f"agilenn_kernels_{backend}.c"):
        with resources.as_file(csrc.joinpath(name)) as src:
            shutil.copyfile(src, os.path.join(out_dir, name))
    return plan
