"""The int8 device model's TFLite flatbuffer as a list of integer layer specs, for ``codegen``.

Every number TFLite derives when it prepares a kernel (per-channel output multipliers and
shifts, fused-activation clamp ranges, SAME padding offsets) is derived here exactly as TFLite
does it, so C kernels that only do integer arithmetic reproduce TFLite's int8 kernels bit for
bit. Channel SLICEs and RESHAPEs produce no layer: they are views (a channel offset and a pixel
stride into another op's output), which is what lets the offloaded features stay in place.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SUPPORTED_OPS = (
    "DEPTHWISE_CONV_2D",
    "CONV_2D",
    "AVERAGE_POOL_2D",
    "FULLY_CONNECTED",
    "SLICE",
    "RESHAPE",
)


class CodegenError(ValueError):
    """The model uses something the generated C does not implement (an op, option or type)."""


@dataclasses.dataclass(frozen=True)
class View:
    """An activation in memory: channels [ch0, ch0 + channels) of buffer ``buf`` (the tensor
    index of the op output or model input that owns the bytes), ``stride`` bytes per pixel."""

    buf: int
    ch0: int
    channels: int
    stride: int

    @property
    def dense(self) -> bool:
        return self.ch0 == 0 and self.channels == self.stride


@dataclasses.dataclass
class Layer:
    """One kernel call: ``op`` in conv | dwconv | avgpool | fc; ``p`` holds its integer params."""

    name: str
    op: str
    src: View
    dst: int
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    p: dict[str, int]
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    mult: np.ndarray | None = None
    shift: np.ndarray | None = None


@dataclasses.dataclass
class Graph:
    layers: list[Layer]
    buffers: dict[int, tuple[int, int, int]]  # tensor index -> (bytes, first layer, last layer)
    input: int
    logits: View
    features: View
    features_shape: tuple[int, int, int]  # (h, w, all channels) of the buffer they live in
    quant: dict[str, dict[str, float | int]]


def round_away(x: float) -> int:
    """std::round / TfLiteRound: to nearest, halves away from zero (exact for any double)."""
    f = math.floor(abs(x))
    r = f + 1 if abs(x) - f >= 0.5 else f
    return int(r if x >= 0 else -r)


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2^shift, q a Q31 fixed-point value in [0.5, 1)."""
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    q_fixed = round_away(q * (1 << 31))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def activation_range(act: int, scale: float, zero_point: int) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for int8 (float32 division, TfLiteRound)."""

    def q(f: float) -> int:
        return zero_point + round_away(float(np.float32(f) / np.float32(scale)))

    if act == 0:
        return -128, 127
    if act == 1:
        return max(-128, q(0.0)), 127
    if act == 2:
        return max(-128, q(-1.0)), min(127, q(1.0))
    if act == 3:
        return max(-128, q(0.0)), min(127, q(6.0))
    raise CodegenError(
        f"fused activation {act} is not supported (only NONE, RELU, RELU6, RELU_N1_TO_1)"
    )


def _padding(kind: int, stride: int, size: int, k: int, out: int, what: str) -> int:
    """SAME: TFLite's ComputePaddingHeightWidth (the extra odd pixel goes bottom/right)."""
    expect = (size + stride - 1) // stride if kind == 0 else (size - k + stride) // stride
    if out != expect:
        raise CodegenError(f"{what}: output size {out} does not match TFLite's {expect}")
    return max((out - 1) * stride + k - size, 0) // 2 if kind == 0 else 0


