"""References of Caffe's CPU Convolution, Deconvolution, MAX Pooling, ReLU, BatchNorm and Scale layers (the code
that patches 0003-0007 rewrite), as plain functions and as Caffe Python layers, for the equivalence tests of
tests/test_cpu_kernels.py.

They reproduce BVLC Caffe 1.0's CPU code element for element, in float32 and in the same order of operations, so a
patched Caffe must match them bit for bit:

* MAX pooling forward: pooled size with Caffe's ceil rounding (and the pad clipping rule); each output starts at
  -FLT_MAX with mask -1 and takes, in scan order (h, then w, increasing) over the window clipped to the image, every
  element STRICTLY greater than its running max, so the FIRST maximum wins ties and NaN or values <= -FLT_MAX
  never win.  The mask holds h * W + w of the pooling input plane (as float in the mask top).
* MAX pooling backward: bottom diff = 0, then for every output in raster order bottom_diff[mask] += top_diff.
* ReLU forward: std::max(x, 0) + negative_slope * std::min(x, 0), where std::max(a, b) = (a < b) ? b : a and
  std::min(a, b) = (b < a) ? b : a.
* ReLU backward: top_diff * ((x > 0) + negative_slope * (x <= 0)), x the bottom data (the top data when in place).
* BatchNorm and Scale (with its bias) forward and backward: the operations of batch_norm_layer.cpp and
  scale_layer.cpp / bias_layer.cpp in their original order.  Their sums are BLAS gemv calls whose summation order
  belongs to the BLAS kernel, so the reference calls the same cblas_sgemv (and sscal/saxpy for caffe_cpu_axpby and
  caffe_cpu_scale) of the BLAS library that libcaffe loaded, through ctypes; its broadcasts (rank-1 gemm, K = 1: one
  exact product by 1 added to an accumulator that starts at +0, then one add) and elementwise steps are numpy float32.
* im2col: copies, +0 in the padding; col2im: the image starts at +0 and the column entries are added kernel row by
  kernel row, kernel column by kernel column.  Convolution and Deconvolution: base_conv_layer.cpp's per-sample
  im2col / col2im and sgemm (bias: rank-1 sgemm forward, sgemv backward) through the same cblas_sgemm / sgemv.

This module is on sys.path only in the tests (the Python layers are named by module in a prototxt).
"""
import ctypes
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


def _conv_pair(p, name):
    """(h, w) of a ConvolutionParameter field: name_h/name_w if set (dilation has none), else the repeated field
    (one value for both, none for Caffe's default: pad 0, stride 1, dilation 1)."""
    if name != "dilation" and p.HasField(name + "_h"):
        return [getattr(p, name + "_h"), getattr(p, name + "_w")]
    values = list(getattr(p, "kernel_size" if name == "kernel" else name))
    if not values:
        values = [0 if name == "pad" else 1]
    return values * 2 if len(values) == 1 else values


def _param_grads(layer):
    """[weight, bias]: False where the layer's param spec has lr_mult 0 (Caffe then leaves that diff alone)."""
    return ([spec.lr_mult != 0 for spec in layer.param] + [True, True])[:2]


