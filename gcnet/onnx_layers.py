"""The layer mappers of the ONNX export (gcnet.onnx_export): each Caffe layer of a deploy net becomes ONNX nodes on a
_Graph, exactly or refused (UnmappableLayer naming the layer).  The mapping of each type, and how Caffe's
MAX-pooling mask becomes ONNX MaxPool indices: docs/choices.md ("Trained models outside Caffe")."""
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from gcnet.util import UsageError


class UnmappableLayer(UsageError):
    """A layer of the deploy net that has no faithful ONNX mapping (or lacks its weights): exit 2, names it."""


# ----------------------------------------------------------------------------------------------- Caffe params
def _spatial(p, field: str, hw: Optional[str], default: int, layer) -> Tuple[int, int]:
    """(h, w) of a 2-D convolution/pooling parameter: `<hw>_h`/`<hw>_w` when set, else `field` (a scalar in
    PoolingParameter, repeated in ConvolutionParameter: one value for both axes, or one per axis)."""
    if hw and p.HasField(hw + "_h"):
        return int(getattr(p, hw + "_h")), int(getattr(p, hw + "_w"))
    v = getattr(p, field)
    if isinstance(v, int):                                  # PoolingParameter
        return (int(v), int(v)) if p.HasField(field) else (default, default)
    v = [int(a) for a in v]
    if len(v) > 2:
        _unmappable(layer, "%d-D %s; only 2-D nets are mapped" % (len(v), field))
    return {0: (default, default), 1: (v[0], v[0]) if v else None, 2: tuple(v)}[len(v)]


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's PoolingLayer output size: ceil rounding, then one less when the last window would start in the
    padding (src/caffe/layers/pooling_layer.cpp; gcnet.nets.pooled_size is the same rule)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _phase_included(layer) -> bool:
    """Whether a layer is part of the TEST-phase net (its include/exclude phase rules)."""
    TEST = 1                                               # caffe_pb2.TEST
    if len(layer.include):
        return any(not r.HasField("phase") or r.phase == TEST for r in layer.include)
    return not any(r.HasField("phase") and r.phase == TEST for r in layer.exclude)


# ----------------------------------------------------------------------------------------------- the builder
class _Graph:
    """Nodes, initializers and the SSA names of Caffe blobs (in-place layers write a blob several times; each
    write is a new ONNX tensor) with their static (C, H, W) shapes (the batch axis stays symbolic)."""

    def __init__(self, weights: Dict[str, List[np.ndarray]]):
        from onnx import helper, numpy_helper
        self.h, self.nh = helper, numpy_helper
        self.weights = weights
        self.nodes, self.inits, self.inputs = [], [], []
        self.cur: Dict[str, str] = {}           # blob -> current tensor
        self.shape: Dict[str, Tuple[int, ...]] = {}   # tensor -> shape without the batch axis
        self.mask_plane: Dict[str, int] = {}    # tensor of MaxPool indices -> H*W of the pooling input
        self.consumed = set()
        self.order: List[str] = []              # blobs in order of first production
        self.n = 0

    def tensor(self, layer, blob: str) -> str:
        name = "%s/%s" % (blob, layer.name)
        self.n += 1
        return name if name not in self.shape else "%s#%d" % (name, self.n)

    def const(self, prefix: str, what: str, arr) -> str:
        name = "%s/%s" % (prefix, what)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, ins: Sequence[str], outs: Sequence[str], layer, **attrs) -> None:
        name = "%s/%s%d" % (layer.name, op, len(self.nodes))
        self.nodes.append(self.h.make_node(op, list(ins), list(outs), name=name, **attrs))

    def bottom(self, layer, i: int) -> str:
        b = layer.bottom[i]
        if b not in self.cur:
            raise UnmappableLayer("layer %s (%s): bottom %r is produced by no earlier layer" % (layer.name, layer.type,
                                                                                                b))
        self.consumed.add(b)
        return self.cur[b]

    def set_top(self, layer, i: int, tensor: str, shape: Tuple[int, ...]) -> None:
        blob = layer.top[i]
        if blob not in self.cur:
            self.order.append(blob)
        self.consumed.discard(blob)              # written again (in place): an output unless consumed later
        self.cur[blob] = tensor
        self.shape[tensor] = tuple(int(s) for s in shape)

    def blobs(self, layer, n: int) -> List[np.ndarray]:
        """The layer's n weight blobs (float32); UnmappableLayer when the weights have another number."""
        bl = self.weights.get(layer.name)
        if bl is None or len(bl) != n:
            raise UnmappableLayer("layer %s (%s): the weights hold %s blobs for it, expected %d" % (
                layer.name, layer.type, "no" if bl is None else len(bl), n))
        return [np.asarray(b, np.float32) for b in bl]


