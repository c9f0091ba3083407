"""Patch 0010: Convolution and Deconvolution layers with a 3x3 kernel, stride 1, pad 1, dilation 1 and one group run
Winograd F(4x4, 3x3) on the CPU (caffe/util/winograd.hpp); CAFFE_WINOGRAD=0 at net construction keeps Caffe's
im2col + GEMM, which tests/test_cpu_kernels.py proves bit-identical to Caffe 1.0.  Winograd computes the same
function in a different order of float operations, so it is checked within a stated tolerance:

* single layers on the nets' 3x3 shapes (en*_conv2/3, de*_deconv3/2) and on small odd shapes (partial tiles, one
  pixel, a batch that is not a multiple of the 4-image chunk), forward, backward data, weight and bias gradients,
  against a float64 numpy reference: within WINOGRAD_RTOL of the result's largest |value| (Caffe's im2col path,
  measured beside it, is the yardstick: its error is printed on failure);
* the gate: every other geometry (5x5, stride 2, pad 0, group 2, dilation 2) and CAFFE_WINOGRAD=0 run the old path
  (bit-identical with the variable set or not), and the 3x3 layers do not (not bit-identical: the new path ran);
* whole nets (cnn, gcnet_s1r1): masks, every blob's data and diff and every parameter diff within NET_FLIP_RTOL,
  which allows for MAX pooling argmax flips at near-ties (see the test).

Run:  source tools/env.sh && python -m pytest -q tests/test_winograd.py
"""
import numpy as np
import pytest

from gcnet.config import NetOptions

try:
    import caffe
    from caffe import layers as L
    from gcnet import nets
except ImportError:
    caffe = L = nets = None

from test_cpu_kernels import _net_from_param, _with_input_layer, first_difference, same_bits, step_pair

pytestmark = pytest.mark.usefixtures("caffe")

# measured (LAYER_CASES, AVX2 clone): Winograd 0.2-8.1e-6 of max |value| against float64 (the weight gradient of
# en*_conv2 the worst), Caffe's im2col + GEMM 0.2-7.9e-7; whole nets at most 1.1e-5 of a blob's scale (gcnet_s1r1's
# fc2, after BatchNorm and three encoders)
WINOGRAD_RTOL = 3e-5
NET_FLIP_RTOL = 2e-2

# (layer type, batch, input channels, output channels, size): the nets' 3x3 layers, then odd cases
LAYER_CASES = [
    ("Convolution", 4, 32, 64, 31),      # en*_conv2
    ("Convolution", 4, 64, 96, 15),      # en*_conv3
    ("Deconvolution", 4, 96, 64, 15),    # de*_deconv3
    ("Deconvolution", 4, 64, 32, 31),    # de*_deconv2
    ("Convolution", 5, 3, 5, 7),         # a second chunk of 1 image, partial tiles
    ("Deconvolution", 3, 2, 3, 6),
    ("Convolution", 2, 1, 1, 1),         # one pixel
    ("Deconvolution", 1, 4, 2, 2),
]


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()


def _layer_net(tmp_path, monkeypatch, kind, shape, n_out, winograd, **conv):
    """x -> Convolution / Deconvolution (weights gaussian, bias 0.1) with force_backward; built with
    CAFFE_WINOGRAD=1 or 0.  `conv` overrides the 3x3 / pad 1 / stride 1 geometry (None leaves a field out)."""
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=list(shape)))
    geometry = dict(kernel_size=3, pad=1, stride=1)
    geometry.update(conv)
    geometry = {k: v for k, v in geometry.items() if v is not None}     # None: leave the field out
    n.y = getattr(L, kind)(n.x, convolution_param=dict(
        num_output=n_out, weight_filler=dict(type="gaussian", std=0.1),
        bias_filler=dict(type="constant", value=0.1), **geometry))
    param = n.to_proto()
    param.force_backward = True
    monkeypatch.setenv("CAFFE_WINOGRAD", "1" if winograd else "0")
    net = _net_from_param(param, tmp_path, "%s_%d" % (kind, winograd))
    monkeypatch.delenv("CAFFE_WINOGRAD")
    return net


def _corr(x, w):
    """float64 cross-correlation, 3x3, pad 1, stride 1: x [N][C][H][W], w [K][C][3][3] -> [N][K][H][W]."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))     # N C H W 3 3
    return np.einsum("nchwrs,kcrs->nkhw", win, w)


def _corr_weight_grad(x, dy):
    """d corr(x, w) / dw contracted with dy: [K][C][3][3]."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("nchwrs,nkhw->kcrs", win, dy)


def _flip_t(w):
    return w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)