def to_reference(net_param, train=True):
    """Copy of a NetParameter in which every Convolution, Deconvolution, MAX Pooling, ReLU, BatchNorm and Scale
    layer is the Python reference layer of this module (same name, bottoms, tops and param specs, so in-place layers
    stay in place and shared weights and statistics stay shared).  Returns (copy, number of layers replaced).
    `train`: the phase the net will be built in (BatchNorm's use_global_stats defaults to its opposite)."""
    from caffe.proto import caffe_pb2
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    replaced = 0
    for layer in out.layer:
        if layer.type == "Pooling" and layer.pooling_param.pool == caffe_pb2.PoolingParameter.MAX:
            p = layer.pooling_param
            assert not p.global_pooling
            cls = "RefMaxPool"
            param = {"kernel": _pair(p, "kernel"), "stride": _pair(p, "stride"), "pad": _pair(p, "pad")}
            layer.ClearField("pooling_param")
        elif layer.type == "ReLU":
            cls, param = "RefReLU", {"negative_slope": layer.relu_param.negative_slope}
            layer.ClearField("relu_param")
        elif layer.type == "Scale":
            p = layer.scale_param
            assert p.axis == 1 and p.num_axes == 1 and len(layer.bottom) == 1
            cls, param = "RefScale", {"bias_term": p.bias_term, "param_grad": _param_grads(layer)}
            layer.ClearField("scale_param")
        elif layer.type in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            assert p.group == 1 and p.axis == 1 and not p.force_nd_im2col
            cls, param = "RefConvolution", {"deconv": layer.type == "Deconvolution", "num_output": p.num_output,
                                            "bias_term": p.bias_term, "param_grad": _param_grads(layer)}
            param.update({k: _conv_pair(p, k) for k in ("kernel", "pad", "stride", "dilation")})
            layer.ClearField("convolution_param")
        elif layer.type == "BatchNorm":
            p = layer.batch_norm_param
            cls = "RefBatchNorm"
            param = {"use_global_stats": p.use_global_stats if p.HasField("use_global_stats") else not train,
                     "moving_average_fraction": p.moving_average_fraction, "eps": p.eps}
            layer.ClearField("batch_norm_param")
        else:
            continue
        layer.type = "Python"
        layer.python_param.module = __name__
        layer.python_param.layer = cls
        layer.python_param.param_str = json.dumps(param)
        replaced += 1
    return out, replaced


# ============================================================================================ BatchNorm
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_blas = None


def caffe_blas():
    """The CBLAS library that libcaffe loaded (not numpy's), found in this process's memory map."""
    global _blas
    if _blas is None:
        maps = {line.split()[-1] for line in open("/proc/self/maps") if len(line.split()) >= 6}
        libs = sorted(p for p in maps if "blas" in p.rsplit("/", 1)[-1].lower() and ".so" in p
                      and "site-packages" not in p)
        if len(libs) != 1:
            raise RuntimeError("cannot tell which BLAS libcaffe uses: %s" % libs)
        lib = ctypes.CDLL(libs[0])
        f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
        lib.cblas_sgemv.argtypes = [i, i, i, i, f, p, i, p, i, f, p, i]
        lib.cblas_sscal.argtypes = [i, f, p, i]
        lib.cblas_saxpy.argtypes = [i, f, p, i, p, i]
        lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        _blas = lib
    return _blas


def _ptr(a):
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


def _gemv(trans, m, n, alpha, a, x, beta=0.0, y=None):
    """caffe_cpu_gemv<float>: y = alpha * op(A) x + beta * y with A row-major (m, n) (y in place when given)."""
    if y is None:
        y = np.zeros(n if trans else m, np.float32)
    caffe_blas().cblas_sgemv(_ROW_MAJOR, _TRANS if trans else _NO_TRANS, m, n, float(np.float32(alpha)),
                             _ptr(np.ascontiguousarray(a, np.float32)), n, _ptr(x), 1, float(beta), _ptr(y), 1)
    return y


def _scale_planes(x, factors):
    """caffe_cpu_scale per (outer, d) plane: scopy then cblas_sscal (whose factors 0 and 1 are special cases)."""
    out = np.array(x, np.float32, order="C")
    planes = out.reshape(out.shape[0], len(factors), -1)
    for o in range(planes.shape[0]):
        for d, f in enumerate(factors):
            row = planes[o, d]
            caffe_blas().cblas_sscal(row.size, float(f), row.ctypes.data_as(ctypes.c_void_p), 1)
    return out


def _axpby(alpha, x, beta, y):
    """caffe_cpu_axpby<float> without MKL: sscal(beta, y) then saxpy(alpha, x, y), in place on y."""
    caffe_blas().cblas_sscal(y.size, float(np.float32(beta)), _ptr(y), 1)
    caffe_blas().cblas_saxpy(y.size, float(np.float32(alpha)), _ptr(x), 1, _ptr(y), 1)


def _channel_sums(v, num, channels, spatial, alpha):
    """Caffe's two gemv calls: per-(n, c) sums over space (times alpha), then sums over the batch."""
    ones_s, ones_n = np.ones(spatial, np.float32), np.ones(num, np.float32)
    by_nc = _gemv(False, num * channels, spatial, alpha, np.ascontiguousarray(v, np.float32), ones_s)
    return _gemv(True, num, channels, 1.0, by_nc, ones_n)


