"""tools/export_onnx.py and gcnet.onnx_export: every expression model's deploy net (and the GCNets' deploy_ref net)
in onnxruntime against Caffe within 1e-4, Caffe's pooling geometries and plumbing layers, and the named error of
a layer with no mapping."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, needs_caffe, random_model_folder, tool_env
from gcnet.config import (EXPRESSION_MODELS, has_generator, has_reconstruction, has_reference_variant,
                          has_true_reference)

pytestmark = needs_caffe
TOL = 1e-4


def _export(args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "tools" / "export_onnx.py")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=tool_env(),
                          timeout=timeout)


@pytest.mark.parametrize("model", EXPRESSION_MODELS)
def test_every_expression_model_matches_caffe(model, tmp_path):
    from gcnet.onnx_check import check_export
    from gcnet.onnx_export import export_model
    d = random_model_folder(tmp_path / model / "fold_0", model)
    done, notes = export_model(d)
    assert notes == []
    deploy = next(e for e in done if e["variant"] == "deploy")
    assert deploy["onnx"] == str(d / "model.onnx")
    assert deploy["inputs"] == (["x", "xr"] if has_true_reference(model) else ["x"])
    expected = {"prob"} | ({"gen_r"} if has_generator(model) else set()) | (
        {"rec_r", "rec_i"} if has_reconstruction(model) else set())
    assert set(deploy["outputs"]) == expected
    if has_reference_variant(model):
        ref = next(e for e in done if e["variant"] == "deploy_ref")
        assert ref["onnx"] == str(d / "model_ref.onnx") and ref["inputs"] == ["x", "xr"] and ref["outputs"] == ["prob"]
    else:
        assert [e["variant"] for e in done] == ["deploy"]
    reports = check_export(d, done, n_random=6, n_lmdb=2)
    for r in reports:
        assert r["notes"] and "random inputs only" in r["notes"][0]
        assert r["ok"], r
        assert r["labels_agree"] == 6
        for b, o in r["outputs"].items():
            assert o["worst_agreeing"] <= TOL, (r["variant"], b, o)
        assert r["flips"]["max_gap"] <= TOL
        if r["variant"] == "deploy" and has_generator(model):
            assert r["flips"]["of"] > 0          # the generator's pooling masks were compared


def test_check_fails_when_onnx_and_caffe_differ(tmp_path):
    """The check is not vacuous: weights changed after the export (one bias of fc2) make it fail."""
    import caffe
    from gcnet.onnx_check import check_export
    from gcnet.onnx_export import export_model
    d = random_model_folder(tmp_path / "cnn" / "fold_0", "cnn")
    done, _ = export_model(d)
    net = caffe.Net(str(d / "deploy.prototxt"), caffe.TEST, weights=str(d / "final.caffemodel"))
    net.params["fc2"][1].data[0] += 0.5
    net.save(str(d / "final.caffemodel"))
    (r,) = check_export(d, done, n_random=4, n_lmdb=0)
    assert not r["ok"] and r["outputs"]["prob"]["worst_agreeing"] > TOL and r["outputs"]["prob"]["beyond"] >= 1


def test_export_cli_check_on_a_trained_folder(tiny_results, tmp_path):
    """The runner's gcnet_s1r1 fold: model.onnx and model_ref.onnx, checked on random and test-LMDB images."""
    import onnx
    from gcnet.onnx_export import onnx_metadata
    d = tiny_results["layout"].model_dir("gcnet_s1r1", 0)
    out = tmp_path / "exported" / "net.onnx"
    p = _export(["--model", d, "--out", out, "--check", "--random", 3, "--lmdb", 5])
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "3 random + 5 test-LMDB images" in p.stdout and "check passed" in p.stdout
    for name in ("prob", "gen_r", "rec_r", "rec_i"):
        assert "  %-6s worst |caffe - onnxruntime|" % name in p.stdout
    assert p.stdout.count("labels agree on") == 2
    assert out.exists() and (tmp_path / "exported" / "net_ref.onnx").exists()
    meta = onnx_metadata(onnx.load(str(out)))
    assert json.loads(meta["class_names"]) == json.loads((d / "meta.json").read_text())["class_names"]
    assert json.loads(meta["transform"]) == {"scale": 0.00390625, "crop": 64, "mean": 0.0}
    assert meta["variant"] == "deploy" and meta["opset"] == "17"


