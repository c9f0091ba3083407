"""Networks generated from gcnet/nets.py: committed prototxt up to date, every net instantiates, shapes, losses."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import lmdb

from gcnet.config import ALL_MODELS, EXPRESSION_MODELS, NetOptions

try:                                     # gcnet.nets needs pycaffe; without it the `caffe` fixture fails (or skips)
    import caffe
    from caffe.proto import caffe_pb2
    from gcnet import nets
except ImportError:
    caffe = caffe_pb2 = nets = None

pytestmark = pytest.mark.usefixtures("caffe")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED_LOSSES = {
    "encdec": {"loss_rec"},
    "cnn_id": {"loss_id"},
    "generator": {"loss_gen_r"},
    "cnn": {"loss_cls"},
    "cnn_pair": {"loss_cls"},
    "gcnet_s0r0": {"loss_cls", "loss_gen_r"},
    "gcnet_s1r0": {"loss_cls", "loss_gen_r", "loss_contr"},
    "gcnet_s0r1": {"loss_cls", "loss_gen_r", "loss_rec_r", "loss_rec_i"},
    "gcnet_s1r1": {"loss_cls", "loss_gen_r", "loss_contr", "loss_rec_r", "loss_rec_i"},
}
ALL_LOSSES = {"loss_rec", "loss_id", "loss_cls", "loss_gen_r", "loss_contr", "loss_rec_r", "loss_rec_i"}
N_CLASSES = 7
BATCH = 4


@pytest.fixture(scope="module")
def tiny_lmdb(tmp_path_factory):
    """An LMDB of 2x66x66 uint8 Datums [X, X_r] with labels 0..6, as the data pipeline writes them."""
    path = str(tmp_path_factory.mktemp("lmdb") / "db")
    rng = np.random.RandomState(0)
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(16):
            d = caffe_pb2.Datum(channels=2, height=66, width=66, label=i % N_CLASSES,
                                data=rng.randint(0, 256, (2, 66, 66), dtype=np.uint8).tobytes())
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()
    return path


def _net(model, phase, tmp_path, source, **kw):
    opts = NetOptions(n_classes=N_CLASSES, batch_size=BATCH, test_batch_size=BATCH, train_source=source,
                      test_source=source, n_identities=5, **kw)
    path = str(tmp_path / ("%s_%s.prototxt" % (model, phase)))
    nets.write_net(model, opts, phase, path)
    return caffe.Net(path, caffe.TRAIN if phase == "train_val" else caffe.TEST)


def test_committed_prototxt_match_the_source():
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_prototxt.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for model in ALL_MODELS:
        for f in ("train_val", "deploy", "solver"):
            assert os.path.exists(os.path.join(REPO, "prototxt", model, f + ".prototxt"))


def test_check_names_a_stale_file(tmp_path):
    out = tmp_path / "prototxt"
    shutil.copytree(os.path.join(REPO, "prototxt"), out)
    stale = out / "gcnet_s1r1" / "train_val.prototxt"
    stale.write_text(stale.read_text().replace("num_output: 384", "num_output: 385"))
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_prototxt.py"), "--check", "--out",
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "gcnet_s1r1/train_val.prototxt" in r.stderr
    assert "deploy.prototxt" not in r.stderr


def test_pooled_sizes_follow_caffe_ceil_rounding():
    assert nets.encoder_sizes(NetOptions()) == [64, 31, 15, 7]


def test_table1_decoder_order_is_rejected_with_a_reason():
    with pytest.raises(ValueError, match="pooling masks"):
        nets.build_net("gcnet_s0r0", NetOptions(decoder_channels=(32, 64, 1)))


@pytest.mark.parametrize("model", ALL_MODELS)
def test_train_val_net_shapes_and_losses(model, tmp_path, tiny_lmdb):
    net = _net(model, "train_val", tmp_path, tiny_lmdb)
    b = net.blobs
    assert b["data"].data.shape == (BATCH, 2, 64, 64)
    assert b["x"].data.shape == (BATCH, 1, 64, 64)
    prefix = "en1" if model in ("encdec", "generator") or model.startswith("gcnet") else "en2"
    assert b[prefix + "_pool1"].data.shape == (BATCH, 32, 31, 31)
    assert b[prefix + "_pool2"].data.shape == (BATCH, 64, 15, 15)
    assert b[prefix + "_pool3"].data.shape == (BATCH, 96, 7, 7)
    if model.startswith("gcnet") or model in ("encdec", "generator"):
        assert b["gen_r"].data.shape == (BATCH, 1, 64, 64)
    if model.startswith("gcnet") or model == "cnn_pair":
        assert b["en2r_pool3"].data.shape == (BATCH, 96, 7, 7)
        assert b["delta"].data.shape == (BATCH, 96, 7, 7)
    if model in EXPRESSION_MODELS:
        assert b["fc1"].data.shape == (BATCH, 384)
        assert b["fc2"].data.shape == (BATCH, N_CLASSES)
    if model == "cnn_id":
        assert b["id_fc2"].data.shape == (BATCH, 5)
    losses = set(net.outputs) & ALL_LOSSES
    assert losses == EXPECTED_LOSSES[model]
    assert set(net.outputs) == losses, "blobs nobody consumes: %s" % (set(net.outputs) - losses)
    out = net.forward()
    net.backward()
    for name in losses:
        assert np.isfinite(out[name]).all() and float(out[name].ravel()[0]) >= 0, (name, out[name])
    # gradients reach the first encoder layer(s)
    first = "en1_conv1" if prefix == "en1" else "en2_conv1"
    assert np.abs(net.params[first][0].diff).sum() > 0
    if model.startswith("gcnet") or model == "cnn_pair":
        # the classification / contrastive / reconstruction losses reach En_2 through both branches
        assert np.abs(net.params["en2_conv1"][0].diff).sum() > 0


def test_en2_is_one_encoder_shared_by_both_branches(tmp_path, tiny_lmdb):
    net = _net("gcnet_s1r1", "train_val", tmp_path, tiny_lmdb)
    for layer in ("conv1", "scale2", "conv3"):
        a, b = net.params["en2_" + layer], net.params["en2r_" + layer]
        a[0].data[...] = 0.125
        assert np.all(b[0].data == 0.125)
    # En_1 is not shared with En_2
    net.params["en1_conv1"][0].data[...] = 3.0
    assert not np.any(net.params["en2_conv1"][0].data == 3.0)


def test_decoders_learn_ten_times_faster_in_gcnets():
    net = nets.build_net("gcnet_s1r1", NetOptions())
    mults = {l.name: [p.lr_mult for p in l.param] for l in net.layer}
    for dec in ("de1r", "de2r", "de2i"):
        assert mults[dec + "_deconv1"] == [10, 20]
        assert mults[dec + "_scale3"] == [10, 20]
        assert mults[dec + "_bn2"] == [0, 0, 0]
    assert mults["en1_conv1"] == [1, 2]
    pre = {l.name: [p.lr_mult for p in l.param] for l in nets.build_net("encdec", NetOptions()).layer}
    assert pre["de1r_deconv1"] == [1, 2]


def test_loss_weights_are_the_papers_lambdas():
    net = nets.build_net("gcnet_s1r1", NetOptions())
    w = {l.name: list(l.loss_weight) for l in net.layer if l.loss_weight}
    assert w == {"loss_contr": [1.0], "loss_gen_r": [1.0], "loss_rec_r": [0.25], "loss_rec_i": [0.25]}


@pytest.mark.parametrize("model", [m for m in EXPRESSION_MODELS if m != "cnn_pair"])
def test_deploy_nets_take_one_image(model, tmp_path, tiny_lmdb):
    net = _net(model, "deploy", tmp_path, tiny_lmdb)
    assert list(net.inputs) == ["x"]
    net.blobs["x"].reshape(3, 1, 64, 64)
    net.blobs["x"].data[...] = np.random.RandomState(1).rand(3, 1, 64, 64)
    assert set(net.outputs) <= {"prob", "rec_r", "rec_i"}, net.outputs
    prob = net.forward()["prob"]
    assert prob.shape == (3, N_CLASSES)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)
    if model.startswith("gcnet"):
        assert net.blobs["gen_r"].data.shape == (3, 1, 64, 64)
    if model.endswith("r1"):
        assert net.blobs["rec_r"].data.shape == net.blobs["rec_i"].data.shape == (3, 1, 64, 64)


def test_deploy_ref_takes_the_reference_as_input():
    """deploy_ref (GCNets): inputs x and xr, no generator; every layer is the deploy net's layer of that name with
    the same parameters (so final.caffemodel loads into it), and En_2's second branch reads xr instead of gen_r."""
    from google.protobuf import text_format
    from gcnet.config import ALL_MODELS, has_reference_variant
    assert [m for m in ALL_MODELS if has_reference_variant(m)] == ["gcnet_s0r0", "gcnet_s1r0", "gcnet_s0r1",
                                                                   "gcnet_s1r1"]
    for model in ALL_MODELS:
        if not has_reference_variant(model):
            with pytest.raises(ValueError, match="no generated reference"):
                nets.build_net(model, NetOptions(), "deploy_ref")
            continue
        ref, dep = nets.build_net(model, NetOptions(), "deploy_ref"), nets.build_net(model, NetOptions(), "deploy")
        assert [l.top[0] for l in ref.layer if l.type == "Input"] == ["x", "xr"]
        by_name = {l.name: l for l in dep.layer}
        for layer in ref.layer:
            if layer.type == "Input":
                continue
            same = caffe_pb2.LayerParameter()
            same.CopyFrom(by_name[layer.name])
            if layer.name == "en2r_conv1":
                assert list(same.bottom) == ["gen_r"] and list(layer.bottom) == ["xr"]
                same.bottom[0] = "xr"
            if layer.type == "Pooling":         # no decoder here: no mask tops
                del same.top[1:]
            assert text_format.MessageToString(layer) == text_format.MessageToString(same), layer.name
        assert not any(l.name.startswith(("en1_", "de1r_", "de2r_", "de2i_")) for l in ref.layer)
        assert [l.top[0] for l in ref.layer][-1] == "prob"