def batch_norm_forward(x, blobs, use_global_stats, maf=0.999, eps=1e-5):
    """Caffe's BatchNorm Forward_cpu.  x (N, C, ...) float32; blobs [mean sum, variance sum, factor] float32 arrays,
    updated in place in the training phase.  Returns (top, sd) with sd = sqrt(var + eps) per channel."""
    x = np.ascontiguousarray(x, np.float32)
    num, channels = x.shape[0], x.shape[1]
    spatial = x.size // (num * channels)
    f32 = np.float32
    if use_global_stats:
        factor = blobs[2][0]
        sf = f32(0) if factor == 0 else f32(1) / factor
        mean, var = blobs[0].copy(), blobs[1].copy()
        caffe_blas().cblas_sscal(channels, float(sf), _ptr(mean), 1)
        caffe_blas().cblas_sscal(channels, float(sf), _ptr(var), 1)
    else:
        mean = _channel_sums(x, num, channels, spatial, 1.0 / (num * spatial))
    bshape = (1, channels) + (1,) * (x.ndim - 2)
    top = x + (f32(-1) * (mean * f32(1) + f32(0))).reshape(bshape)   # gemm, beta 1: top + (-1) * (0 + mean * 1)
    if not use_global_stats:
        var = _channel_sums(top * top, num, channels, spatial, 1.0 / (num * spatial))
        blobs[2][0] = blobs[2][0] * f32(maf)
        blobs[2][0] = blobs[2][0] + f32(1)
        _axpby(1.0, mean, maf, blobs[0])
        m = x.size // channels
        _axpby(f32(m) / f32(m - 1) if m > 1 else f32(1), var, maf, blobs[1])
    sd = np.sqrt(var + f32(eps))
    return top / sd.reshape(bshape), sd


def batch_norm_backward(top_diff, x_norm, sd, use_global_stats):
    """Caffe's BatchNorm Backward_cpu (x_norm: the forward's output, sd: its sqrt(var + eps) per channel)."""
    dy = np.ascontiguousarray(top_diff, np.float32)
    num, channels = dy.shape[0], dy.shape[1]
    spatial = dy.size // (num * channels)
    bshape = (1, channels) + (1,) * (dy.ndim - 2)
    if use_global_stats:
        return dy / sd.reshape(bshape)
    y = np.ascontiguousarray(x_norm, np.float32)
    f32 = np.float32
    a = _channel_sums(y * dy, num, channels, spatial, 1.0)           # sum(dE/dY . Y)
    t = y * (a * f32(1) + f32(0)).reshape(bshape)                     # broadcast (gemm, beta 0), then mul
    b = _channel_sums(dy, num, channels, spatial, 1.0)                # sum(dE/dY)
    t = t + (b * f32(1) + f32(0)).reshape(bshape)                     # gemm, beta 1
    t = np.ascontiguousarray(t)
    _axpby(1.0, dy, f32(-1.0 / (num * spatial)), t.reshape(-1))       # dE/dY - mean(...) ...
    return t / sd.reshape(bshape)


class RefBatchNorm(_LayerBase):
    """Python stand-in for a BatchNorm layer (in place or not, three blobs like Caffe's).
    param_str: {"use_global_stats": bool, "moving_average_fraction": f, "eps": e}."""

    def setup(self, bottom, top):
        p = json.loads(self.param_str)
        self.global_stats, self.maf, self.eps = p["use_global_stats"], p["moving_average_fraction"], p["eps"]
        c = bottom[0].data.shape[1]
        if len(self.blobs) == 0:
            for shape in ((c,), (c,), (1,)):
                self.blobs.add_blob(*shape)
                self.blobs[-1].data[...] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        stats = [np.array(b.data, np.float32) for b in self.blobs]
        out, self._sd = batch_norm_forward(bottom[0].data, stats, self.global_stats, self.maf, self.eps)
        for b, s in zip(self.blobs, stats):
            b.data[...] = s
        self._x_norm = out.copy()
        top[0].data[...] = out

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = batch_norm_backward(top[0].diff, self._x_norm, self._sd, self.global_stats)


