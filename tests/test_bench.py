"""tools/bench.sh --vs-pytorch: the PyTorch twin's description of the nets (gcnet/torch_twin.py) and the option's
argument checks.  Running the twin needs torch (requirements-bench.txt, not installed on CI): that test is skipped
without it; the description and the checks run everywhere."""
import os
import subprocess
import sys

import pytest

from gcnet.config import NetOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("caffe")


def _describe(model, batch=4):
    from gcnet import nets, torch_twin
    return torch_twin.describe(nets.build_net(model, NetOptions(batch_size=batch, n_identities=5)))


def test_twin_describes_every_train_layer_with_shared_and_frozen_params():
    from gcnet import nets
    param = nets.build_net("gcnet_s1r1", NetOptions(batch_size=4))
    layers = _describe("gcnet_s1r1")
    train = [l.name for l in param.layer if l.name != "data_test" and l.type != "Accuracy"]
    assert [d["name"] for d in layers] == train
    by_name = {d["name"]: d for d in layers}
    assert by_name["data"]["batch"] == 4 and by_name["data"]["crop"] == 64
    # En_2 on X and on X_r hat: one set of weights (named params), each branch its own BatchNorm statistics
    assert by_name["en2_conv2"]["params"][0]["name"] == by_name["en2r_conv2"]["params"][0]["name"] == "en2_conv2_w"
    assert by_name["en2_bn2"]["params"][0]["name"] != by_name["en2r_bn2"]["params"][0]["name"]
    assert not any(p["learn"] for p in by_name["en2_bn2"]["params"])
    # the decoders' output Scale is frozen while fine-tuning (NetOptions.finetune_output_scale "frozen")
    assert [p["learn"] for p in by_name["de1r_scale1"]["params"]] == [False, False]
    assert [p["learn"] for p in by_name["de1r_scale2"]["params"]] == [True, True]
    assert by_name["loss_contr"]["param"] == {"margin": 2.0, "neutral_label": -1, "distance": "rms"}
    assert by_name["de2i_unpool2"]["param"] == {"out_h": 31, "out_w": 31}
    # the 5x5 layer with its unpooling (patch 0012): the unpooled size for F.max_unpool2d
    assert by_name["de2i_deconv1"]["type"] == "UnpoolDeconvolution"
    assert (by_name["de2i_deconv1"]["out_h"], by_name["de2i_deconv1"]["out_w"]) == (64, 64)
    assert by_name["en1_pool1"]["kernel"] == 5 and by_name["en1_pool1"]["stride"] == 2
    assert by_name["de1r_deconv1"]["num_output"] == 1 and by_name["de1r_deconv1"]["kernel"] == 5
    assert by_name["loss_rec_i"]["loss_weight"] == [0.25]


def test_twin_refuses_a_layer_it_has_no_counterpart_for():
    from caffe.proto import caffe_pb2
    from gcnet import torch_twin
    net = caffe_pb2.NetParameter()
    net.layer.add(name="lrn", type="LRN", bottom=["x"], top=["y"])
    with pytest.raises(ValueError, match="layer lrn of type LRN"):
        torch_twin.describe(net)


@pytest.mark.parametrize("model", ["cnn", "gcnet_s1r1"])
def test_twin_runs_the_same_shapes_as_caffe(model, tmp_path):
    """Every blob of the twin has the shape Caffe gives it (same graph), and one step gives finite gradients."""
    torch = pytest.importorskip("torch", reason="torch is optional (requirements-bench.txt)")
    import caffe
    from gcnet import nets, torch_twin
    opts = NetOptions(batch_size=2, n_identities=5)
    path = tmp_path / "net.prototxt"
    param = nets.build_net(model, opts)
    del param.layer[1]                                        # the TEST Data layer
    param.layer[0].ClearField("data_param")
    param.layer[0].type = "Input"
    param.layer[0].input_param.shape.add(dim=[2, 2, 64, 64])
    param.layer[0].input_param.shape.add(dim=[2])
    param.layer[0].ClearField("transform_param")
    path.write_text(str(param))
    net = caffe.Net(str(path), caffe.TRAIN)
    twin = torch_twin.Twin(_describe(model, batch=2))
    with torch.no_grad():
        blobs = twin._forward()
    for name, blob in net.blobs.items():
        if name in blobs and hasattr(blobs[name], "shape") and blobs[name].dim() > 0:
            assert tuple(blobs[name].shape) == blob.data.shape, name
    twin.step()
    grads = [p.grad for p in twin._learned]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bench_vs_pytorch_without_torch_is_a_one_line_usage_error():
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench.py"), "--vs-pytorch", "--torch-python",
                        "/bin/false"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--vs-pytorch needs torch in /bin/false" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_fused_unpool_choice_per_build(tmp_path):
    """--fused-unpool: one on/off per build, else a one-line usage error; by default a build runs the fused nets
    when it has patch 0012's layer (its header is installed), the MaxUnpool nets otherwise."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    old, new = tmp_path / "old", tmp_path / "new"
    for b in (old, new):
        (b / "bin").mkdir(parents=True)
        (b / "bin" / "caffe").write_text("")
    (new / "include" / "caffe" / "layers").mkdir(parents=True)
    (new / "include" / "caffe" / "layers" / "unpool_deconv_layer.hpp").write_text("")
    builds = "%s,%s" % (old, new)
    assert bench.parse_args(["--builds", builds]).fused_unpool == [False, True]
    assert bench.parse_args(["--builds", builds, "--gpu", "0"]).fused_unpool == [False, False]
    assert bench.parse_args(["--builds", builds, "--fused-unpool", "off,off"]).fused_unpool == [False, False]
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench.py"), "--builds", builds,
                        "--fused-unpool", "on"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--fused-unpool needs on or off for each of the 2 build(s)" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_conv_runs_and_refuses_a_bad_batch():
    script = os.path.join(REPO, "tools", "bench_conv.py")
    r = subprocess.run([sys.executable, script, "--batch", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--batch and --repeats must be >= 1" in r.stderr
    r = subprocess.run([sys.executable, script, "--batch", "2", "--repeats", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert any(l.startswith("conv2  backward weights") for l in lines)       # GEMM rates, B = 1 and 2
    assert any(l.startswith("deconv1  Caffe") for l in lines)                # the layers' own times