def test_contrastive_layer_gets_margin_and_neutral_label():
    net = nets.build_net("gcnet_s1r0", NetOptions(margin=2.5, neutral_label=0))
    layer = [l for l in net.layer if l.name == "loss_contr"][0]
    assert '"margin": 2.5' in layer.python_param.param_str
    assert '"neutral_label": 0' in layer.python_param.param_str
    assert list(layer.bottom) == ["en2_pool3", "en2r_pool3", "label"]


def test_default_margin_keeps_the_contrastive_term_active(tmp_path, tiny_lmdb):
    """With Caffe's default m = 1 the hinge is 0 for every dissimilar pair (docs/choices.md)."""
    net = _net("gcnet_s1r0", "train_val", tmp_path, tiny_lmdb)
    assert float(net.forward()["loss_contr"].ravel()[0]) > 0


def test_solver_defaults_train_the_generator_without_diverging(tmp_path, tiny_lmdb):
    """The paper's solver (Nesterov, inv, 10x decoder rates) plus clip_gradients: L_Gen,r falls and stays finite."""
    from gcnet.config import SolverOptions
    from gcnet.solver import make_solver
    net_path = str(tmp_path / "net.prototxt")
    nets.write_net("gcnet_s1r1", NetOptions(n_classes=N_CLASSES, batch_size=8, train_source=tiny_lmdb,
                                            test_source=tiny_lmdb), "train_val", net_path)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(make_solver(net_path, SolverOptions(max_iter=100), str(tmp_path / "snap"),
                                       with_test=False))
    caffe.set_random_seed(3)
    solver = caffe.get_solver(str(solver_path))
    solver.step(1)
    first = float(solver.net.blobs["loss_gen_r"].data.ravel()[0])
    gen = []
    for _ in range(25):
        solver.step(1)
        gen.append(float(solver.net.blobs["loss_gen_r"].data.ravel()[0]))
    assert np.all(np.isfinite(gen)) and max(gen) < 1.5 * first, (first, gen)
    assert max(gen[-5:]) < 0.85 * first, (first, gen)