# ============================================================================================ Scale (+ bias)
def scale_forward(x, scale, bias=None):
    """Caffe's Scale Forward_cpu (scale blob over axis 1, bias_term from the internal Bias layer): per plane
    caffe_cpu_scale, then the bias layer's rank-1 gemm (top + (0 + bias * 1))."""
    x = np.ascontiguousarray(x, np.float32)
    y = _scale_planes(x, scale)
    if bias is not None:
        bshape = (1, len(bias)) + (1,) * (x.ndim - 2)
        y = y + (np.asarray(bias, np.float32) * np.float32(1) + np.float32(0)).reshape(bshape)
    return y


def scale_backward(top_diff, x, scale, scale_diff, bias_diff=None, need_scale=True, need_bias=True,
                   need_bottom=True):
    """Caffe's Scale Backward_cpu: bias diff (gemv per outer index, accumulating), scale diff (product, gemv over
    the inner axis, gemv over the outer axis accumulating, or overwriting when the outer size is 1), bottom diff
    (caffe_cpu_scale of the top diff).  scale_diff / bias_diff are updated in place; returns the bottom diff."""
    dy = np.ascontiguousarray(top_diff, np.float32)
    outer, dim = dy.shape[0], len(scale)
    inner = dy.size // (outer * dim)
    ones = np.ones(max(outer, inner), np.float32)
    if bias_diff is not None and need_bias:
        for n in range(outer):
            _gemv(False, dim, inner, 1.0, dy[n].reshape(dim, inner), ones, beta=1.0, y=bias_diff)
    if need_scale:
        product = dy * np.ascontiguousarray(x, np.float32)
        if inner == 1:
            sums = product.reshape(-1)
        elif outer == 1:                      # Caffe writes the inner sums straight into the scale diff (beta 0)
            _gemv(False, dim, inner, 1.0, product.reshape(dim, inner), ones, beta=0.0, y=scale_diff)
            sums = None
        else:
            sums = _gemv(False, outer * dim, inner, 1.0, product.reshape(outer * dim, inner), ones)
        if outer != 1:
            _gemv(True, outer, dim, 1.0, sums.reshape(outer, dim), ones, beta=1.0, y=scale_diff)
    return _scale_planes(dy, scale) if need_bottom else None


class RefScale(_LayerBase):
    """Python stand-in for a Scale layer over axis 1 with its own scale blob (and bias blob with bias_term), in
    place or not.  param_str: {"bias_term": bool, "param_grad": [scale, bias]} (False where lr_mult is 0: Caffe then
    leaves that parameter's diff alone)."""

    def setup(self, bottom, top):
        p = json.loads(self.param_str)
        self.bias_term, self.param_grad = p["bias_term"], p["param_grad"]
        if len(self.blobs) == 0:
            c = bottom[0].data.shape[1]
            self.blobs.add_blob(c)
            self.blobs[0].data[...] = 1
            if self.bias_term:
                self.blobs.add_blob(c)
                self.blobs[1].data[...] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self._x = np.array(bottom[0].data, np.float32)
        top[0].data[...] = scale_forward(self._x, self.blobs[0].data,
                                         self.blobs[1].data if self.bias_term else None)

    def backward(self, top, propagate_down, bottom):
        sd = np.array(self.blobs[0].diff, np.float32)
        bd = np.array(self.blobs[1].diff, np.float32) if self.bias_term else None
        dx = scale_backward(top[0].diff, self._x, self.blobs[0].data, sd, bd, self.param_grad[0],
                            self.bias_term and self.param_grad[-1], propagate_down[0])
        self.blobs[0].diff[...] = sd
        if self.bias_term:
            self.blobs[1].diff[...] = bd
        if dx is not None:
            bottom[0].diff[...] = dx


# ============================================================================================ Convolution
def conv_output_size(size, kernel, pad, stride, dilation):
    """Caffe's convolution output size (im2col.cpp, conv_layer.cpp): no ceil rounding, no clipping."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _window_slices(kernel, pad, stride, dilation, hw):
    """For every kernel offset (i, j): the padded image's rows and columns that the output positions read."""
    (oh, ow) = [conv_output_size(hw[a], kernel[a], pad[a], stride[a], dilation[a]) for a in (0, 1)]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, c = i * dilation[0], j * dilation[1]
            yield (i, j, slice(r, r + (oh - 1) * stride[0] + 1, stride[0]),
                   slice(c, c + (ow - 1) * stride[1] + 1, stride[1]))