def _reference(kind, x, w, b, dy):
    """top, bottom diff, weight diff, bias diff in float64.  Deconvolution = correlation with the kernel rotated
    and its channel axes swapped (Caffe's blob [bottom channels][num_output][3][3])."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    if kind == "Convolution":
        y = _corr(x, w)
        dx = _corr(dy, _flip_t(w))
        dw = _corr_weight_grad(x, dy)
    else:
        wc = _flip_t(w)                       # [num_output][bottom channels]
        y = _corr(x, wc)
        dx = _corr(dy, _flip_t(wc))
        dw = _flip_t(_corr_weight_grad(x, dy))
    return y + np.asarray(b, np.float64)[None, :, None, None], dx, dw, dy.sum(axis=(0, 2, 3))


def _run(net, x, dy):
    net.blobs["x"].data[...] = x
    net.forward()
    net.blobs["y"].diff[...] = dy
    for p in net.params["y"]:
        p.diff[...] = 0
    net.backward()
    return [net.blobs["y"].data.copy(), net.blobs["x"].diff.copy()] + [p.diff.copy() for p in net.params["y"]]


def _rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30)


@pytest.mark.parametrize("kind,n,c_in,c_out,size", LAYER_CASES,
                         ids=["%s-%dx%d-%d-%d" % (c[0][:6], c[2], c[3], c[4], c[1]) for c in LAYER_CASES])
def test_winograd_layer_matches_float64_reference(tmp_path, monkeypatch, kind, n, c_in, c_out, size):
    shape = (n, c_in, size, size)
    wino = _layer_net(tmp_path, monkeypatch, kind, shape, c_out, True)
    old = _layer_net(tmp_path, monkeypatch, kind, shape, c_out, False)
    for p, q in zip(wino.params["y"], old.params["y"]):
        q.data[...] = p.data
    rng = np.random.RandomState(size + c_in)
    x = rng.randn(*shape).astype(np.float32)
    dy = rng.randn(*wino.blobs["y"].data.shape).astype(np.float32)
    got, base = _run(wino, x, dy), _run(old, x, dy)
    ref = _reference(kind, x, wino.params["y"][0].data, wino.params["y"][1].data, dy)
    for what, g, o, r in zip(("top", "bottom diff", "weight diff", "bias diff"), got, base, ref):
        err = _rel_err(g, r)
        assert err <= WINOGRAD_RTOL, "%s: Winograd %.3g of max |value| (im2col + GEMM %.3g)" % (what, err,
                                                                                              _rel_err(o, r))
    if size > 1:                                                 # not vacuous: the Winograd path ran
        assert not same_bits(got[0], base[0])


GATE_CASES = [dict(kernel_size=5, pad=2), dict(stride=2), dict(pad=0), dict(group=2), dict(dilation=2, pad=2),
              dict(kernel_h=3, kernel_w=5, pad_h=1, pad_w=2, kernel_size=None, pad=None)]


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("conv", GATE_CASES, ids=["5x5", "stride2", "pad0", "group2", "dilation2", "3x5"])
def test_other_geometries_keep_im2col(tmp_path, monkeypatch, kind, conv):
    shape = (3, 4, 11, 9)
    a, b = [_layer_net(tmp_path, monkeypatch, kind, shape, 4, winograd, **conv) for winograd in (True, False)]
    for p, q in zip(a.params["y"], b.params["y"]):
        q.data[...] = p.data
    rng = np.random.RandomState(3)
    x = rng.randn(*shape).astype(np.float32)
    dy = rng.randn(*a.blobs["y"].data.shape).astype(np.float32)
    for u, v in zip(_run(a, x, dy), _run(b, x, dy)):
        assert same_bits(u, v), first_difference(u, v)


@pytest.mark.parametrize("model", ["cnn", "gcnet_s1r1"])
def test_net_with_winograd_matches_im2col(model, tmp_path, monkeypatch):
    """The whole net as training builds it, with and without Winograd.  A 1e-6 difference can move the argmax of a
    MAX pooling window whose two largest values nearly tie (the same effect as ONNX's near-ties, issue 24): that
    window's gradient then goes to another input, and an unpooling puts its value elsewhere, so a flip changes a few
    elements by their whole value and, upstream, every diff a little.  Measured (gcnet_s1r1, batch 4): with one
    OpenBLAS thread no flip, every blob within 1.1e-5 of its scale; with two threads 2 flipped positions of 123008 in
    en2r_pool1's mask, blob data within 1.1e-3 and diffs within 4.6e-3 in norm.  So: masks the same on all but 1e-4
    of positions; every blob's data and diff, and every layer's parameter diffs, within NET_FLIP_RTOL in norm (a
    wrong transform is off by O(1); the single-layer tests above hold the tight tolerance)."""
    batch = 4
    opts = NetOptions(n_classes=7, batch_size=batch, test_batch_size=batch, n_identities=5, mirror=False)
    param = _with_input_layer(nets.build_net(model, opts), batch, opts.crop)
    built = []
    for winograd in (True, False):
        caffe.set_random_seed(1)
        monkeypatch.setenv("CAFFE_WINOGRAD", "1" if winograd else "0")
        built.append(_net_from_param(param, tmp_path, "net_%d" % winograd))
        monkeypatch.delenv("CAFFE_WINOGRAD")
    net, ref = built
    step_pair(net, ref, 7)

    def norm_err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)

    differ = 0
    for name in net.blobs:
        a, b = net.blobs[name].data, ref.blobs[name].data
        differ += not same_bits(a, b)
        if name.endswith("_mask"):
            flips = int((a != b).sum())
            assert flips <= 1e-4 * a.size, "%s: %d of %d argmax positions differ" % (name, flips, a.size)
            continue
        for kind in ("data", "diff"):
            err = norm_err(getattr(net.blobs[name], kind), getattr(ref.blobs[name], kind))
            assert err <= NET_FLIP_RTOL, "blob %s %s: %.3g in norm" % (name, kind, err)
    for name, blobs in net.params.items():
        scale = max(np.abs(rb.diff).max() for rb in ref.params[name])
        for i, (b, rb) in enumerate(zip(blobs, ref.params[name])):
            err = np.abs(b.diff.astype(np.float64) - rb.diff).max()
            assert err <= NET_FLIP_RTOL * scale, "param %s[%d] diff: %.3g of the scale" % (name, i, err / scale)
    n_3x3 = sum(l.type in ("Convolution", "Deconvolution") and l.convolution_param.kernel_size[:1] == [3]
                for l in param.layer)
    assert n_3x3 >= 2 and differ > 0                    # the nets have 3x3 layers and Winograd ran