def test_decoder_output_scale_frozen_only_while_fine_tuning():
    def lr(model, layer, **kw):
        net = nets.build_net(model, NetOptions(**kw))
        return [p.lr_mult for p in next(l for l in net.layer if l.name == layer).param]
    assert lr("encdec", "de1r_scale1") == [1, 2]                       # pretraining learns the output scale
    for model, layer in (("gcnet_s0r0", "de1r_scale1"), ("gcnet_s1r1", "de2r_scale1"), ("gcnet_s1r1", "de2i_scale1")):
        assert lr(model, layer) == [0, 0], (model, layer)
        assert lr(model, layer, finetune_output_scale="decoder-rate") == [10, 20], (model, layer)
        assert lr(model, layer.replace("scale1", "scale2")) == [10, 20]  # the rest of the decoder keeps rate 10


@pytest.mark.parametrize("output_scale,dies", [("decoder-rate", True), ("frozen", False)])
def test_trained_output_scale_kills_the_generator_without_clipping(tmp_path, tiny_lmdb, output_scale, dies):
    """The paper's literal setting (output Scale at the decoder rate 10, no clipping) drives the generator's output
    ReLU to 0 everywhere within a few steps; frozen, the output stays alive (docs/choices.md)."""
    from gcnet.config import SolverOptions
    from gcnet.solver import make_solver
    net_path = str(tmp_path / "net.prototxt")
    nets.write_net("gcnet_s0r0", NetOptions(n_classes=N_CLASSES, batch_size=8, train_source=tiny_lmdb,
                                            test_source=tiny_lmdb, finetune_output_scale=output_scale),
                   "train_val", net_path)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(make_solver(net_path, SolverOptions(max_iter=100, clip_gradients=0),
                                       str(tmp_path / "snap"), with_test=False))
    caffe.set_random_seed(3)
    solver = caffe.get_solver(str(solver_path))
    alive = []
    for _ in range(15):
        solver.step(1)
        alive.append(float(np.mean(solver.net.blobs["gen_r"].data > 0)))
    assert (max(alive[-5:]) == 0.0) == dies, alive


