"""BatchNorm re-estimation (gcnet.bnstats) and the diagnostics of gcnet.diagnostics.

The contract of the re-estimation: after it, the TEST phase (stored statistics) gives what the batch statistics
give.  Checked on a fixed batch: the training LMDB holds exactly one batch, the net's stored statistics are stale
(random), and after re-estimating on that batch the TEST-phase outputs equal the batch-statistics outputs once
Caffe's variance bias correction m / (m - 1) is undone (to float rounding, GCNets included).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conftest import needs_caffe  # noqa: E402
from gcnet import diagnostics as D  # noqa: E402
from gcnet.inference import crop_scale  # noqa: E402

BATCH = 16


def _model_dir(tmp_path, model):
    """A model folder (deploy, meta, trained.caffemodel with random weights and stale BatchNorm statistics) and a
    training LMDB of exactly one batch of smooth random faces."""
    import caffe
    from gcnet.config import NetOptions
    from gcnet.caffe_io import encode_datum
    from gcnet.nets import build_net, net_text
    import lmdb
    d = tmp_path / model
    d.mkdir()
    (d / "deploy.prototxt").write_text(net_text(build_net(model, NetOptions(), "deploy")))
    (d / "meta.json").write_text(json.dumps({"class_names": ["c%d" % i for i in range(7)]}))
    caffe.set_random_seed(int(os.environ.get("GCNET_TEST_SEED", "3")))      # the weight fillers: a fixed net
    net = caffe.Net(str(d / "deploy.prototxt"), caffe.TEST)
    rng = np.random.default_rng(3)
    for name, blobs in net.params.items():
        if net.layer_dict[name].type == "BatchNorm":          # stale: far from the statistics of any input
            blobs[0].data[...] = rng.normal(0, 3, blobs[0].data.shape)
            blobs[1].data[...] = rng.uniform(0.01, 5, blobs[1].data.shape)
            blobs[2].data[...] = 7.0
        elif net.layer_dict[name].type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(0, 0.3, blobs[1].data.shape)
    net.save(str(d / "trained.caffemodel"))
    yy, xx = np.mgrid[0:66, 0:66] / 66.0
    faces = []
    for i in range(BATCH):
        a, b = rng.uniform(-3, 3, 2)
        img = 128 + 60 * np.sin(a * xx + b * yy + i) + rng.normal(0, 10, (66, 66))
        faces.append(np.clip(img, 0, 255).astype(np.uint8))
    env = lmdb.open(str(tmp_path / "train"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, f in enumerate(faces):
            txn.put(b"%08d" % i, encode_datum(np.stack([f, f[::-1]]), i % 7))
    env.close()
    return d, np.stack([np.stack([f, f[::-1]]) for f in faces])


@needs_caffe
@pytest.mark.parametrize("model", ["cnn", "gcnet_s1r1"])
def test_reestimation_makes_test_phase_match_batch_statistics(tmp_path, model):
    from gcnet.bnstats import recalibrate
    from gcnet.inference import DeployModel
    d, pairs = _model_dir(tmp_path, model)
    blobs = ("fc2", "gen_r") if model != "cnn" else ("fc2",)
    batch = DeployModel(d, weights=d / "trained.caffemodel", batch_stats=True).forward(pairs, blobs, BATCH)
    stale = DeployModel(d, weights=d / "trained.caffemodel").forward(pairs, blobs, BATCH)
    assert not np.allclose(stale["fc2"], batch["fc2"], rtol=0.1, atol=0.1)      # the stale statistics do matter
    rep = recalibrate(str(d), str(d / "trained.caffemodel"), str(d / "final.caffemodel"), str(tmp_path / "train"),
                      n_samples=BATCH, batch=BATCH)
    assert rep["n_samples"] == BATCH and rep["layers"] == len(DeployModel(d).batchnorm_layers())
    final = DeployModel(d, weights=d / "final.caffemodel")
    fixed = final.forward(pairs, blobs, BATCH)
    # 1. Every BatchNorm layer stores the statistics of its own input in the batch-statistics pass: the mean, and
    #    the variance times Caffe's bias correction m / (m - 1).
    from gcnet.inference import preprocess
    probe = DeployModel(d, weights=d / "final.caffemodel", batch_stats=True)
    net = probe.net
    x = preprocess(pairs, probe.scale, probe.crop, probe.mean)
    net.blobs[probe.input].reshape(*x.shape)
    net.reshape()
    net.blobs[probe.input].data[...] = x
    names = list(net._layer_names)
    for name in final.batchnorm_layers():
        net.forward(end=names[names.index(name) - 1])             # the BatchNorm's input, before it runs in place
        v = net.blobs[net.bottom_names[name][0]].data.astype(np.float64)
        v = v.transpose(1, 0, *range(2, v.ndim)).reshape(v.shape[1], -1)
        m = v.shape[1]
        mean, var, factor = (b.data for b in final.net.params[name])
        assert factor[0] == 1, name
        np.testing.assert_allclose(mean, v.mean(1), rtol=1e-4, atol=1e-5 * np.abs(v).max(), err_msg=name)
        np.testing.assert_allclose(var, v.var(1) * m / (m - 1), rtol=1e-4, atol=1e-6, err_msg=name)
    # 2. So the TEST phase gives what the batch statistics give, up to the m / (m - 1) in the variance (a relative
    #    1e-4 or less in the standard deviation here): cnn to 2e-3.  A GCNet's decoders unpool with the encoders'
    #    MAX pooling masks; the 1e-4 flips the argmax of a few near-tied windows, which moves an unpooled value by a
    #    pixel, so gen_r and the logits change locally by up to a few percent (docs/choices.md, "BatchNorm
    #    statistics": measured, with the variance correction undone the masks agree and the outputs match to 2e-6).
    for b in blobs:
        scale = np.abs(batch[b]).max()
        err = np.abs(fixed[b] - batch[b]) / scale
        if model == "cnn":
            assert err.max() < 2e-3, (b, err.max())
        else:
            assert err.max() < 0.1 and np.median(err) < 2e-3, (b, err.max(), np.median(err))


@needs_caffe
def test_reestimation_uses_whole_batches_and_keeps_other_weights(tmp_path):
    from gcnet.bnstats import recalibrate
    from gcnet.caffe_io import read_caffemodel
    d, _ = _model_dir(tmp_path, "cnn")
    rep = recalibrate(str(d), str(d / "trained.caffemodel"), str(d / "final.caffemodel"), str(tmp_path / "train"),
                      n_samples=BATCH + 5, batch=6)
    assert rep["n_samples"] == 12 and rep["batch"] == 6         # two whole batches of 6 out of 16 samples
    old, new = read_caffemodel(str(d / "trained.caffemodel")), read_caffemodel(str(d / "final.caffemodel"))
    for name in old:
        changed = not all(np.array_equal(a, b) for a, b in zip(old[name], new[name]))
        assert changed == ("_bn" in name), name


def test_wilson_interval():
    assert D.wilson_interval(0, 0) == [None, None]
    lo, hi = D.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = D.wilson_interval(3, 4)
    assert (lo, hi) == (pytest.approx(0.3006, abs=1e-4), pytest.approx(0.9544, abs=1e-4))
    lo, hi = D.wilson_interval(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-4) and hi == pytest.approx(0.8666, abs=1e-4)


def test_generator_diagnostics_baselines_and_dead_output():
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (5, 2, 66, 66)).astype(np.uint8)
    train = rng.integers(0, 256, (8, 2, 66, 66)).astype(np.uint8)
    crop, scale = 64, 1 / 256.0
    xr = crop_scale(test, crop, scale, dtype=np.float64)[:, 1:2]
    perfect = D.generator_diagnostics(test, xr, train, crop, scale)
    assert perfect["l_gen_r"] == 0 and perfect["beats_mean_reference"] and not perfect["dead"]
    mean_ref = crop_scale(train, crop, scale, dtype=np.float64)[:, 1].mean(0)
    expect = np.mean(0.5 * np.sum((xr[:, 0] - mean_ref) ** 2, axis=(1, 2)))
    assert perfect["baseline_mean_reference"] == pytest.approx(expect)
    x = crop_scale(test, crop, scale, dtype=np.float64)[:, 0]
    assert perfect["baseline_copy_x"] == pytest.approx(np.mean(0.5 * np.sum((xr[:, 0] - x) ** 2, axis=(1, 2))))
    dead = D.generator_diagnostics(test, np.zeros_like(xr), train, crop, scale)
    assert dead["dead"] and dead["output_positive_fraction"] == 0.0 and not dead["beats_mean_reference"]


def test_final_losses_takes_the_last_record_with_outputs():
    recs = [{"iter": 0, "loss": 5.0, "outputs": {"loss_cls": 2.0}}, {"iter": 10, "loss": 1.0,
                                                                     "outputs": {"loss_cls": 0.5, "loss_gen_r": 3.0}},
            {"iter": 20, "loss": None, "outputs": {}}]
    assert D.final_losses(recs) == {"loss_cls": 0.5, "loss_gen_r": 3.0, "loss": 1.0}
    assert D.final_losses([]) == {}


def test_generator_measures_on_constructed_faces():
    """X = 10 grey levels above X_r everywhere (copy X costs 0.5 * 4096 * (10/256)^2 = 3.125 per image); a generator
    that halves the gap on images 0-2 and doubles it on 3-5; the autoencoder returns X itself; G(X_r) = X_r."""
    n, crop, scale = 6, 64, 1 / 256.0
    test = np.zeros((n, 2, 66, 66), np.uint8)
    test[:, 1] = 100
    test[:, 0] = 110
    train = test.copy()
    xr = np.full((n, 1, crop, crop), 100 * scale)
    gap = np.array([0.5, 0.5, 0.5, 2, 2, 2])[:, None, None, None] * 10 * scale
    g = xr + gap
    copy = 0.5 * crop * crop * (10 * scale) ** 2
    m = D.generator_diagnostics(test, g, train, crop, scale, generated_from_reference=xr,
                                autoencoded=np.full((n, 1, crop, crop), 110 * scale),
                                subjects=["a", "a", "b", "c", "c", "d"])
    assert m["baseline_copy_x"] == pytest.approx(copy)
    assert m["l_gen_r"] == pytest.approx(copy * (0.25 + 4) / 2)
    assert m["fraction_beats_copy_x"] == pytest.approx(0.5) and not m["beats_copy_x"]
    assert m["l_gen_r_on_reference"] == pytest.approx(0.0)
    assert m["baseline_blurred_copy"] == pytest.approx(copy) and m["autoencoder_floor"] == pytest.approx(0.0)
    assert m["fraction_beats_blurred_copy"] == pytest.approx(0.5)
    assert m["baseline_mean_reference"] == pytest.approx(0.0)
    gain = m["gain_over_copy_x"]
    assert gain["mean"] == pytest.approx(copy - m["l_gen_r"]) and gain["n_subjects"] == 4
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    better = D.generator_diagnostics(test, xr + gap[::-1] * 0 + 0.5 * 10 * scale, train, crop, scale)
    assert better["beats_copy_x"] and better["fraction_beats_copy_x"] == 1.0 and "gain_over_copy_x" not in better
