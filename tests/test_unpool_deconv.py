"""Patch 0012: UnpoolDeconvolution, each decoder's 5x5 MaxUnpool + Deconvolution as one Caffe layer that builds the
unpooled input one image at a time (NetOptions.fused_unpool, docs/choices.md "0012").  It must change nothing but
the time: against the MaxUnpool Python layer (python_layers/gcnet_layers.py) followed by Caffe's Deconvolution,

* one layer on small odd shapes, masks with repeated positions (summed) and entries outside the plane (placing
  nothing, no gradient): top, bottom diff, weight and bias diffs bit for bit;
* whole nets as training builds them (encdec, gcnet_s1r1): every blob's data and diff and every parameter diff bit
  for bit; the fused nets keep the 3x3 decoder layers (Winograd) as MaxUnpool + Deconvolution.

Run:  source tools/env.sh && python -m pytest -q tests/test_unpool_deconv.py
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from gcnet.config import NetOptions

try:
    import caffe
    from caffe.proto import caffe_pb2
    from gcnet import nets
except ImportError:
    caffe = caffe_pb2 = nets = None

from test_cpu_kernels import _net_from_param, _with_input_layer, first_difference, same_bits, step_pair

pytestmark = pytest.mark.usefixtures("caffe")


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()


def _layer_param(fused, shape, out_hw, kernel, pad, n_out):
    """Input x (pooled values) and mask -> the fused layer, or MaxUnpool + Deconvolution; force_backward."""
    conv = dict(num_output=n_out, kernel_size=[kernel], pad=[pad])
    p = caffe_pb2.NetParameter(force_backward=True)
    inp = p.layer.add(name="in", type="Input", top=["x", "mask"])
    inp.input_param.shape.add(dim=list(shape))
    inp.input_param.shape.add(dim=list(shape))
    if fused:
        l = p.layer.add(name="y", type="UnpoolDeconvolution", bottom=["x", "mask"], top=["y"])
        l.unpool_param.out_h, l.unpool_param.out_w = out_hw
        l.propagate_down.extend([True, False])
    else:
        u = p.layer.add(name="u", type="Python", bottom=["x", "mask"], top=["u"])
        u.python_param.module, u.python_param.layer = nets.PY_MODULE, "MaxUnpool"
        u.python_param.param_str = json.dumps({"out_h": out_hw[0], "out_w": out_hw[1]})
        u.propagate_down.extend([True, False])
        l = p.layer.add(name="y", type="Deconvolution", bottom=["u"], top=["y"])
    l.convolution_param.MergeFrom(caffe_pb2.ConvolutionParameter(**conv))
    l.convolution_param.weight_filler.type = "gaussian"
    l.convolution_param.bias_filler.type = "gaussian"
    return p


def _layer_net(tmp_path, fused, *geometry):
    return _net_from_param(_layer_param(fused, *geometry), tmp_path, "layer_%d" % fused)


@pytest.mark.parametrize("shape,out_hw,kernel,pad,n_out", [
    ((2, 3, 4, 4), (9, 8), 5, 2, 2),       # the nets' geometry on a small plane
    ((3, 2, 5, 3), (10, 7), 3, 1, 4),      # 3x3 pad 1 (a plain Deconvolution would take Winograd)
    ((1, 4, 2, 2), (4, 5), 2, 0, 1),       # output larger than the unpooled plane
], ids=["5x5", "3x3", "2x2"])
def test_layer_matches_maxunpool_then_deconvolution(tmp_path, monkeypatch, shape, out_hw, kernel, pad, n_out):
    fused = _layer_net(tmp_path, True, shape, out_hw, kernel, pad, n_out)
    monkeypatch.setenv("CAFFE_WINOGRAD", "0")           # the fused layer's path (im2col)
    ref = _layer_net(tmp_path, False, shape, out_hw, kernel, pad, n_out)
    for b, rb in zip(fused.params["y"], ref.params["y"]):
        rb.data[...] = b.data
    rng = np.random.RandomState(5)
    x = rng.randn(*shape).astype(np.float32)
    plane = out_hw[0] * out_hw[1]
    mask = rng.randint(0, plane, shape).astype(np.float32)
    mask.flat[1] = mask.flat[0]                          # a shared argmax: the two values are summed
    dy = None
    out = []
    for net in (fused, ref):
        net.blobs["x"].data[...] = x
        net.blobs["mask"].data[...] = mask
        net.forward()                                    # (MaxUnpool checks the first mask after a reshape)
        # outside the plane (Caffe's -1 for a window without a maximum): nothing placed, no gradient
        net.blobs["mask"].data.flat[2:4] = -1, plane
        net.forward()
        dy = rng.randn(*net.blobs["y"].data.shape).astype(np.float32) if dy is None else dy
        net.blobs["y"].diff[...] = dy
        net.backward()
        out.append([net.blobs["y"].data.copy(), net.blobs["x"].diff.copy()] + [b.diff.copy() for b in net.params["y"]])
    for what, a, b in zip(("top", "x diff", "weight diff", "bias diff"), *out):
        assert same_bits(a, b), "%s: %s" % (what, first_difference(a, b))
    assert out[0][1].flat[2] == 0 and out[0][1].flat[3] == 0
    assert out[0][1].flat[0] == out[0][1].flat[1] != 0   # both cells of a shared argmax get its gradient


@pytest.mark.parametrize("bad", [0.5, -1.0, 72.0], ids=["fraction", "minus1", "plane"])
def test_a_bad_first_mask_stops_with_a_clear_error(tmp_path, bad):
    """As MaxUnpool, the first forward after a reshape checks the whole mask (a miswired mask is an error, not a
    silently different unpooling); Caffe reports it with LOG(FATAL), which aborts the process: run in a child."""
    path = tmp_path / "net.prototxt"
    path.write_text(str(_layer_param(True, (1, 2, 3, 3), (9, 8), 5, 2, 1)))
    code = ("import caffe, numpy as np; net = caffe.Net(%r, caffe.TEST); net.blobs['mask'].data[...] = 3; "
            "net.blobs['mask'].data.flat[4] = %r; net.forward(); print('no error')" % (str(path), bad))
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert proc.returncode != 0 and "no error" not in proc.stdout
    assert "mask values must be integers in [0, out_h*out_w) = [0, 72)" in proc.stderr
    assert "got %g at index 4" % bad in proc.stderr


@pytest.mark.parametrize("model", ["encdec", "gcnet_s1r1"])
def test_fused_net_matches_unfused(model, tmp_path):
    batch = 3
    built = {}
    for fused in (True, False):
        opts = NetOptions(n_classes=7, batch_size=batch, test_batch_size=batch, n_identities=5, mirror=False,
                          fused_unpool=fused)
        param = _with_input_layer(nets.build_net(model, opts), batch, opts.crop)
        types = [l.type for l in param.layer]
        n_decoders = types.count("EuclideanLoss")
        # only the 5x5 layers fuse; the 3x3 ones stay MaxUnpool (Python) + Deconvolution (Winograd)
        assert types.count("UnpoolDeconvolution") == (n_decoders if fused else 0)
        n_unpool = sum(l.type == "Python" and l.python_param.layer == "MaxUnpool" for l in param.layer)
        assert n_unpool == (2 if fused else 3) * n_decoders
        caffe.set_random_seed(1)
        built[fused] = (_net_from_param(param, tmp_path, "net_%d" % fused), param)
    (net, fparam), (ref, rparam) = built[True], built[False]
    unpools = [l.name for l in rparam.layer if l.type == "Python" and l.python_param.layer == "MaxUnpool"]
    assert len(unpools) == 3 * sum(l.type == "UnpoolDeconvolution" for l in fparam.layer)
    assert set(ref.blobs) - set(net.blobs) == {n for n in unpools if n.endswith("_unpool1")}
    step_pair(net, ref, 5)
    for name in net.blobs:
        for kind in ("data", "diff"):
            a, b = getattr(net.blobs[name], kind), getattr(ref.blobs[name], kind)
            assert same_bits(a, b), "blob %s %s: %s" % (name, kind, first_difference(a, b))
    for name, blobs in net.params.items():
        for i, (b, rb) in enumerate(zip(blobs, ref.params[name])):
            assert same_bits(b.diff, rb.diff), "param %s[%d]: %s" % (name, i, first_difference(b.diff, rb.diff))
    assert np.abs(net.params["de1r_deconv1"][0].diff).max() > 0     # the fused layer's gradients ran


def test_only_layers_outside_winograd_fuse():
    assert nets.winograd_applies(3, 1) and not nets.winograd_applies(5, 2) and not nets.winograd_applies(3, 0)
    param = nets.build_net("gcnet_s0r0", NetOptions())
    fused = [l for l in param.layer if l.type == "UnpoolDeconvolution"]
    assert [l.name for l in fused] == ["de1r_deconv1"]
    assert (fused[0].unpool_param.out_h, fused[0].unpool_param.out_w) == (64, 64)
    assert list(fused[0].bottom) == ["de1r_deconv2", "en1_pool1_mask"]
    off = nets.build_net("gcnet_s0r0", NetOptions(fused_unpool=False))
    assert not any(l.type == "UnpoolDeconvolution" for l in off.layer)
    assert [l.type for l in off.layer if l.name == "de1r_deconv1"] == ["Deconvolution"]
