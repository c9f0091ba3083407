"""Equivalence of the CPU kernels that patches/0003-0009 rewrite (MAX pooling forward; ReLU, BatchNorm and Scale
forward/backward; im2col and col2im, which Convolution and Deconvolution call): every result must be BIT-IDENTICAL to
Caffe 1.0's original code, represented here by the references of tests/caffe_reference_layers.py (numpy, plus for
the BLAS sums the same BLAS calls as the original; none of them uses the patched code).  Patch 0008's fused
BatchNorm-Scale-ReLU block (the last section) is checked against Caffe's own three layers instead: its forward and
running statistics bit-identical, its backward within a stated tolerance.  Patch 0010's Winograd path for 3x3
convolutions is switched off here (CAFFE_WINOGRAD=0) and checked in tests/test_winograd.py.

* whole nets (cnn and gcnet_s1r1 from gcnet/nets.py, seeded inputs, small batch): the net as built, and the same net
  with every Convolution, Deconvolution, MAX Pooling, ReLU, BatchNorm and Scale layer replaced by its reference (a
  Python layer), get the same weights and inputs; after forward + backward every blob's data and diff and every
  parameter's data and diff must be equal bit for bit (ReLU zeros make pooling windows with ties);
* single layers against the numpy references: pooling geometries (rectangular kernels, strides, padding, Caffe's
  ceil rounding with clipped last windows, mask top or internal mask) on inputs full of ties and with -FLT_MAX,
  -inf, NaN and signed zeros; ReLU in place and not, negative_slope 0, 0.1, -0.5, on the same special values;
  BatchNorm in both phases, in place and not, on odd plane sizes and a constant channel, moving averages included;
  Scale with and without bias, in place and not, factors 0 and 1, -0 biases, NaN and infinities, frozen parameters;
  im2col / col2im through Caffe's Im2col layer (forward im2col, backward col2im) on the nets' geometries and on
  rectangular, strided, dilated, over-padded, 1x1 and larger-than-image kernels, with NaN, infinities and -0.

Run:  source tools/env.sh && python -m pytest -q tests/test_cpu_kernels.py
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # the reference Python layers' module
import caffe_reference_layers as R  # noqa: E402

from gcnet.config import NetOptions  # noqa: E402

try:                                     # without pycaffe the `caffe` fixture fails (or skips) every test
    import caffe
    from caffe import layers as L, params as P
    from caffe.proto import caffe_pb2
    from gcnet import nets
except ImportError:
    caffe = L = P = caffe_pb2 = nets = None

pytestmark = pytest.mark.usefixtures("caffe")

BATCH = 4


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def first_difference(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    i = int(np.flatnonzero(a.view(np.uint32) != b.view(np.uint32))[0])
    return "at flat index %d: %r vs %r" % (i, a[i], b[i])


def _net_from_param(param, tmp_path, name):
    path = str(tmp_path / (name + ".prototxt"))
    with open(path, "w") as f:
        f.write(str(param))
    return caffe.Net(path, caffe.TRAIN)


def step_pair(net, ref, n_labels):
    """Give `ref` the weights of `net` (their fillers drew different numbers), then one forward + backward of each
    on the same random batch (data in [0, 1), labels i % n_labels) with the same Dropout masks."""
    for name, blobs in net.params.items():
        for b, rb in zip(blobs, ref.params[name]):
            rb.data[...] = b.data
    rng = np.random.RandomState(0)
    data = (rng.randint(0, 256, net.blobs["data"].data.shape) / 256.0).astype(np.float32)
    label = np.arange(net.blobs["label"].data.shape[0]) % n_labels
    for n in (net, ref):
        n.blobs["data"].data[...] = data
        n.blobs["label"].data[...] = label
        caffe.set_random_seed(7)                        # same Dropout masks
        n.forward()
        n.backward()


def _with_input_layer(param, batch, crop):
    """The train_val net with its two Data layers replaced by one Input layer (tops data, label)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    keep = [l for l in out.layer if l.type != "Data"]
    del out.layer[:]
    inp = out.layer.add(name="data", type="Input", top=["data", "label"])
    inp.input_param.shape.add(dim=[batch, 2, crop, crop])
    inp.input_param.shape.add(dim=[batch])
    out.layer.extend(keep)
    return out


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()