def im2col(x, kernel, pad, stride, dilation):
    """Caffe's im2col_cpu: x (C, H, W) -> (C * kh * kw, OH * OW), rows ordered (channel, kernel row, kernel col);
    positions in the padding are +0, the rest copies."""
    c, h, w = x.shape
    padded = np.zeros((c, h + 2 * pad[0], w + 2 * pad[1]), np.float32)
    padded[:, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x
    oh, ow = (conv_output_size(size, kernel[a], pad[a], stride[a], dilation[a]) for a, size in enumerate((h, w)))
    col = np.empty((c, kernel[0], kernel[1], oh, ow), np.float32)
    for i, j, rows, columns in _window_slices(kernel, pad, stride, dilation, (h, w)):
        col[:, i, j] = padded[:, rows, columns]
    return col.reshape(c * kernel[0] * kernel[1], -1)


def col2im(col, shape, kernel, pad, stride, dilation):
    """Caffe's col2im_cpu: the image (C, H, W) starts at +0 and every column entry that falls inside it is added,
    kernel row by kernel row, kernel column by kernel column (Caffe's order: one addition per entry)."""
    c, h, w = shape
    padded = np.zeros((c, h + 2 * pad[0], w + 2 * pad[1]), np.float32)
    col = np.asarray(col, np.float32).reshape(c, kernel[0], kernel[1], -1)
    with np.errstate(invalid="ignore", over="ignore"):             # inf - inf and overflow as in C
        for i, j, rows, columns in _window_slices(kernel, pad, stride, dilation, (h, w)):
            target = padded[:, rows, columns]
            target += col[:, i, j].reshape(target.shape)
    return padded[:, pad[0]:pad[0] + h, pad[1]:pad[1] + w].copy()


def _gemm(trans_a, trans_b, m, n, k, alpha, a, b, beta, c):
    """caffe_cpu_gemm<float>: C (m, n) = alpha op(A) op(B) + beta C, row-major, in place on c."""
    caffe_blas().cblas_sgemm(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
                             m, n, k, float(np.float32(alpha)), _ptr(a), m if trans_a else k, _ptr(b),
                             k if trans_b else n, float(np.float32(beta)), _ptr(c), n)


class RefConvolution(_LayerBase):
    """Python stand-in for a Convolution or Deconvolution layer (group 1, 2-D), doing what Caffe's
    BaseConvolutionLayer does on the CPU per sample: im2col / col2im above and the same sgemm / sgemv calls, in the
    same order (weight and bias diffs accumulate over the batch).  param_str: {"deconv": bool, "num_output": n,
    "kernel": [h, w], "pad", "stride", "dilation": [h, w], "bias_term": bool, "param_grad": [weight, bias]}."""

    def setup(self, bottom, top):
        p = json.loads(self.param_str)
        self.deconv, self.num_output, self.bias_term = p["deconv"], p["num_output"], p["bias_term"]
        self.geometry = [p[k] for k in ("kernel", "pad", "stride", "dilation")]
        self.param_grad = p["param_grad"]
        channels = bottom[0].data.shape[1]
        out_c, in_c = (channels, self.num_output) if self.deconv else (self.num_output, channels)
        if len(self.blobs) == 0:
            self.blobs.add_blob(out_c, in_c, *p["kernel"])
            if self.bias_term:
                self.blobs.add_blob(self.num_output)

    def reshape(self, bottom, top):
        n, c, h, w = bottom[0].data.shape
        kernel, pad, stride, dilation = self.geometry
        if self.deconv:
            out = [stride[a] * (s - 1) + dilation[a] * (kernel[a] - 1) + 1 - 2 * pad[a] for a, s in enumerate((h, w))]
        else:
            out = [conv_output_size(s, kernel[a], pad[a], stride[a], dilation[a]) for a, s in enumerate((h, w))]
        top[0].reshape(n, self.num_output, *out)
        # Caffe's "conv" side: im2col runs on the input of a Convolution, on the output of a Deconvolution
        self.im_shape = tuple(top[0].data.shape[1:] if self.deconv else bottom[0].data.shape[1:])
        self.is_1x1 = all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(pad)

    def _cols(self, x):
        if self.is_1x1:
            return np.ascontiguousarray(x, np.float32).reshape(self.im_shape[0], -1)
        return np.ascontiguousarray(im2col(x, *self.geometry))

    def _uncols(self, col):
        if self.is_1x1:
            return col.reshape(self.im_shape)
        return col2im(col, self.im_shape, *self.geometry)

    def _forward_gemm(self, x, weight, out_channels):
        """BaseConvolutionLayer::forward_cpu_gemm: (out_channels, spatial) = W (out, kernel_dim) x im2col(x)."""
        col = self._cols(x)
        out = np.zeros((out_channels, col.shape[1]), np.float32)
        _gemm(False, False, out_channels, col.shape[1], col.shape[0], 1.0, weight, col, 0.0, out)
        return out

    def _backward_gemm(self, y, weight):
        """BaseConvolutionLayer::backward_cpu_gemm: col = W^T y, then col2im."""
        kernel_dim = weight.shape[1] * weight.shape[2] * weight.shape[3]
        y2 = np.ascontiguousarray(y).reshape(weight.shape[0], -1)
        col = np.zeros((kernel_dim, y2.shape[1]), np.float32)
        _gemm(True, False, kernel_dim, y2.shape[1], weight.shape[0], 1.0, weight, y2, 0.0, col)
        return self._uncols(col)

    def _weight_gemm(self, x, y, weight_diff):
        """BaseConvolutionLayer::weight_cpu_gemm: dW += y im2col(x)^T."""
        col = self._cols(x)
        y2 = np.ascontiguousarray(y).reshape(weight_diff.shape[0], -1)
        _gemm(False, True, y2.shape[0], col.shape[0], col.shape[1], 1.0, y2, col, 1.0, weight_diff)

    def _bias(self, out, bias):
        """forward_cpu_bias: a rank-1 sgemm (bias x ones) added to the output (beta 1)."""
        out2 = out.reshape(self.num_output, -1)
        _gemm(False, False, self.num_output, out2.shape[1], 1, 1.0, bias, np.ones(out2.shape[1], np.float32),
              1.0, out2)

    def forward(self, bottom, top):
        weight = np.ascontiguousarray(self.blobs[0].data, np.float32)
        bias = np.ascontiguousarray(self.blobs[1].data, np.float32) if self.bias_term else None
        out = np.empty(top[0].data.shape, np.float32)
        for n, x in enumerate(np.asarray(bottom[0].data, np.float32)):
            if self.deconv:
                out[n] = self._backward_gemm(x, weight)
            else:
                out[n] = self._forward_gemm(x, weight, self.num_output).reshape(out.shape[1:])
            if bias is not None:
                self._bias(out[n], bias)
        top[0].data[...] = out

    def backward(self, top, propagate_down, bottom):
        weight = np.ascontiguousarray(self.blobs[0].data, np.float32)
        dtop = np.asarray(top[0].diff, np.float32)
        x = np.asarray(bottom[0].data, np.float32)
        if self.bias_term and self.param_grad[1]:
            bias_diff = np.array(self.blobs[1].diff, np.float32)
            ones = np.ones(dtop[0].size // self.num_output, np.float32)
            for dy in dtop:
                _gemv(False, self.num_output, ones.size, 1.0, dy.reshape(self.num_output, -1), ones, 1.0, bias_diff)
            self.blobs[1].diff[...] = bias_diff
        weight_diff = np.array(self.blobs[0].diff, np.float32)
        dx = np.empty(x.shape, np.float32)
        for n in range(x.shape[0]):
            # Deconvolution: the roles of bottom and top swap (its "conv" input is the top)
            conv_in, conv_out = (dtop[n], x[n]) if self.deconv else (x[n], dtop[n])
            if self.param_grad[0]:
                self._weight_gemm(conv_in, conv_out, weight_diff)
            if propagate_down[0]:
                dx[n] = (self._forward_gemm(dtop[n], weight, x.shape[1]).reshape(x.shape[1:]) if self.deconv
                         else self._backward_gemm(dtop[n], weight))
        self.blobs[0].diff[...] = weight_diff
        if propagate_down[0]:
            bottom[0].diff[...] = dx


class InjectGradient(_LayerBase):
    """Test helper: a loss layer (give its top a loss_weight) whose backward writes `self.dtop` (set by the test) into
    its bottom diff, so a net reaches the layers under test with a chosen top diff and without force_backward (which
    would also force the gradients of frozen parameters)."""

    def setup(self, bottom, top):
        self.dtop = None

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = 0

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.dtop