def _unmappable(layer, why: str):
    raise UnmappableLayer("layer %s (%s) cannot be exported to ONNX: %s" % (layer.name, layer.type, why))


def _check_shape(layer, arr, expected, what):
    if tuple(arr.shape) != tuple(expected):
        raise UnmappableLayer("layer %s (%s): %s blob has shape %s, the net needs %s" % (
            layer.name, layer.type, what, tuple(arr.shape), tuple(expected)))


def _input(g, layer):
    for i, top in enumerate(layer.top):
        shape = layer.input_param.shape[min(i, len(layer.input_param.shape) - 1)]
        dims = [int(d) for d in shape.dim]
        if len(dims) < 2:
            _unmappable(layer, "input %s has shape %s; (N, ...) expected" % (top, dims))
        g.inputs.append(g.h.make_tensor_value_info(top, 1, ["N"] + dims[1:]))     # 1 = FLOAT
        g.cur[top] = top
        g.order.append(top)
        g.shape[top] = tuple(dims[1:])


def _conv(g, layer, transpose: bool, x: Optional[str] = None):
    """Convolution / Deconvolution of bottom 0 (or of the tensor `x`: UnpoolDeconvolution's unpooled input)."""
    p = layer.convolution_param
    if p.axis != 1 or p.force_nd_im2col:
        _unmappable(layer, "axis %d / force_nd_im2col" % p.axis)
    if x is None:
        x = g.bottom(layer, 0)
    shp = g.shape[x]
    if len(shp) != 3:
        _unmappable(layer, "input of shape %s is not (C, H, W)" % (shp,))
    kh, kw = _spatial(p, "kernel_size", "kernel", 0, layer)
    sh, sw = _spatial(p, "stride", "stride", 1, layer)
    ph, pw = _spatial(p, "pad", "pad", 0, layer)
    dh, dw = _spatial(p, "dilation", None, 1, layer)
    if kh < 1 or kw < 1:
        _unmappable(layer, "no kernel size")
    group, c_in, c_out = int(p.group), shp[0], int(p.num_output)
    blobs = g.blobs(layer, 2 if p.bias_term else 1)
    w = blobs[0]
    if transpose:       # Caffe and ONNX both store (C_in, C_out / group, kh, kw)
        _check_shape(layer, w, (c_in, c_out // group, kh, kw), "weight")
        oh = sh * (shp[1] - 1) + dh * (kh - 1) + 1 - 2 * ph
        ow = sw * (shp[2] - 1) + dw * (kw - 1) + 1 - 2 * pw
    else:
        _check_shape(layer, w, (c_out, c_in // group, kh, kw), "weight")
        oh = (shp[1] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        ow = (shp[2] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    ins = [x, g.const(layer.name, "weight", w)]
    if p.bias_term:
        _check_shape(layer, blobs[1], (c_out,), "bias")
        ins.append(g.const(layer.name, "bias", blobs[1]))
    y = g.tensor(layer, layer.top[0])
    g.node("ConvTranspose" if transpose else "Conv", ins, [y], layer, kernel_shape=[kh, kw], strides=[sh, sw],
           pads=[ph, pw, ph, pw], dilations=[dh, dw], group=group)
    g.set_top(layer, 0, y, (c_out, oh, ow))


def _batchnorm(g, layer):
    p = layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        _unmappable(layer, "use_global_stats false normalises with each batch's own statistics")
    x = g.bottom(layer, 0)
    c = g.shape[x][0]
    mean, var, factor = g.blobs(layer, 3)
    _check_shape(layer, mean, (c,), "mean")
    _check_shape(layer, var, (c,), "variance")
    # Caffe (batch_norm_layer.cpp, global stats): scale = factor == 0 ? 0 : 1 / factor, mean and variance times
    # scale in float32, then (x - mean) / sqrt(variance + eps)
    f = np.float32(factor.reshape(-1)[0])
    s = np.float32(0) if f == 0 else np.float32(1) / f
    y = g.tensor(layer, layer.top[0])
    ins = [x, g.const(layer.name, "one", np.ones(c, np.float32)), g.const(layer.name, "zero", np.zeros(c, np.float32)),
           g.const(layer.name, "mean", mean * s), g.const(layer.name, "var", var * s)]
    g.node("BatchNormalization", ins, [y], layer, epsilon=float(p.eps))
    g.set_top(layer, 0, y, g.shape[x])


def _channel_shape(layer, shp, c):
    """Broadcast shape of a per-channel (axis 1) parameter for an input of shape (C, ...) without batch."""
    if not shp or shp[0] != c:
        _unmappable(layer, "parameter of %d values for an input of shape %s" % (c, shp))
    return (c,) + (1,) * (len(shp) - 1)


def _scale(g, layer):
    p = layer.scale_param
    if len(layer.bottom) != 1 or p.axis != 1 or p.num_axes != 1:
        _unmappable(layer, "only the one-bottom Scale with a learned per-channel factor (axis 1, num_axes 1)")
    x = g.bottom(layer, 0)
    shp = g.shape[x]
    blobs = g.blobs(layer, 2 if p.bias_term else 1)
    bshape = _channel_shape(layer, shp, blobs[0].size)
    y = g.tensor(layer, layer.top[0])
    mul = y if not p.bias_term else y + ":mul"
    g.node("Mul", [x, g.const(layer.name, "scale", blobs[0].reshape(bshape))], [mul], layer)
    if p.bias_term:
        g.node("Add", [mul, g.const(layer.name, "bias", blobs[1].reshape(bshape))], [y], layer)
    g.set_top(layer, 0, y, shp)


def _relu(g, layer):
    x = g.bottom(layer, 0)
    y = g.tensor(layer, layer.top[0])
    slope = float(layer.relu_param.negative_slope)
    if slope:
        g.node("LeakyRelu", [x], [y], layer, alpha=slope)
    else:
        g.node("Relu", [x], [y], layer)
    g.set_top(layer, 0, y, g.shape[x])


def _pooling(g, layer):
    p = layer.pooling_param
    if p.pool != 0:                                         # PoolingParameter.MAX
        _unmappable(layer, "only MAX pooling is mapped (Caffe's AVE divides by a window clipped differently)")
    if p.global_pooling:
        _unmappable(layer, "global pooling")
    x = g.bottom(layer, 0)
    c, hh, ww = g.shape[x]
    kh, kw = _spatial(p, "kernel_size", "kernel", 0, layer)
    sh, sw = _spatial(p, "stride", "stride", 1, layer)
    ph, pw = _spatial(p, "pad", "pad", 0, layer)
    oh, ow = caffe_pooled_size(hh, kh, sh, ph), caffe_pooled_size(ww, kw, sw, pw)
    # Caffe's ceil rounding as explicit end padding: ONNX (floor rounding) then gives exactly Caffe's windows, and
    # MaxPool ignores padded cells as Caffe's clipped windows do
    eh, ew = (oh - 1) * sh + kh - hh - ph, (ow - 1) * sw + kw - ww - pw
    if min(eh, ew) < 0 or max(ph, pw, eh, ew) >= min(kh, kw):
        _unmappable(layer, "padding %s beyond the kernel %s" % ((ph, pw, eh, ew), (kh, kw)))
    y = g.tensor(layer, layer.top[0])
    outs = [y]
    if len(layer.top) > 1:
        outs.append(g.tensor(layer, layer.top[1]))
    g.node("MaxPool", [x], outs, layer, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, eh, ew],
           storage_order=0)
    g.set_top(layer, 0, y, (c, oh, ow))
    if len(outs) > 1:
        # ONNX indices are flat over the whole (N, C, H, W) input: (n*C + c)*H*W + h*W + w; Caffe's mask holds
        # h*W + w, i.e. the ONNX index mod H*W (mask_plane records H*W for MaxUnpool and for the check)
        g.set_top(layer, 1, outs[1], (c, oh, ow))
        g.mask_plane[outs[1]] = hh * ww


def _python(g, layer):
    pp = layer.python_param
    kind = "%s.%s" % (pp.module, pp.layer)
    if kind == "gcnet_layers.ElementwiseDistance":         # |a - b| (python_layers/gcnet_layers.py)
        a, b = g.bottom(layer, 0), g.bottom(layer, 1)
        if g.shape[a] != g.shape[b]:
            _unmappable(layer, "bottoms of shapes %s and %s" % (g.shape[a], g.shape[b]))
        d, y = g.tensor(layer, layer.top[0]) + ":sub", g.tensor(layer, layer.top[0])
        g.node("Sub", [a, b], [d], layer)
        g.node("Abs", [d], [y], layer)
        g.set_top(layer, 0, y, g.shape[a])
    elif kind == "gcnet_layers.MaxUnpool":
        _max_unpool(g, layer)
    else:
        _unmappable(layer, "Python layer %s has no ONNX mapping" % kind)


def _max_unpool(g, layer):
    """python_layers/gcnet_layers.py MaxUnpool (see _unpool)."""
    try:
        par = json.loads(layer.python_param.param_str or "{}")
        oh, ow = int(par["out_h"]), int(par["out_w"])
    except (ValueError, KeyError, TypeError) as e:
        _unmappable(layer, "param_str %r (%s)" % (layer.python_param.param_str, e))
    t = g.tensor(layer, layer.top[0])
    g.set_top(layer, 0, t, _unpool(g, layer, oh, ow, t))


def _unpool_deconv(g, layer):
    """UnpoolDeconvolution (Caffe patch 0012): the unpooling of _unpool, then ConvTranspose (_conv)."""
    p = layer.unpool_param
    if not (p.out_h > 0 and p.out_w > 0):
        _unmappable(layer, "unpool_param needs positive out_h and out_w")
    u = g.tensor(layer, layer.top[0]) + ":unpooled"
    g.shape[u] = _unpool(g, layer, int(p.out_h), int(p.out_w), u)
    _conv(g, layer, True, x=u)


def _unpool(g, layer, oh: int, ow: int, t: str) -> Tuple[int, int, int]:
    """Nodes writing tensor t = the max unpooling of bottoms (x, Caffe's mask): zeros (N, C, oh, ow), each pooled
    value ADDED at its argmax (overlapping windows can share one): ScatterElements(reduction="add") on the
    flattened output.  Returns t's shape without the batch axis."""
    x, m = g.bottom(layer, 0), g.bottom(layer, 1)
    if m not in g.mask_plane:
        _unmappable(layer, "its mask %r is not the mask top of a MAX Pooling layer" % layer.bottom[1])
    c, h, w = g.shape[x]
    if g.shape[m] != (c, h, w) or h > oh or w > ow:
        _unmappable(layer, "x %s, mask %s, output %dx%d" % (g.shape[x], g.shape[m], oh, ow))
    plane = g.mask_plane[m]
    idx = m
    if plane != oh * ow:
        # Caffe mask (index mod plane) placed in (N*C) planes of oh*ow: (idx mod P) + (idx div P) * oh*ow
        P = g.const(layer.name, "plane", np.array(plane, np.int64))
        g.node("Mod", [m, P], [t + ":in_plane"], layer)
        g.node("Div", [m, P], [t + ":nc"], layer)
        g.node("Mul", [t + ":nc", g.const(layer.name, "out_plane", np.array(oh * ow, np.int64))], [t + ":base"], layer)
        g.node("Add", [t + ":in_plane", t + ":base"], [t + ":idx"], layer)
        idx = t + ":idx"
    flat = g.const(layer.name, "flat", np.array([-1], np.int64))
    g.node("Shape", [x], [t + ":nc_shape"], layer, start=0, end=2)
    g.node("Concat", [t + ":nc_shape", g.const(layer.name, "hw", np.array([oh, ow], np.int64))], [t + ":shape"], layer,
           axis=0)
    g.node("ConstantOfShape", [t + ":shape"], [t + ":zeros4"], layer,
           value=g.nh.from_array(np.zeros(1, np.float32)))
    g.node("Reshape", [t + ":zeros4", flat], [t + ":zeros"], layer)
    g.node("Reshape", [idx, flat], [t + ":idx_flat"], layer)
    g.node("Reshape", [x, flat], [t + ":x_flat"], layer)
    g.node("ScatterElements", [t + ":zeros", t + ":idx_flat", t + ":x_flat"], [t + ":out_flat"], layer, axis=0,
           reduction="add")
    g.node("Reshape", [t + ":out_flat", t + ":shape"], [t], layer)
    return c, oh, ow


def _inner_product(g, layer):
    p = layer.inner_product_param
    if p.axis != 1:
        _unmappable(layer, "axis %d (only 1)" % p.axis)
    x = g.bottom(layer, 0)
    k, n = int(np.prod(g.shape[x])), int(p.num_output)
    blobs = g.blobs(layer, 2 if p.bias_term else 1)
    _check_shape(layer, blobs[0], (k, n) if p.transpose else (n, k), "weight")
    y = g.tensor(layer, layer.top[0])
    g.node("Flatten", [x], [y + ":flat"], layer, axis=1)
    ins = [y + ":flat", g.const(layer.name, "weight", blobs[0])]
    if p.bias_term:
        _check_shape(layer, blobs[1], (n,), "bias")
        ins.append(g.const(layer.name, "bias", blobs[1]))
    g.node("Gemm", ins, [y], layer, transB=0 if p.transpose else 1)
    g.set_top(layer, 0, y, (n,))


def _dropout(g, layer):
    # TEST phase: BVLC Caffe's Dropout copies its input (training scales the kept values by 1 / (1 - ratio))
    x = g.bottom(layer, 0)
    y = g.tensor(layer, layer.top[0])
    g.node("Identity", [x], [y], layer)
    g.set_top(layer, 0, y, g.shape[x])


def _softmax(g, layer):
    axis = int(layer.softmax_param.axis)
    if axis != 1:
        _unmappable(layer, "axis %d (only 1)" % axis)
    x = g.bottom(layer, 0)
    y = g.tensor(layer, layer.top[0])
    g.node("Softmax", [x], [y], layer, axis=1)       # opset >= 13: over axis 1 only, as Caffe's
    g.set_top(layer, 0, y, g.shape[x])


def _split(g, layer):
    x = g.bottom(layer, 0)
    for i, top in enumerate(layer.top):
        y = g.tensor(layer, top)
        g.node("Identity", [x], [y], layer)
        g.set_top(layer, i, y, g.shape[x])


def _slice(g, layer):
    p = layer.slice_param
    axis = int(p.axis) if not p.HasField("slice_dim") else int(p.slice_dim)
    x = g.bottom(layer, 0)
    shp = g.shape[x]
    if axis < 1 or axis > len(shp):
        _unmappable(layer, "axis %d (the batch axis or beyond %s)" % (axis, shp))
    size, n = shp[axis - 1], len(layer.top)
    points = [0] + [int(s) for s in p.slice_point] + [size]
    if len(p.slice_point) == 0:
        if size % n:
            _unmappable(layer, "%d channels do not split in %d equal parts" % (size, n))
        points = list(range(0, size + 1, size // n))
    if len(points) != n + 1 or any(b <= a for a, b in zip(points, points[1:])):
        _unmappable(layer, "slice points %s for %d tops of size %d" % (list(p.slice_point), n, size))
    sizes = [b - a for a, b in zip(points, points[1:])]
    outs = [g.tensor(layer, t) for t in layer.top]
    g.node("Split", [x, g.const(layer.name, "split", np.array(sizes, np.int64))], outs, layer, axis=axis)
    for i, (y, s) in enumerate(zip(outs, sizes)):
        g.set_top(layer, i, y, shp[:axis - 1] + (s,) + shp[axis:])


def _silence(g, layer):
    for i in range(len(layer.bottom)):
        g.bottom(layer, i)


MAPPERS = {
    "Input": _input, "Convolution": lambda g, l: _conv(g, l, False), "Deconvolution": lambda g, l: _conv(g, l, True),
    "UnpoolDeconvolution": _unpool_deconv,
    "BatchNorm": _batchnorm, "Scale": _scale, "ReLU": _relu, "Pooling": _pooling, "Python": _python,
    "InnerProduct": _inner_product, "Dropout": _dropout, "Softmax": _softmax, "Split": _split, "Slice": _slice,
    "Silence": _silence,
}