def test_en2_branches_keep_their_own_batchnorm_statistics():
    net = nets.build_net("gcnet_s1r1", NetOptions())
    params = {l.name: [p.name for p in l.param] for l in net.layer}
    assert params["en2r_conv1"] == ["en2_conv1_w", "en2_conv1_b"]
    assert params["en2r_scale1"] == ["en2_scale1_w", "en2_scale1_b"]
    assert not any(params["en2r_bn1"]), params["en2r_bn1"]
    shared = {l.name: [p.name for p in l.param] for l in nets.build_net(
        "gcnet_s1r1", NetOptions(en2_shared_bn_stats=True)).layer}
    assert shared["en2r_bn1"] == ["en2_bn1_mean", "en2_bn1_var", "en2_bn1_factor"]


def test_cnn_pair_compares_x_with_the_true_reference(tmp_path, tiny_lmdb):
    """Fig. 2(b): one En_2 on X and on X_r (shared weights, own BatchNorm statistics), delta = |En_2(X) -
    En_2(X_r)|, the classifier; the deploy net takes both faces and with X_r = X sees delta = 0."""
    net = _net("cnn_pair", "train_val", tmp_path, tiny_lmdb)
    assert {"en1_conv1", "de1r_deconv1"}.isdisjoint(net.params)          # no generator
    net.params["en2_conv2"][0].data[...] = 0.25
    assert np.all(net.params["en2r_conv2"][0].data == 0.25)
    assert net.params["en2r_bn1"][0].data is not net.params["en2_bn1"][0].data
    net.forward()
    xr_branch = [l.bottom for l in nets.build_net("cnn_pair", NetOptions()).layer if l.name == "en2r_conv1"][0]
    assert list(xr_branch) == ["xr"]
    deploy = _net("cnn_pair", "deploy", tmp_path, tiny_lmdb)
    assert list(deploy.inputs) == ["x", "xr"] and list(deploy.outputs) == ["prob"]
    rng = np.random.RandomState(2)
    x, xr = rng.rand(3, 1, 64, 64), rng.rand(3, 1, 64, 64)
    for name, value in (("x", x), ("xr", xr)):
        deploy.blobs[name].reshape(*value.shape)
        deploy.blobs[name].data[...] = value
    deploy.forward()
    assert np.abs(deploy.blobs["delta"].data).max() > 0
    deploy.blobs["xr"].data[...] = x
    prob = deploy.forward()["prob"]
    assert np.all(deploy.blobs["delta"].data == 0)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)