def test_plumbing_layers_and_other_pooling_geometries(tmp_path, monkeypatch):
    """Slice, Split, Silence, pooling with padding (Caffe's clipped last window), a non-overlapping stride, and an
    unpooling into a larger plane than the pooling input, against Caffe."""
    import caffe
    import onnxruntime as ort
    from gcnet.caffe_io import read_caffemodel
    from gcnet.onnx_export import net_to_onnx, read_prototxt
    from gcnet.onnx_layers import caffe_pooled_size
    from gcnet.nets import pooled_size
    for size in range(5, 40):
        for k, s, p in ((5, 2, 0), (3, 2, 0), (3, 2, 1), (2, 3, 0), (3, 3, 1), (4, 2, 2)):
            if size + 2 * p >= k:
                assert caffe_pooled_size(size, k, s, p) == pooled_size(size, k, s, p)
    proto = tmp_path / "net.prototxt"
    proto.write_text('''
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 11 dim: 11 } } }
layer { name: "slice" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"
        slice_param { slice_point: 1 slice_point: 2 } }
layer { name: "split" type: "Split" bottom: "a" top: "a1" top: "a2" }
layer { name: "conv" type: "Convolution" bottom: "a1" top: "conv" convolution_param { num_output: 4 kernel_size: 3
        pad: 1 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "pool_pad" type: "Pooling" bottom: "conv" top: "pool_pad" top: "mask"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "unpool" type: "Python" bottom: "pool_pad" bottom: "mask" top: "unpool"
        python_param { module: "gcnet_layers" layer: "MaxUnpool" param_str: '{"out_h": 12, "out_w": 13}' } }
layer { name: "pool_stride" type: "Pooling" bottom: "b" top: "pool_stride"
        pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
layer { name: "dist" type: "Python" bottom: "a2" bottom: "c" top: "dist"
        python_param { module: "gcnet_layers" layer: "ElementwiseDistance" } }
layer { name: "fc" type: "InnerProduct" bottom: "pool_stride" top: "fc" inner_product_param { num_output: 3
        weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "silence" type: "Silence" bottom: "fc" }
''')
    # Caffe's own im2col convolution (patch 0010's Winograd rounds at ~1e-5 of the value: the export's --check
    # tolerance, 1e-4, covers it; this test keeps the mapping's exactness at 1e-5)
    monkeypatch.setenv("CAFFE_WINOGRAD", "0")
    net = caffe.Net(str(proto), caffe.TEST)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    outputs = ["unpool", "pool_stride", "dist", "mask", "fc"]
    model = net_to_onnx(read_prototxt(proto), read_caffemodel(str(weights)), outputs=outputs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, 11, 11)).astype(np.float32)
    got = dict(zip(outputs, sess.run(outputs, {"data": x})))
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    net.forward()
    assert got["unpool"].shape == (2, 4, 12, 13) and got["pool_stride"].shape == (2, 1, 4, 4)
    assert np.array_equal(got["mask"], net.blobs["mask"].data)      # Caffe's in-plane index
    for b in outputs:
        np.testing.assert_allclose(got[b], net.blobs[b].data, atol=1e-5, err_msg=b)
    # the default outputs are Caffe's net outputs (Silence consumes fc)
    default = net_to_onnx(read_prototxt(proto), read_caffemodel(str(weights)))
    assert sorted(o.name for o in default.graph.output) == sorted(net.outputs)


@pytest.mark.parametrize("layer, old, new, why", [
    ("en1_pool2", "pool: MAX", "pool: AVE", "only MAX pooling is mapped"),
    ("delta", 'layer: "ElementwiseDistance"', 'layer: "Unknown"', "Python layer gcnet_layers.Unknown has no"),
    ("en2_relu1", 'type: "ReLU"', 'type: "LRN"', "the layer type has no ONNX mapping"),
])
def test_a_layer_with_no_mapping_is_a_named_error(tmp_path, layer, old, new, why):
    d = random_model_folder(tmp_path / "gcnet_s0r0" / "fold_0", "gcnet_s0r0")
    text = (d / "deploy.prototxt").read_text()
    i = text.index('name: "%s"' % layer)
    (d / "deploy.prototxt").write_text(text[:i] + text[i:].replace(old, new, 1))
    p = _export(["--model", d])
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("export_onnx:") == 1, p.stderr
    assert "layer %s" % layer in p.stderr and why in p.stderr, p.stderr
    assert not (d / "model.onnx").exists() and not list(d.glob("*.partial"))


def test_export_usage_errors(tmp_path):
    p = _export(["--model", tmp_path / "nothing"])
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    d = random_model_folder(tmp_path / "cnn" / "fold_0", "cnn")
    (d / "final.caffemodel").unlink()
    p = _export(["--model", d])
    assert p.returncode == 2 and "missing final.caffemodel" in p.stderr
    shutil.copy(str(d / "deploy.prototxt"), str(tmp_path / "x.prototxt"))
    p = _export(["--model", d, "--out", tmp_path / "x.prototxt"])
    assert p.returncode == 2 and "must end in .onnx" in p.stderr