# ============================================================================================ whole nets
@pytest.mark.parametrize("fused", [False, True], ids=["layers", "fused_bsr"])
@pytest.mark.parametrize("model", ["cnn", "gcnet_s1r1"])
def test_net_forward_backward_bit_identical_to_reference(model, fused, tmp_path, monkeypatch):
    """`layers`: the net built with CAFFE_FUSE_BN_SCALE_RELU=0, every blob and parameter bit-identical.  `fused_bsr`:
    the net as training builds it (patch 0008 fuses each BatchNorm-Scale-ReLU block): every blob's data and the
    running statistics bit-identical, the diffs within NET_RTOL of each blob's largest |diff| (the fused block's
    own sums, carried through the rest of the backward), and not all bit-identical (the fused backward ran)."""
    opts = NetOptions(n_classes=7, batch_size=BATCH, test_batch_size=BATCH, n_identities=5, mirror=False)
    param = _with_input_layer(nets.build_net(model, opts), BATCH, opts.crop)
    ref_param, replaced = R.to_reference(param)
    n_pool = sum(l.type == "Pooling" for l in param.layer)
    n_relu = sum(l.type == "ReLU" for l in param.layer)
    n_bn = sum(l.type in ("BatchNorm", "Scale") for l in param.layer)
    n_conv = sum(l.type in ("Convolution", "Deconvolution") for l in param.layer)
    assert replaced == n_pool + n_relu + n_bn + n_conv and n_pool >= 3 and n_relu >= 4 and n_bn >= 6
    assert n_conv >= 3 + 3 * (model != "cnn")
    caffe.set_random_seed(1)
    monkeypatch.setenv("CAFFE_FUSE_BN_SCALE_RELU", "1" if fused else "0")
    monkeypatch.setenv("CAFFE_WINOGRAD", "0")          # patch 0010's 3x3 path: tests/test_winograd.py
    net = _net_from_param(param, tmp_path, "patched")
    monkeypatch.delenv("CAFFE_FUSE_BN_SCALE_RELU")
    monkeypatch.delenv("CAFFE_WINOGRAD")
    ref = _net_from_param(ref_param, tmp_path, "reference")
    step_pair(net, ref, 7)
    checked, identical_diffs = 0, 0
    for name in net.blobs:
        for kind in ("data", "diff"):
            a, b = getattr(net.blobs[name], kind), getattr(ref.blobs[name], kind)
            if fused and kind == "diff":
                _close_net(a, b, "blob %s diff" % name)
                identical_diffs += same_bits(a, b)
            else:
                assert same_bits(a, b), "blob %s %s differs %s" % (name, kind, first_difference(a, b))
            checked += 1
    for name, blobs in net.params.items():
        layer_scale = max(np.abs(rb.diff).max() for rb in ref.params[name])
        for i, (b, rb) in enumerate(zip(blobs, ref.params[name])):
            for kind in ("data", "diff"):
                if fused and kind == "diff":
                    _close_net(b.diff, rb.diff, "param %s[%d] diff" % (name, i), layer_scale)
                else:
                    assert same_bits(getattr(b, kind), getattr(rb, kind)), "param %s[%d] %s differs" % (name, i, kind)
    assert identical_diffs < len(net.blobs) if fused else identical_diffs == 0
    # the test is not vacuous: gradients flowed and the pooling windows had ties (all-zero windows after ReLU)
    pool_in = [l.bottom[0] for l in param.layer if l.type == "Pooling"][0]
    assert np.abs(net.blobs[pool_in].diff).max() > 0
    assert (net.blobs[pool_in].data == 0).mean() > 0.2
    assert checked == 2 * len(net.blobs)


# measured on cnn and gcnet_s1r1 (batch 4): at most 1.0e-6 of the scale below
NET_RTOL = 1e-5