def test_cnn_pair_gradient_matches_finite_differences(tmp_path, tiny_lmdb):
    """d loss_cls / d En_2 weights through BOTH branches (the shared conv gets the sum of the two branches'
    gradients), against central differences along a random direction, on the TEST-phase net (no dropout, stored
    BatchNorm statistics); the data layer is run once, the differences re-run the net from En_2 on."""
    path = str(tmp_path / "pair_test.prototxt")
    opts = NetOptions(n_classes=N_CLASSES, batch_size=BATCH, test_batch_size=BATCH, train_source=tiny_lmdb,
                      test_source=tiny_lmdb, n_identities=5)
    nets.write_net("cnn_pair", opts, "train_val", path)
    net = caffe.Net(path, caffe.TEST)
    rng = np.random.RandomState(0)
    for name in net.params:
        if net.layer_dict[name].type == "BatchNorm":
            net.params[name][1].data[...] = 1
            net.params[name][2].data[...] = 1
    net.forward()

    def loss():
        return float(net.forward(start="en2_conv1")["loss_cls"])

    loss()
    for name in net.params:
        for blob in net.params[name]:
            blob.diff[...] = 0
    net.backward()
    def fd(w, w0, d):
        w.data[...] = w0 + d
        up = loss()
        w.data[...] = w0 - d
        down = loss()
        w.data[...] = w0
        return (up - down) / 2

    for layer in ("en2_conv1", "en2_conv3", "fc1"):
        w = net.params[layer][0]
        grad, w0 = w.diff.copy(), w.data.copy()
        ratios = []
        for _ in range(7):
            d = rng.randn(*w0.shape).astype(np.float32)
            d *= 3e-4 * np.linalg.norm(w0) / np.linalg.norm(d)
            ratios.append(float(np.sum(grad * d)) / fd(w, w0, d))
        # a step that crosses a max-pooling / ReLU / |a - b| kink gives an outlier; most steps do not
        assert np.median(ratios) == pytest.approx(1, abs=0.03), (layer, ratios)
        assert sum(abs(r - 1) < 0.05 for r in ratios) >= 4, (layer, ratios)


def test_solvers_name_the_out_folder_from_the_repository_root(tmp_path):
    """make_prototxt --out DIR: the solvers name DIR/<model>/train_val.prototxt, relative to the repository root
    (where Caffe runs) when DIR is inside it, else absolute."""
    from gcnet.prototxts import net_dir
    assert net_dir("prototxt") == "prototxt" and net_dir(os.path.join(REPO, "a", "b")) == "a/b"
    assert net_dir(str(tmp_path)) == str(tmp_path.resolve())
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_prototxt.py"), "--models", "cnn",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    solver = (tmp_path / "cnn" / "solver.prototxt").read_text()
    assert 'net: "%s/cnn/train_val.prototxt"' % tmp_path.resolve().as_posix() in solver
