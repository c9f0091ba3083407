"""gcnet.caffe_io: the Datum codec (no Caffe) and reading a .caffemodel."""
import numpy as np
import pytest

from gcnet import caffe_io


def test_datum_codec_roundtrip():
    a = np.random.RandomState(0).randint(0, 256, (2, 5, 3)).astype(np.uint8)
    for label in (0, 6, 300, -1):
        b, lab = caffe_io.decode_datum(caffe_io.encode_datum(a, label))
        assert lab == label and b.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.usefixtures("caffe")
def test_read_caffemodel_errors(tmp_path):
    with pytest.raises(caffe_io.WeightsError, match="cannot read"):
        caffe_io.read_caffemodel(str(tmp_path / "missing.caffemodel"))


def test_read_caffemodel_matches_pycaffe(caffe, tmp_path):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=[1, 2, 5, 5]))
    n.conv = L.Convolution(n.x, num_output=3, kernel_size=3, weight_filler=dict(type="gaussian", std=1))
    n.bn = L.BatchNorm(n.conv)
    (tmp_path / "n.prototxt").write_text(str(n.to_proto()))
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
    net.params["conv"][1].data[...] = np.arange(3)
    net.save(str(tmp_path / "w.caffemodel"))
    w = caffe_io.read_caffemodel(str(tmp_path / "w.caffemodel"))
    assert set(w) == {"conv", "bn"} and [a.shape for a in w["bn"]] == [(3,), (3,), (1,)]
    for name in w:
        for a, b in zip(w[name], net.params[name]):
            assert a.dtype == np.float32 and np.array_equal(a, b.data)
    p = caffe_io.load_net_param(str(tmp_path / "w.caffemodel"))
    p.layer[1].blobs[1].data[0] = 42.0
    caffe_io.save_net_param(p, str(tmp_path / "v.caffemodel"))
    assert caffe_io.read_caffemodel(str(tmp_path / "v.caffemodel"))["conv"][1].tolist() == [42.0, 1.0, 2.0]
    (tmp_path / "bad.caffemodel").write_bytes(b"\xff\xff\xff")
    with pytest.raises(caffe_io.WeightsError, match="not a Caffe .caffemodel"):
        caffe_io.read_caffemodel(str(tmp_path / "bad.caffemodel"))


def test_weights_that_do_not_fit_the_net_are_refused(caffe, tmp_path):
    """gcnet.inference.load_net (every load of trained weights) refuses, naming the file and the first layer,
    weights that Caffe would load half (a missing layer keeps its random initialisation), abort on (a shape), or
    accept whole though they belong to another net (cnn's layers are a subset of a GCNet's); a damaged file is
    refused before Caffe reads it.  Shared params (en2r_* share en2_*'s) are satisfied by their owner."""
    from gcnet.config import NetOptions
    from gcnet.inference import ModelError, load_net
    from gcnet.nets import build_net, net_text
    paths = {}
    for model in ("cnn", "gcnet_s1r1"):
        p = tmp_path / ("%s.prototxt" % model)
        p.write_text(net_text(build_net(model, NetOptions(), "deploy")))
        caffe.Net(str(p), caffe.TEST).save(str(tmp_path / ("%s.caffemodel" % model)))
        paths[model] = (p, tmp_path / ("%s.caffemodel" % model))
    gp, gw = paths["gcnet_s1r1"]
    cp, cw = paths["cnn"]
    net = load_net(gp, gw)
    assert np.array_equal(net.params["fc1"][0].data, caffe_io.read_caffemodel(str(gw))["fc1"][0])

    def variant(name, edit):
        p = caffe_io.load_net_param(str(gw))
        edit(p)
        out = tmp_path / name
        caffe_io.save_net_param(p, str(out))
        return out

    def drop(*names):
        def edit(p):
            for n in names:
                del p.layer[[layer.name for layer in p.layer].index(n)]
        return edit

    def refused(w, prototxt, *needles):
        with pytest.raises(ModelError) as e:
            load_net(prototxt, w)
        msg = str(e.value)
        assert "\n" not in msg and str(w) in msg, msg
        for n in needles:
            assert n in msg, (n, msg)

    refused(cw, gp, "weights of net 'cnn', not of 'gcnet_s1r1'")          # the case, both ways
    refused(gw, cp, "weights of net 'gcnet_s1r1', not of 'cnn'")
    unnamed = variant("unnamed.caffemodel", lambda p: p.ClearField("name"))
    assert load_net(gp, unnamed)                       # (a file without a net name: the layers decide)
    refused(variant("no_de1r.caffemodel", drop("de1r_deconv2")), gp, "layer de1r_deconv2 has no weights")
    refused(variant("no_bn.caffemodel", drop("en1_bn1")), gp, "layer en1_bn1 has no weights")

    def fc2_of_8(p):                                   # ck+8's classifier in a ck+ net: Caffe would abort
        layer = p.layer[[x.name for x in p.layer].index("fc2")]
        layer.blobs[1].shape.dim[0] = 8
        layer.blobs[1].data.append(0.0)
    refused(variant("fc2.caffemodel", fc2_of_8), gp, "layer fc2 blob 1 is 8 with 8 values in the file, 7 in the net")

    def short_blob(p):
        del p.layer[[x.name for x in p.layer].index("fc1")].blobs[0].data[-1]
    refused(variant("short.caffemodel", short_blob), gp, "layer fc1 blob 0")
    refused(variant("bn2.caffemodel", lambda p: p.layer[[x.name for x in p.layer].index("en2_bn1")].blobs.pop()),
            gp, "layer en2_bn1 has 2 blobs in the file, 3 in the net")
    # the en2r_* layers share en2_*'s weights (and Scale params); their own BatchNorm statistics are needed
    assert load_net(gp, variant("no_en2r.caffemodel", drop("en2r_conv1", "en2r_conv2", "en2r_scale1")))
    refused(variant("no_en2r_bn.caffemodel", drop("en2r_bn1")), gp, "layer en2r_bn1 has no weights")
    # damaged files: one line naming them, never a Caffe abort
    data = gw.read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    refused(tmp_path / "cut.caffemodel", gp, "damaged or not a Caffe .caffemodel")
    refused(tmp_path / "empty.caffemodel", gp, "damaged or not a Caffe .caffemodel")
    refused(tmp_path / "missing.caffemodel", gp, "cannot read")
