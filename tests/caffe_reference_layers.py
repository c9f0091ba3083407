"""Numpy references of Caffe's CPU MAX Pooling and ReLU layers (the kernels that patches 0003 and 0004 rewrite),
as plain functions and as Caffe Python layers, for the equivalence tests of tests/test_cpu_kernels.py.

They reproduce BVLC Caffe 1.0's CPU code (pooling_layer.cpp, relu_layer.cpp) element for element, in float32 and in
the same order of operations, so a patched Caffe must match them bit for bit:

* MAX pooling forward: pooled size with Caffe's ceil rounding (and the pad clipping rule); each output starts at
  -FLT_MAX with mask -1 and takes, in scan order (h, then w, increasing) over the window clipped to the image, every
  element STRICTLY greater than its running max, so the FIRST maximum wins ties and NaN or values <= -FLT_MAX
  never win.  The mask holds h * W + w of the pooling input plane (as float in the mask top).
* MAX pooling backward: bottom diff = 0, then for every output in raster order bottom_diff[mask] += top_diff.
* ReLU forward: std::max(x, 0) + negative_slope * std::min(x, 0), where std::max(a, b) = (a < b) ? b : a and
  std::min(a, b) = (b < a) ? b : a.
* ReLU backward: top_diff * ((x > 0) + negative_slope * (x <= 0)), x the bottom data (the top data when in place).

This module is on sys.path only in the tests (the Python layers are named by module in a prototxt).
"""
import json

import numpy as np

try:
    import caffe
    _LayerBase = caffe.Layer
except ImportError:  # pragma: no cover - the functions stay usable without pycaffe
    caffe = None
    _LayerBase = object

FLT_MAX = np.float32(np.finfo(np.float32).max)


def pooled_size(size, kernel, stride, pad):
    """Caffe's pooled output size: ceil((size + 2 pad - kernel) / stride) + 1, minus one if the last window would
    start in the padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def max_pool_forward(x, kernel, stride, pad):
    """(top, mask) of Caffe's CPU MAX pooling of x (N, C, H, W); kernel/stride/pad are (h, w) pairs; mask int64."""
    x = np.asarray(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, kh, sh, ph), pooled_size(w, kw, sw, pw)
    top = np.full((n, c, oh, ow), -FLT_MAX, dtype=x.dtype)
    mask = np.full((n, c, oh, ow), -1, dtype=np.int64)
    # padded with NaN: a position outside the image is never strictly greater, like Caffe's clipped windows
    hp, wp = max((oh - 1) * sh + kh, h + ph), max((ow - 1) * sw + kw, w + pw)
    xp = np.full((n, c, hp, wp), np.nan, dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    for i in range(kh):                      # Caffe's scan order: window rows, then columns
        rows = np.arange(oh) * sh - ph + i
        for j in range(kw):
            cols = np.arange(ow) * sw - pw + j
            cand = xp[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
            gt = cand > top
            top = np.where(gt, cand, top)
            mask = np.where(gt, rows[:, None] * w + cols[None, :], mask)
    return top, mask


def max_pool_backward(top_diff, mask, bottom_shape):
    """Caffe's CPU MAX pooling backward: zeros, then bottom_diff[mask] += top_diff in raster order (float32)."""
    n, c, h, w = bottom_shape
    mask = np.asarray(mask).astype(np.int64)
    if mask.size and mask.min() < 0:
        raise ValueError("a window without a maximum (mask -1) has no defined backward in Caffe")
    flat = (mask + (np.arange(n * c, dtype=np.int64) * h * w).reshape(n, c, 1, 1)).reshape(-1)
    out = np.zeros(n * c * h * w, dtype=np.asarray(top_diff).dtype)
    np.add.at(out, flat, np.asarray(top_diff).reshape(-1))   # sequential, in index-array (raster) order
    return out.reshape(bottom_shape)


def relu_forward(x, negative_slope=0.0):
    x = np.asarray(x)
    s = x.dtype.type(negative_slope)
    zero = x.dtype.type(0)
    mx = np.where(x < zero, zero, x)      # std::max(x, 0)
    mn = np.where(zero < x, zero, x)      # std::min(x, 0)
    with np.errstate(invalid="ignore"):   # 0 * inf is NaN, as in C++
        return mx + s * mn


def relu_backward(x, top_diff, negative_slope=0.0):
    x = np.asarray(x)
    s = x.dtype.type(negative_slope)
    with np.errstate(invalid="ignore"):
        return np.asarray(top_diff) * ((x > 0).astype(x.dtype) + s * (x <= 0).astype(x.dtype))


class RefMaxPool(_LayerBase):
    """Python stand-in for a MAX Pooling layer (one top, or two with the mask).
    param_str: {"kernel": [kh, kw], "stride": [sh, sw], "pad": [ph, pw]}."""

    def setup(self, bottom, top):
        p = json.loads(self.param_str)
        self.kernel, self.stride, self.pad = (tuple(p[k]) for k in ("kernel", "stride", "pad"))

    def reshape(self, bottom, top):
        n, c, h, w = bottom[0].data.shape
        shape = (n, c, pooled_size(h, self.kernel[0], self.stride[0], self.pad[0]),
                 pooled_size(w, self.kernel[1], self.stride[1], self.pad[1]))
        for i in range(len(top)):
            top[i].reshape(*shape)

    def forward(self, bottom, top):
        out, self._mask = max_pool_forward(bottom[0].data, self.kernel, self.stride, self.pad)
        top[0].data[...] = out
        if len(top) > 1:
            top[1].data[...] = self._mask

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = max_pool_backward(top[0].diff, self._mask, bottom[0].data.shape)


class RefReLU(_LayerBase):
    """Python stand-in for a ReLU layer (in place or not).  param_str: {"negative_slope": s}."""

    def setup(self, bottom, top):
        self.slope = float(json.loads(self.param_str or "{}").get("negative_slope", 0.0))

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = relu_forward(bottom[0].data, self.slope)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # in place, bottom data is the top data, as for Caffe's own ReLU
            bottom[0].diff[...] = relu_backward(bottom[0].data, top[0].diff, self.slope)


def _pair(p, name):
    """(h, w) of a PoolingParameter field: name_h/name_w if set, else name (kernel_size for the kernel)."""
    single = "kernel_size" if name == "kernel" else name
    if p.HasField(name + "_h"):
        return [getattr(p, name + "_h"), getattr(p, name + "_w")]
    v = getattr(p, single)
    return [v, v]


def to_reference(net_param):
    """Copy of a NetParameter in which every MAX Pooling and every ReLU layer is the Python reference layer above
    (same name, bottoms and tops, so in-place layers stay in place).  Returns (copy, number of layers replaced)."""
    from caffe.proto import caffe_pb2
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    replaced = 0
    for layer in out.layer:
        if layer.type == "Pooling" and layer.pooling_param.pool == caffe_pb2.PoolingParameter.MAX:
            p = layer.pooling_param
            assert not p.global_pooling
            param = {"kernel": _pair(p, "kernel"), "stride": _pair(p, "stride"), "pad": _pair(p, "pad")}
            layer.ClearField("pooling_param")
        elif layer.type == "ReLU":
            param = {"negative_slope": layer.relu_param.negative_slope}
            layer.ClearField("relu_param")
        else:
            continue
        layer.type = "Python"
        layer.python_param.module = __name__
        layer.python_param.layer = "RefMaxPool" if "kernel" in param else "RefReLU"
        layer.python_param.param_str = json.dumps(param)
        replaced += 1
    return out, replaced