def _close_net(a, b, what, scale=None):
    """|a - b| <= NET_RTOL * scale; scale: max |b|, or for a parameter the largest |diff| of its layer's parameters
    (a convolution's bias just before a BatchNorm has an exact gradient of 0: its diff is rounding noise, which
    only the weights' diff puts on a scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err, scale = np.abs(a - b).max(), np.abs(b).max() if scale is None else scale
    assert err <= NET_RTOL * scale, "%s: max |difference| %.3g = %.3g of the scale" % (what, err, err / scale)


# ============================================================================================ single layers
def _special_values(shape, rng, ties=True):
    """Small integers (many ties), with some -FLT_MAX, -inf, +inf and signed zeros."""
    x = rng.randint(-3, 4, shape).astype(np.float32) if ties else rng.randn(*shape).astype(np.float32)
    flat = x.reshape(-1)
    k = max(1, flat.size // 50)
    for v in (-R.FLT_MAX, -np.inf, np.inf, np.float32(-0.0), np.float32(0.0)):
        flat[rng.choice(flat.size, k, replace=False)] = v
    return x


POOL_CASES = [  # (H, W, kernel (h, w), stride (h, w), pad (h, w))
    ((64, 64), (5, 5), (2, 2), (0, 0)),       # en*_pool1 (last window clipped: ceil rounding)
    ((31, 31), (3, 3), (2, 2), (0, 0)),       # en*_pool2
    ((15, 15), (3, 3), (2, 2), (0, 0)),       # en*_pool3
    ((60, 60), (5, 5), (2, 2), (0, 0)),       # clipped last window, even size
    ((13, 17), (3, 2), (2, 3), (1, 1)),       # rectangular, padded
    ((9, 10), (4, 4), (3, 3), (2, 1)),        # pad 2 (windows starting in the padding)
    ((8, 8), (2, 2), (2, 2), (0, 0)),         # no overlap
    ((7, 9), (3, 3), (1, 1), (1, 1)),         # stride 1
    ((5, 6), (5, 6), (1, 1), (0, 0)),         # window = whole plane
    ((11, 17), (2, 4), (3, 2), (0, 0)),       # stride 2, no pad, odd width: patch 0009's even/odd split
    ((6, 2), (3, 2), (2, 2), (0, 0)),         # stride 2, one output column
]


def _pool_net(tmp_path, shape, kernel, stride, pad, with_mask):
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=list(shape)))
    kw = dict(pool=P.Pooling.MAX, kernel_h=kernel[0], kernel_w=kernel[1], stride_h=stride[0],
              stride_w=stride[1], pad_h=pad[0], pad_w=pad[1])
    if with_mask:
        n.y, n.mask = L.Pooling(n.x, ntop=2, **kw)
    else:
        n.y = L.Pooling(n.x, **kw)
    param = n.to_proto()
    param.force_backward = True
    return _net_from_param(param, tmp_path, "pool")


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask_top", "internal_mask"])
@pytest.mark.parametrize("hw,kernel,stride,pad", POOL_CASES)
def test_max_pooling_matches_reference(tmp_path, hw, kernel, stride, pad, with_mask):
    shape = (3, 4) + hw
    net = _pool_net(tmp_path, shape, kernel, stride, pad, with_mask)
    rng = np.random.RandomState(sum(hw) + kernel[0])
    for ties in (True, False):
        x = _special_values(shape, rng, ties)
        net.blobs["x"].data[...] = x
        net.forward()
        top, mask = R.max_pool_forward(x, kernel, stride, pad)
        assert net.blobs["y"].data.shape == top.shape
        assert same_bits(net.blobs["y"].data, top), first_difference(net.blobs["y"].data, top)
        if with_mask:
            assert same_bits(net.blobs["mask"].data, mask.astype(np.float32))
        if mask.min() < 0:          # a window without a maximum: Caffe's backward is undefined there
            continue
        dtop = rng.randn(*top.shape).astype(np.float32)
        net.blobs["y"].diff[...] = dtop
        net.backward()              # the internal mask (max_idx_) is checked through the backward
        assert same_bits(net.blobs["x"].diff, R.max_pool_backward(dtop, mask, shape))


def test_max_pooling_ties_keep_the_first_maximum_and_nan_never_wins(tmp_path):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0] = [[1, 2, 2, 0], [2, 2, 1, 0], [np.nan, 5, 5, np.nan], [5, 5, -np.inf, -R.FLT_MAX]]
    x2 = np.full((1, 1, 4, 4), np.nan, np.float32)
    x2[0, 0, 3, 3] = -R.FLT_MAX                       # never strictly greater than the start value -FLT_MAX
    net = _pool_net(tmp_path, (2, 1, 4, 4), (2, 2), (2, 2), (0, 0), True)
    net.blobs["x"].data[...] = np.concatenate([x, x2])
    net.forward()
    f = -R.FLT_MAX
    np.testing.assert_array_equal(net.blobs["y"].data, [[[[2, 2], [5, 5]]], [[[f, f], [f, f]]]])
    np.testing.assert_array_equal(net.blobs["mask"].data, [[[[1, 2], [9, 10]]], [[[-1, -1], [-1, -1]]]])


IM2COL_CASES = [  # (C, H, W, kernel (h, w), pad (h, w), stride (h, w), dilation (h, w))
    (1, 64, 64, (5, 5), (2, 2), (1, 1), (1, 1)),      # en*_conv1 / de*_deconv1 (the nets' geometries)
    (32, 31, 31, (3, 3), (1, 1), (1, 1), (1, 1)),     # en*_conv2 / de*_deconv2
    (64, 15, 15, (3, 3), (1, 1), (1, 1), (1, 1)),     # en*_conv3 / de*_deconv3
    (3, 7, 9, (3, 2), (0, 1), (2, 3), (1, 1)),        # rectangular, strided, unequal pads
    (2, 6, 5, (3, 3), (4, 5), (1, 2), (1, 1)),        # pad larger than the kernel: rows and columns all padding
    (2, 9, 11, (3, 3), (2, 3), (2, 1), (2, 3)),       # dilation
    (2, 1, 13, (1, 5), (0, 2), (1, 3), (1, 1)),       # one row
    (1, 4, 4, (4, 4), (0, 0), (1, 1), (1, 1)),        # kernel = image
    (2, 5, 5, (1, 1), (0, 0), (1, 1), (1, 1)),        # 1x1
    (1, 3, 3, (5, 5), (3, 3), (3, 3), (1, 1)),        # kernel larger than the image
]


@pytest.mark.parametrize("c,h,w,kernel,pad,stride,dilation", IM2COL_CASES,
                         ids=["%dx%dx%d_k%s_p%s_s%s_d%s" % (c[:3] + tuple("x".join(map(str, v)) for v in c[3:]))
                              for c in IM2COL_CASES])
def test_im2col_and_col2im_match_reference(tmp_path, c, h, w, kernel, pad, stride, dilation):
    """Caffe's Im2col layer runs im2col_cpu forward and col2im_cpu backward (the functions patch 0007 rewrites and
    Convolution / Deconvolution call): both must equal the numpy references bit for bit."""
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=[2, c, h, w]))
    n.col = L.Im2col(n.x, convolution_param=dict(kernel_h=kernel[0], kernel_w=kernel[1], pad_h=pad[0], pad_w=pad[1],
                                                  stride_h=stride[0], stride_w=stride[1], dilation=list(dilation)))
    param = n.to_proto()
    param.force_backward = True
    net = _net_from_param(param, tmp_path, "im2col")
    rng = np.random.RandomState(h * w + kernel[0])
    x = _special_values((2, c, h, w), rng, ties=False)
    x.reshape(-1)[rng.choice(x.size, max(1, x.size // 50), replace=False)] = np.nan
    dcol = _special_values(net.blobs["col"].data.shape, rng, ties=False)
    net.blobs["x"].data[...] = x
    net.forward()
    net.blobs["col"].diff[...] = dcol
    net.backward()
    for i in range(2):
        col = R.im2col(x[i], kernel, pad, stride, dilation)
        got = net.blobs["col"].data[i].reshape(col.shape)
        assert same_bits(got, col), first_difference(got, col)
        dx = R.col2im(dcol[i], x.shape[1:], kernel, pad, stride, dilation)
        assert same_bits(net.blobs["x"].diff[i], dx), first_difference(net.blobs["x"].diff[i], dx)


def test_im2col_and_col2im_match_reference_on_random_geometries(tmp_path):
    """300 seeded geometries (sizes 1-9, kernels 1-5, pads 0-6, strides 1-3, dilations 1-2, each per axis), one
    Im2col net each: forward and backward equal the numpy references bit for bit."""
    rng = np.random.RandomState(11)
    done = 0
    while done < 300:
        h, w = rng.randint(1, 10, 2)
        kernel, pad = tuple(rng.randint(1, 6, 2)), tuple(rng.randint(0, 7, 2))
        stride, dilation = tuple(rng.randint(1, 4, 2)), tuple(rng.randint(1, 3, 2))
        if any(s + 2 * p < d * (k - 1) + 1 for s, p, d, k in zip((h, w), pad, dilation, kernel)):
            continue                                        # no output position: Caffe refuses the shape
        n = caffe.NetSpec()
        n.x = L.Input(shape=dict(dim=[1, 2, int(h), int(w)]))
        n.col = L.Im2col(n.x, convolution_param=dict(
            kernel_h=kernel[0], kernel_w=kernel[1], pad_h=pad[0], pad_w=pad[1], stride_h=stride[0],
            stride_w=stride[1], dilation=[int(d) for d in dilation]))
        param = n.to_proto()
        param.force_backward = True
        net = _net_from_param(param, tmp_path, "im2col")
        x = rng.randn(2, int(h), int(w)).astype(np.float32)
        dcol = rng.randn(*net.blobs["col"].data.shape).astype(np.float32)
        net.blobs["x"].data[0] = x
        net.forward()
        net.blobs["col"].diff[...] = dcol
        net.backward()
        geometry = (kernel, pad, stride, dilation)
        col = R.im2col(x, *geometry)
        assert same_bits(net.blobs["col"].data[0].reshape(col.shape), col), geometry
        assert same_bits(net.blobs["x"].diff[0], R.col2im(dcol[0], x.shape, *geometry)), geometry
        done += 1


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "separate"])
@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
def test_relu_matches_reference(tmp_path, slope, in_place):
    shape = (2, 3, 17, 19)                              # count not a multiple of the vector width
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=list(shape)))
    n.y = L.ReLU(n.x, negative_slope=slope, in_place=in_place)
    param = n.to_proto()
    param.force_backward = True
    net = _net_from_param(param, tmp_path, "relu")
    top = "x" if in_place else "y"
    rng = np.random.RandomState(3)
    x = rng.randn(*shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[:8] = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45]   # NaN, infinities, zeros, denormals
    net.blobs["x"].data[...] = x
    net.forward()
    y = R.relu_forward(x, slope)
    assert same_bits(net.blobs[top].data, y), first_difference(net.blobs[top].data, y)
    dtop = rng.randn(*shape).astype(np.float32)
    dtop.reshape(-1)[8:12] = [np.inf, np.nan, 0.0, -0.0]
    net.blobs[top].diff[...] = dtop
    net.backward()
    # Caffe's backward reads the bottom data, which is the top (ReLU output) when in place
    dx = R.relu_backward(y if in_place else x, dtop, slope)
    assert same_bits(net.blobs["x"].diff, dx), first_difference(net.blobs["x"].diff, dx)


BN_SHAPES = [(4, 3, 7, 7), (2, 5, 31, 31), (3, 4, 1, 1), (1, 6, 8, 9)]


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "separate"])
@pytest.mark.parametrize("global_stats", [False, True], ids=["batch_stats", "global_stats"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["x".join(map(str, s)) for s in BN_SHAPES])
def test_batch_norm_matches_reference(tmp_path, shape, global_stats, in_place):
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=list(shape)))
    n.y = L.BatchNorm(n.x, use_global_stats=global_stats, moving_average_fraction=0.9, eps=1e-5, in_place=in_place)
    param = n.to_proto()
    param.force_backward = True
    net = _net_from_param(param, tmp_path, "bn")
    top = "x" if in_place else "y"
    rng = np.random.RandomState(sum(shape))
    c = shape[1]
    stats = [(rng.rand(c) * 3).astype(np.float32), (rng.rand(c) * 2 + 0.1).astype(np.float32),
             np.array([3.7 if global_stats else 0.0], np.float32)]
    for b, s in zip(net.params["y"], stats):
        b.data[...] = s
    for step in range(2):                      # twice: the moving averages build on the first update
        x = (rng.randn(*shape) * rng.rand(1, c, 1, 1) * 4 + rng.randn(1, c, 1, 1) * 3).astype(np.float32)
        x[:, 0] = 1.5                          # a constant channel: variance 0, sd = sqrt(eps)
        net.blobs["x"].data[...] = x
        net.forward()
        y, sd = R.batch_norm_forward(x, stats, global_stats, 0.9, 1e-5)
        assert same_bits(net.blobs[top].data, y), first_difference(net.blobs[top].data, y)
        for i, (b, s) in enumerate(zip(net.params["y"], stats)):
            assert same_bits(b.data, s), "blob %d: %s" % (i, first_difference(b.data, s))
        dtop = rng.randn(*shape).astype(np.float32)
        net.blobs[top].diff[...] = dtop
        net.backward()
        dx = R.batch_norm_backward(dtop, y, sd, global_stats)
        assert same_bits(net.blobs["x"].diff, dx), first_difference(net.blobs["x"].diff, dx)
    assert np.abs(dx).max() > 0 and (global_stats or stats[2][0] > 1)


SCALE_SHAPES = [(4, 3, 7, 7), (1, 5, 31, 31), (3, 4, 1, 1)]


@pytest.mark.parametrize("frozen", [False, True], ids=["learned", "frozen"])
@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "separate"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", SCALE_SHAPES, ids=["x".join(map(str, s)) for s in SCALE_SHAPES])
def test_scale_matches_reference(tmp_path, shape, bias, in_place, frozen):
    # x -> learned Bias (its parameter makes the Scale's bottom need a gradient) -> Scale -> a loss layer that
    # injects the chosen top diff; no force_backward (it would also force the gradients of frozen parameters)
    n = caffe.NetSpec()
    n.x0 = L.Input(shape=dict(dim=list(shape)))
    n.x = L.Bias(n.x0, param=dict(lr_mult=1), filler=dict(type="constant", value=0))
    lr = 0 if frozen else 1
    n.y = L.Scale(n.x, bias_term=bias, in_place=in_place, param=[dict(lr_mult=lr)] * (2 if bias else 1))
    n.inject = L.Python(n.x if in_place else n.y, module=R.__name__, layer="InjectGradient", loss_weight=1)
    net = _net_from_param(n.to_proto(), tmp_path, "scale")
    top = "x" if in_place else "y"
    rng = np.random.RandomState(sum(shape) + 2 * bias + in_place)
    c = shape[1]
    scale = rng.randn(c).astype(np.float32)
    scale[0], scale[1] = 0.0, 1.0                       # sscal's special cases
    b = rng.randn(c).astype(np.float32)
    b[-1] = -0.0
    x = rng.randn(*shape).astype(np.float32)
    x.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-45]
    x[:, 0].reshape(-1)[:3] = [np.nan, -np.inf, -2.0]   # in the plane scaled by 0
    net.params["y"][0].data[...] = scale
    diffs = [rng.randn(c).astype(np.float32) for _ in range(2)]     # Caffe accumulates into parameter diffs
    if bias:
        net.params["y"][1].data[...] = b
    for i, blob in enumerate(net.params["y"]):
        blob.diff[...] = diffs[i]
    net.blobs["x0"].data[...] = x
    net.forward()
    x = x + np.float32(0)                               # what the Bias layer (bias 0) passes on: -0 -> +0
    y = R.scale_forward(x, scale, b if bias else None)
    assert same_bits(net.blobs[top].data, y), first_difference(net.blobs[top].data, y)
    dtop = rng.randn(*shape).astype(np.float32)
    dtop.reshape(-1)[6:9] = [-0.0, np.inf, 0.0]
    net.layers[list(net._layer_names).index("inject")].dtop = dtop
    net.backward()
    sd, bd = diffs[0].copy(), diffs[1].copy()
    with np.errstate(invalid="ignore", over="ignore"):
        dx = R.scale_backward(dtop, x, scale, sd, bd if bias else None, need_scale=not frozen, need_bias=not frozen)
    assert same_bits(net.blobs["x"].diff, dx), first_difference(net.blobs["x"].diff, dx)
    assert same_bits(net.params["y"][0].diff, sd), first_difference(net.params["y"][0].diff, sd)
    if bias:
        assert same_bits(net.params["y"][1].diff, bd), first_difference(net.params["y"][1].diff, bd)
    assert frozen == same_bits(sd, diffs[0])            # not vacuous: a learned scale's diff moved


# ============================================================================================ fused BatchNorm-Scale-ReLU
# Patch 0008 runs BatchNorm -> Scale (bias) -> ReLU in place on one blob as one CPU block (Net::FusedBlockSize);
# CAFFE_FUSE_BN_SCALE_RELU=0 at net construction keeps Caffe's three layers, which the tests above prove
# bit-identical to the references, so they are the reference here.  Forward: top data and BatchNorm's running
# statistics bit-identical.  Backward: the fused block sums in its own order (float lanes per plane, double across
# planes) where Caffe calls BLAS gemv, so gradients agree to FUSED_RTOL of the gradient's scale (below).
FUSED_RTOL = 2e-6
FUSED_SUM_RTOL = 1e-6
# the blocks of the nets at batch 4: (channels, size) after en*_conv1..3 and de*_deconv3..1
FUSED_SHAPES = [(32, 64), (64, 31), (96, 15), (64, 15), (32, 31), (1, 64)]


def _bsr_net(tmp_path, shape, global_stats, slope, frozen, fused, monkeypatch):
    """x0 -> Bias (learned: the block's bottom needs a gradient) -> BatchNorm -> Scale (bias) -> ReLU, in place on
    one blob, -> InjectGradient; `fused` False builds it with CAFFE_FUSE_BN_SCALE_RELU=0."""
    n = caffe.NetSpec()
    n.x0 = L.Input(shape=dict(dim=list(shape)))
    n.x = L.Bias(n.x0, param=dict(lr_mult=1), filler=dict(type="constant", value=0))
    n.bn = L.BatchNorm(n.x, in_place=True, use_global_stats=global_stats, moving_average_fraction=0.9, eps=1e-5,
                       param=[dict(lr_mult=0)] * 3)
    lr = 0 if frozen else 1
    n.sc = L.Scale(n.x, in_place=True, bias_term=True, param=[dict(lr_mult=lr)] * 2)
    n.relu = L.ReLU(n.x, in_place=True, negative_slope=slope)
    n.inject = L.Python(n.x, module=R.__name__, layer="InjectGradient", loss_weight=1)
    monkeypatch.setenv("CAFFE_FUSE_BN_SCALE_RELU", "1" if fused else "0")
    net = _net_from_param(n.to_proto(), tmp_path, "bsr_%d" % fused)
    monkeypatch.delenv("CAFFE_FUSE_BN_SCALE_RELU")
    return net


def _bsr_inputs(shape, rng):
    c = shape[1]
    x = (rng.randn(*shape) * rng.rand(1, c, 1, 1) * 4 + rng.randn(1, c, 1, 1) * 3).astype(np.float32)
    if c > 2:
        x[:, 0] = 1.5                                   # a constant channel: variance 0
    gamma = rng.randn(c).astype(np.float32)
    gamma[:2] = [0.0, 1.0][:c] if c > 1 else [1.0]      # sscal's special factors
    beta = rng.randn(c).astype(np.float32)
    stats = [(rng.rand(c) * 3).astype(np.float32), (rng.rand(c) * 2 + 0.1).astype(np.float32),
             np.array([3.7], np.float32)]
    return x, gamma, beta, stats


def _close(a, b, what):
    """|a - b| <= FUSED_RTOL * max|b| (elementwise, the scale of the whole gradient)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    tol = FUSED_RTOL * max(np.abs(b).max(), 1e-30)
    err = np.abs(a - b).max()
    assert err <= tol, "%s: max |difference| %.3g > %.3g (%.3g of max |value|)" % (what, err, tol, err / tol *
                                                                                   FUSED_RTOL)


@pytest.mark.parametrize("frozen", [False, True], ids=["learned", "frozen"])
@pytest.mark.parametrize("global_stats,slope", [(False, 0.0), (True, 0.0), (False, 0.1)],
                         ids=["batch_stats", "global_stats", "leaky"])
@pytest.mark.parametrize("c,size", FUSED_SHAPES, ids=["%dx%d" % s for s in FUSED_SHAPES])
def test_fused_batchnorm_scale_relu_matches_caffe_layers(tmp_path, monkeypatch, c, size, global_stats, slope,
                                                         frozen):
    shape = (BATCH, c, size, size)
    nets = [_bsr_net(tmp_path, shape, global_stats, slope, frozen, fused, monkeypatch) for fused in (False, True)]
    rng = np.random.RandomState(c + size)
    x, gamma, beta, stats = _bsr_inputs(shape, rng)
    diffs = [rng.randn(c).astype(np.float32) for _ in range(2)]     # Caffe accumulates into parameter diffs
    for net in nets:
        for b, s in zip(net.params["bn"], stats):
            b.data[...] = s
        net.params["sc"][0].data[...] = gamma
        net.params["sc"][1].data[...] = beta
    for step in range(2):                     # twice: the moving averages build on the first update
        dtop = rng.randn(*shape).astype(np.float32)
        for net in nets:
            net.blobs["x0"].data[...] = x + step
            for blob, d in zip(net.params["sc"], diffs):
                blob.diff[...] = d
            net.params["x"][0].diff[...] = 0
            net.forward()
            net.layers[list(net._layer_names).index("inject")].dtop = dtop
            net.backward()
        ref, fused = nets
        assert same_bits(fused.blobs["x"].data, ref.blobs["x"].data), first_difference(fused.blobs["x"].data,
                                                                                      ref.blobs["x"].data)
        for i in range(3):
            assert same_bits(fused.params["bn"][i].data, ref.params["bn"][i].data), "running statistic %d" % i
        _close(fused.blobs["x"].diff, ref.blobs["x"].diff, "bottom diff")
        # the parameter gradients are sums over batch and plane: compared on the scale of the sum of |terms|
        r = ref.blobs["x"].data
        dz = dtop * np.where(r > 0, 1.0, slope)
        if global_stats:
            x_norm = R.batch_norm_forward(x + step, [s.copy() for s in stats], True, 0.9, 1e-5)[0]
        else:
            xb = (x + step).astype(np.float64)
            x_norm = (xb - xb.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(xb.var(axis=(0, 2, 3), keepdims=True)
                                                                              + 1e-5)
        terms = {"bias": np.abs(dz).sum(axis=(0, 2, 3)), "scale": np.abs(dz * x_norm).sum(axis=(0, 2, 3))}
        for i, name in enumerate(("scale", "bias")):
            got, want = fused.params["sc"][i].diff - diffs[i], ref.params["sc"][i].diff - diffs[i]
            err = np.abs(got.astype(np.float64) - want)
            assert (err <= FUSED_SUM_RTOL * terms[name] + 1e-30).all(), "%s diff: %.3g of the sum of |terms|" % (
                name, (err / np.maximum(terms[name], 1e-30)).max())
            assert frozen == same_bits(ref.params["sc"][i].diff, diffs[i])
            assert frozen == same_bits(fused.params["sc"][i].diff, diffs[i])
    assert np.abs(ref.blobs["x"].diff).max() > 0 and (ref.blobs["x"].data <= 0).mean() > 0.02    # ReLU at work


def test_fused_block_runs_layer_by_layer_inside_partial_passes(tmp_path, monkeypatch):
    """A forward that stops inside a block (gcnet.bnstats reads the BatchNorm output before the Scale) and a
    backward that stops inside it run the layers one by one: bit-identical to Caffe's layers.  The partial backward
    after a fused forward reads the Scale's input where the fused forward left it (the BatchNorm's x_norm_)."""
    shape = (BATCH, 32, 31, 31)
    nets = [_bsr_net(tmp_path, shape, False, 0.0, False, fused, monkeypatch) for fused in (False, True)]
    rng = np.random.RandomState(5)
    x, gamma, beta, _ = _bsr_inputs(shape, rng)
    dtop = rng.randn(*shape).astype(np.float32)
    for net in nets:
        net.params["sc"][0].data[...] = gamma
        net.params["sc"][1].data[...] = beta
        net.blobs["x0"].data[...] = x
        net.forward(end="bn")
    ref, fused = nets
    assert same_bits(fused.blobs["x"].data, ref.blobs["x"].data)        # the BatchNorm output, not the ReLU's
    for net in nets:
        net.forward()                          # the whole forward: fused in `fused`
        net.blobs["x"].diff[...] = dtop
        for blob in net.params["sc"]:
            blob.diff[...] = 0
        net.backward(start="relu", end="sc")   # ReLU and Scale only
    for name in ("x",):
        assert same_bits(fused.blobs[name].data, ref.blobs[name].data)
        assert same_bits(fused.blobs[name].diff, ref.blobs[name].diff), first_difference(fused.blobs[name].diff,
                                                                                         ref.blobs[name].diff)
    for i in range(2):
        assert same_bits(fused.params["sc"][i].diff, ref.params["sc"][i].diff)
    assert np.abs(ref.params["sc"][0].diff).max() > 0