class _Reader:
    def __init__(self, model: bytes):
        from tensorflow.lite.python import schema_py_generated as schema_fb

        if len(model) < 8 or model[4:8] != b"TFL3":
            raise CodegenError("not a TFLite flatbuffer (no TFL3 identifier)")
        self.raw = model
        self.m = schema_fb.ModelT.InitFromPackedBuf(bytearray(model), 0)
        if len(self.m.subgraphs) != 1:
            raise CodegenError(f"expected one subgraph, found {len(self.m.subgraphs)}")
        self.g = self.m.subgraphs[0]
        names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
        self.op_names = [
            names.get(max(c.builtinCode, c.deprecatedBuiltinCode), f"CUSTOM({c.customCode})")
            for c in self.m.operatorCodes
        ]
        self.types = {v: k for k, v in vars(schema_fb.TensorType).items() if not k.startswith("_")}

    def tensor(self, i: int):
        return self.g.tensors[i]

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor(i).shape)

    def dtype(self, i: int) -> str:
        return self.types[self.tensor(i).type]

    def data(self, i: int) -> np.ndarray | None:
        t = self.tensor(i)
        b = self.m.buffers[t.buffer]
        raw = b.data if b.data is not None else None
        if raw is None and b.offset > 1:
            raw = np.frombuffer(self.raw[b.offset : b.offset + b.size], np.uint8)
        if raw is None or len(raw) == 0:
            return None
        dt = {"INT8": np.int8, "INT32": np.int32, "INT64": np.int64}.get(self.dtype(i))
        if dt is None:
            raise CodegenError(
                f"constant tensor {self.name(i)!r} has unsupported type {self.dtype(i)}"
            )
        return np.frombuffer(bytes(raw), dt).reshape(self.shape(i))

    def name(self, i: int) -> str:
        n = self.tensor(i).name
        return n.decode() if isinstance(n, bytes) else str(n)

    def quant(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        q = self.tensor(i).quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise CodegenError(f"tensor {self.name(i)!r} has no quantization parameters")
        return (
            np.asarray(q.scale, np.float32),
            np.asarray(q.zeroPoint, np.int64),
            q.quantizedDimension,
        )

    def scalar_quant(self, i: int) -> tuple[float, int]:
        s, z, _ = self.quant(i)
        if len(s) != 1:
            raise CodegenError(f"activation {self.name(i)!r} must be quantized per tensor")
        return float(s[0]), int(z[0])


def _per_channel(r: _Reader, w: int, n: int, qdim: int, in_s: float, out_s: float, what: str):
    scales, zps, dim = r.quant(w)
    if np.any(zps != 0):
        raise CodegenError(f"{what}: int8 weights must be symmetric (zero point 0)")
    if len(scales) not in (1, n) or (len(scales) == n > 1 and dim != qdim):
        raise CodegenError(
            f"{what}: weights quantized along axis {dim}, expected per-tensor or {qdim}"
        )
    scales = np.broadcast_to(scales, (n,))
    mq = [quantize_multiplier(in_s * float(s) / out_s) for s in scales]
    return np.array([m for m, _ in mq], np.int32), np.array([s for _, s in mq], np.int32)


def parse(model: bytes) -> Graph:
    """The int8 AgileNN device model -> layers, buffer lifetimes and the two outputs' views."""
    r = _Reader(model)
    g = r.g
    if len(g.inputs) != 1:
        raise CodegenError(f"expected one model input, found {len(g.inputs)}")
    inp = int(g.inputs[0])
    ishape = r.shape(inp)
    if r.dtype(inp) != "INT8" or len(ishape) != 4 or ishape[0] != 1:
        raise CodegenError(
            f"model input must be int8 [1, H, W, C], got {r.dtype(inp)} {list(ishape)}"
        )
    views = {inp: View(inp, 0, ishape[3], ishape[3])}
    buffers = {inp: [int(np.prod(ishape)), 0, 0]}
    layers: list[Layer] = []
    counts: dict[str, int] = {}

    def use(t: int, dense: bool, what: str) -> View:
        if t not in views:
            raise CodegenError(f"{what}: input {r.name(t)!r} is not an activation the C code has")
        if r.dtype(t) != "INT8":
            raise CodegenError(
                f"{what}: input {r.name(t)!r} is {r.dtype(t)}, only int8 is supported"
            )
        v = views[t]
        if dense and not v.dense:
            raise CodegenError(f"{what}: reads a channel slice; only AVERAGE_POOL_2D may")
        buffers[v.buf][2] = len(layers)
        return v

    def hw(t: int, what: str) -> tuple[int, int, int]:
        s = r.shape(t)
        if len(s) != 4 or s[0] != 1:
            raise CodegenError(f"{what}: expected a [1, H, W, C] tensor, got {list(s)}")
        return s[1], s[2], s[3]

    for n, op in enumerate(g.operators):
        kind = r.op_names[op.opcodeIndex]
        what = f"operator #{n} ({kind})"
        if kind not in SUPPORTED_OPS:
            raise CodegenError(
                f"{what} is not supported; the C generator handles {', '.join(SUPPORTED_OPS)}"
            )
        ins = [int(i) for i in op.inputs]
        out = int(op.outputs[0])
        if r.dtype(out) != "INT8":
            raise CodegenError(f"{what}: output is {r.dtype(out)}, only int8 is supported")
        opt = op.builtinOptions
        if kind in ("SLICE", "RESHAPE"):
            v = use(ins[0], kind == "RESHAPE", what)
            if r.scalar_quant(ins[0]) != r.scalar_quant(out):
                raise CodegenError(f"{what}: output quantization differs from the input's")
            if kind == "RESHAPE":
                c = r.shape(out)[-1]
                views[out] = View(v.buf, 0, c, c)
                continue
            h, w, c = hw(ins[0], what)
            begin, size = r.data(ins[1]), r.data(ins[2])
            if begin is None or size is None:
                raise CodegenError(f"{what}: begin/size must be constants")
            size = [
                s if s >= 0 else d - b for s, d, b in zip(size, (1, h, w, c), begin, strict=True)
            ]
            if list(begin[:3]) != [0, 0, 0] or list(size[:3]) != [1, h, w]:
                raise CodegenError(f"{what}: only slices along the channel axis are supported")
            views[out] = View(v.buf, v.ch0 + int(begin[3]), int(size[3]), v.stride)
            continue
        act = getattr(opt, "fusedActivationFunction", 0)
        in_s, in_z = r.scalar_quant(ins[0])
        out_s, out_z = r.scalar_quant(out)
        lo, hi = activation_range(act, out_s, out_z)
        p = {"in_offset": -in_z, "out_offset": out_z, "act_min": lo, "act_max": hi}
        oshape = r.shape(out)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            src = use(ins[0], True, what)
            (ih, iw, ic), (oh, ow, oc) = hw(ins[0], what), hw(out, what)
            if (opt.dilationHFactor, opt.dilationWFactor) != (1, 1):
                raise CodegenError(
                    f"{what}: dilation {opt.dilationHFactor}x{opt.dilationWFactor} is not supported"
                )
            wt = r.data(ins[1])
            if wt is None or r.dtype(ins[1]) != "INT8":
                raise CodegenError(f"{what}: weights must be constant int8")
            dw = kind == "DEPTHWISE_CONV_2D"
            kh, kw = wt.shape[1], wt.shape[2]
            dm = oc // ic if dw else 1
            if (dw and (wt.shape[0] != 1 or wt.shape[3] != oc or dm * ic != oc)) or (
                not dw and wt.shape != (oc, kh, kw, ic)
            ):
                raise CodegenError(
                    f"{what}: weights {list(wt.shape)} do not fit in {ic} -> out {oc} channels"
                )
            p.update(
                k_h=kh, k_w=kw, stride_h=opt.strideH, stride_w=opt.strideW, depth_mult=dm,
                pad_h=_padding(opt.padding, opt.strideH, ih, kh, oh, what),
                pad_w=_padding(opt.padding, opt.strideW, iw, kw, ow, what),
            )  # fmt: skip
            mult, shift = _per_channel(r, ins[1], oc, 3 if dw else 0, in_s, out_s, what)
            op_name = "dwconv" if dw else "conv"
            prefix = "dw" if dw else ("pw" if (kh, kw) == (1, 1) else "conv")
        elif kind == "AVERAGE_POOL_2D":
            src = use(ins[0], False, what)
            (ih, iw, ic), (oh, ow, oc) = hw(ins[0], what), hw(out, what)
            if (opt.filterHeight, opt.filterWidth, oh, ow) != (ih, iw, 1, 1):
                raise CodegenError(
                    f"{what}: only a global average pool (window = input) is supported"
                )
            if (in_s, in_z) != (out_s, out_z):
                raise CodegenError(f"{what}: input and output quantization must match")
            wt, mult, shift = None, None, None
            op_name, prefix = "avgpool", "local_pool"
        else:  # FULLY_CONNECTED
            src = use(ins[0], True, what)
            wt = r.data(ins[1])
            if wt is None or r.dtype(ins[1]) != "INT8" or wt.ndim != 2:
                raise CodegenError(f"{what}: weights must be a constant int8 matrix")
            if opt.weightsFormat != 0:
                raise CodegenError(f"{what}: shuffled weights are not supported")
            oc, ic = wt.shape
            if int(np.prod(r.shape(ins[0]))) != ic or int(np.prod(oshape)) != oc:
                raise CodegenError(f"{what}: only batch 1 is supported")
            ih = iw = oh = ow = 1
            scales, zps, _ = r.quant(ins[1])
            p["filter_offset"] = 0
            if len(scales) > 1:
                mult, shift = _per_channel(r, ins[1], oc, 0, in_s, out_s, what)
            else:  # GetQuantizedConvolutionMultipler: float32 product, then double
                m, s = quantize_multiplier(float(np.float32(in_s) * scales[0]) / out_s)
                mult, shift = np.array([m], np.int32), np.array([s], np.int32)
                p["filter_offset"] = -int(zps[0])
            p["per_channel"] = int(len(scales) > 1)
            op_name, prefix = "fc", "local_dense"
        bias = None
        if kind != "AVERAGE_POOL_2D" and len(ins) > 2 and ins[2] >= 0:
            bias = r.data(ins[2])
            if bias is None or r.dtype(ins[2]) != "INT32":
                raise CodegenError(f"{what}: bias must be constant int32")
            bias = bias.reshape(-1)
        i = counts.get(prefix, 0)
        counts[prefix] = i + 1
        name = f"{prefix}{i}" if prefix in ("dw", "pw", "conv") else prefix + (f"{i}" if i else "")
        layers.append(
            Layer(name, op_name, src, out, (ih, iw, ic), (oh, ow, oc), p, wt, bias, mult, shift)
        )
        views[out] = View(out, 0, oc, oc)
        buffers[out] = [int(np.prod(oshape)), len(layers) - 1, len(layers) - 1]
    return _outputs(r, layers, views, buffers)


def _outputs(r: _Reader, layers, views, buffers) -> Graph:
    outs = [int(o) for o in r.g.outputs]
    ranks = sorted(outs, key=lambda t: len(r.shape(t)))
    if len(outs) != 2 or [len(r.shape(t)) for t in ranks] != [2, 4]:
        raise CodegenError(
            "expected two outputs: local logits [1, N] and remote features [1, h, w, c]"
        )
    logits, feats = (views.get(t) for t in ranks)
    if logits is None or feats is None or not logits.dense:
        raise CodegenError("the model's outputs must be produced by supported ops")
    if feats.ch0 + feats.channels != feats.stride or feats.ch0 == 0:
        raise CodegenError("remote features must be the channel slice [k:] of the extractor output")
    for v in (logits, feats):
        buffers[v.buf][2] = len(layers)  # still needed after agilenn_invoke returns
    fbuf = next(layer for layer in layers if layer.dst == feats.buf)

    def q(t: int) -> dict[str, float | int]:
        s, z = r.scalar_quant(t)
        return {"scale": s, "zero_point": z}

    return Graph(
        layers,
        {k: tuple(v) for k, v in buffers.items()},
        int(r.g.inputs[0]),
        logits,
        feats,
        fbuf.out_shape,
        {
            "input": q(int(r.g.inputs[0])),
            "local_logits": q(ranks[0]),
            "remote_features": q(ranks[1]),
        },
    )
