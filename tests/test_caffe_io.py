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
