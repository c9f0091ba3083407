"""End-to-end test of gcnet.experiment (tools/run_folds.sh) on a tiny synthetic set.

10 synthetic subjects, 2 folds, models cnn + cnn_pair + gcnet_s1r1, a handful of iterations at batch 4: LMDBs,
pretraining, the generator stage, surgery, caffe train, test, expression removal, summary (paired statistics); then the cache (a second run trains nothing, a moved results folder too), a
failing stage, Ctrl-C + resume, --collect and bad input.  Needs the built Caffe (`source tools/env.sh`); select
with `-m e2e`, deselect with `-m "not e2e"`.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gcnet.caffe_io import read_caffemodel
from gcnet.layout import ResultsLayout
from gcnet.logparse import parse_log
from gcnet.util import sha256_file

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("caffe")]

RUN = [str(REPO / "tools" / "run_folds.sh")]
TINY = ["--synthetic-subjects", "10", "--n-folds", "2", "--batch", "4", "--augment", "0",
        "--pretrain-iters", "6", "--display", "2"]
MAIN = ["synthetic", "--models", "cnn,cnn_pair,gcnet_s1r1", "--folds", "0-1", "--iters", "6", "--test-interval", "6",
        "--generator-iters", "4", "--jobs", "2", "--no-figures"] + TINY


def run(args, timeout=600, **kw):
    return subprocess.run(RUN + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, cwd=str(REPO), **kw)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("runner")


@pytest.fixture(scope="module")
def first_run(work):
    data, out = work / "synth", work / "out"
    t0 = time.time()
    p = run(MAIN + ["--data", str(data), "--out", str(out)])
    print(p.stdout[-4000:], p.stderr[-4000:])
    return {"proc": p, "data": data, "out": out, "ds": out / "synthetic", "seconds": time.time() - t0}


def copied_context(first_run, out):
    """The runner's Context of MAIN on a copy of the first run's results under `out` (another <out>)."""
    import shutil
    from gcnet.experiment import cli
    from gcnet.experiment.plan import Context
    from gcnet.experiment.procs import Supervisor
    shutil.copytree(str(first_run["ds"]), str(out / "synthetic"), symlinks=True)
    s = cli.settings_from(MAIN + ["--data", str(first_run["data"]), "--out", str(out)])
    return Context(s, s.layout, Supervisor(), man=json.loads(s.layout.lmdb_manifest().read_text()))


# ================================================================================================ e2e
def test_pipeline_summary(first_run):
    p, ds = first_run["proc"], first_run["ds"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    sm = json.loads((ds / "summary.json").read_text())
    assert sm["dataset"] == "synthetic"
    st = sm["settings"]
    for key in ("iters", "pretrain_iters", "pretrain_source", "batch", "margin", "gamma", "power", "data_root", "data_hash",
                "caffe_build", "caffe_version", "git_commit", "synthetic", "contrastive_distance",
                "finetune_output_scale", "clip_gradients", "pretrain_clip_gradients", "recalibrate_bn", "bn_samples",
                "surgery_bn_stats", "caffe_root", "caffe_switches"):
        assert key in st, key
    assert st["caffe_switches"] == {"fuse_bn_scale_relu": True, "winograd": True}
    assert st["synthetic"] is True and st["iters"] == 6 and st["batch"] == 4 and st["scaled_down"] is True
    assert "training folds" in st["pretrain_source"]
    assert st["generator_iters"] == 4 and st["pretrain_iters"] == 6 and st["fit_output_scale"] is True
    assert set(sm["models"]) == {"cnn", "cnn_pair", "gcnet_s1r1"}
    for m, e in sm["models"].items():
        assert set(e["folds"]) == {"0", "1"}, (m, e)
        for k, f in e["folds"].items():
            assert 0.0 <= f["accuracy"] <= 1.0
            assert f["n_test"] > 0 and f["n_train"] > 0
            assert sum(map(sum, f["confusion"])) == f["n_test"]
            # diagnostics: interval, training set in TEST phase and with batch statistics, final loss terms
            assert f["ci95"][0] <= f["accuracy"] <= f["ci95"][1]
            assert f["train"]["n"] > 0 and 0 <= f["train"]["accuracy_test_phase"] <= 1
            assert 0 <= f["train"]["accuracy_batch_stats"] <= 1
            assert "loss_cls" in f["final_losses"] and f["bn_recalibrated"] is True
            if m == "gcnet_s1r1":
                assert {"loss_gen_r", "loss_contr", "loss_rec_r", "loss_rec_i"} <= set(f["final_losses"])
                g = f["generator"]
                assert g["l_gen_r"] > 0 and g["baseline_mean_reference"] > 0 and g["baseline_copy_x"] > 0
                assert isinstance(g["dead"], bool) and isinstance(g["beats_mean_reference"], bool)
                assert g["l_gen_r_on_reference"] > 0 and g["baseline_blurred_copy"] > 0 and g["autoencoder_floor"] > 0
                assert 0 <= g["fraction_beats_blurred_copy"] <= 1 and isinstance(g["beats_copy_x"], bool)
                lo, hi = g["gain_over_copy_x"]["ci95"]
                assert lo <= g["gain_over_copy_x"]["mean"] <= hi
                assert g["gain_over_copy_x"]["mean"] == pytest.approx(g["baseline_copy_x"] - g["l_gen_r"])
                tr = f["true_reference"]            # the same classifier given the TRUE X_r (deploy_ref)
                assert tr["n"] == f["n_test"] and tr["ci95"][0] <= tr["accuracy"] <= tr["ci95"][1]
                r = f["expression_removal"]
                assert r["n"] == f["n_test"] and all(0 <= r[k] <= 1 for k in ("p_true_x", "p_true_generated",
                                                                              "p_true_blurred_copy",
                                                                              "p_true_reference"))
            else:
                assert "generator" not in f
        accs = [f["accuracy"] for f in e["folds"].values()]
        assert e["mean"] == pytest.approx(np.mean(accs)) and e["std"] == pytest.approx(np.std(accs))
        n = sum(f["n_test"] for f in e["folds"].values())
        assert e["pooled"]["n"] == n and e["pooled"]["ci95"][0] <= e["pooled"]["accuracy"] <= e["pooled"]["ci95"][1]
    assert sm["failures"] == []
    # paired statistics against the cnn on the same images, pooled over the folds
    assert set(sm["paired"]) == {"cnn_pair", "gcnet_s1r1"}
    for m, pr in sm["paired"].items():
        e, c = sm["models"][m], sm["models"]["cnn"]
        assert pr["n"] == e["pooled"]["n"] == c["pooled"]["n"] and pr["baseline"] == "cnn"
        assert pr["accuracy"] == pytest.approx(e["pooled"]["accuracy"])
        assert pr["difference"] == pytest.approx(e["pooled"]["accuracy"] - c["pooled"]["accuracy"])
        assert pr["difference_ci95"][0] <= pr["difference"] <= pr["difference_ci95"][1]
        assert 0 < pr["mcnemar_p"] <= 1 and set(pr["folds"]) == {"0", "1"}
        assert pr["n_subjects"] == 10                            # 10 synthetic subjects, all tested once
    gen = sm["models"]["gcnet_s1r1"]["generator"]
    assert gen["folds"] == 2 and isinstance(gen["beats_copy_x_every_fold"], bool)
    assert gen["accuracy_true_reference"]["n"] == sm["models"]["gcnet_s1r1"]["pooled"]["n"]
    assert set(gen["expression_removal"]) == {"p_true_x", "p_true_generated", "p_true_blurred_copy",
                                              "p_true_reference"}
    md = (ds / "summary.md").read_text()
    assert "## Paired comparison with the cnn" in md and "## The generated reference" in md
    assert "| model | folds done | mean ± std over folds | all test images (n, 95% CI) | paper |" in md
    assert "not comparable to the paper" in md and "## Diagnostics" in md
    assert "cnn" in p.stdout and "accuracy (mean ± std)" in p.stdout        # the final table
    # one progress line per display interval, with the loss terms, lr and an ETA
    assert re.search(r"\[synthetic fold \d gcnet_s1r1\] iter 2/6 loss \S+ loss_cls \S+ .*loss_gen_r \S+ .*lr \S+",
                     p.stdout), p.stdout[-3000:]
    assert re.search(r"\[synthetic fold \d pretrain encdec\] iter 2/6 .*loss_rec", p.stdout)


def test_fold_outputs(first_run):
    ds = first_run["ds"]
    lay = ResultsLayout.at(ds)
    assert lay.dataset == "synthetic"
    assert lay.trained_models(need=("final.caffemodel", "test.json")) == {
        m: {k: ds / m / ("fold_%d" % k) for k in (0, 1)} for m in ("cnn", "cnn_pair", "gcnet_s1r1")}
    for k in (0, 1):
        # the generator stage (the paper's first step): trained from encdec on X -> X_r, output Scale fitted
        g = lay.generator_dir(k)
        for f in ("init.caffemodel", "init_fitted.caffemodel", "trained.caffemodel", "final.caffemodel",
                  "test.json", "stage.json", "meta.json"):
            assert (g / f).exists(), g / f
        st = json.loads((g / "stage.json").read_text())
        assert st["status"] == "done" and st["generator"]["l_gen_r"] > 0
        fit = st["calibration"]["output_scale"]
        assert fit["target"] == "xr" and fit["train_error"] <= fit["train_error_before"] + 1e-9
        final = read_caffemodel(str(g / "final.caffemodel"))
        assert [float(b.ravel()[0]) for b in final["de1r_scale1"]] == pytest.approx(fit["gamma_beta"], rel=1e-6)
        enc = json.loads((ds / "pretrain" / ("fold_%d" % k) / "encdec" / "stage.json").read_text())
        assert enc["calibration"]["output_scale"]["target"] == "x"
    assert lay.pretrained(need=("final.caffemodel",)) == {
        net: {k: ds / "pretrain" / ("fold_%d" % k) / net for k in (0, 1)} for net in ("encdec", "cnn_id")}
    for m in ("cnn", "cnn_pair", "gcnet_s1r1"):
        for k in (0, 1):
            d = ds / m / ("fold_%d" % k)
            for f in ("train_val.prototxt", "deploy.prototxt", "solver.prototxt", "init.caffemodel", "train.log",
                      "trained.caffemodel", "final.caffemodel", "bn_stats.json", "meta.json", "test.json",
                      "surgery.json"):
                assert (d / f).exists(), d / f
            tj = json.loads((d / "test.json").read_text())
            n = tj["n_test"]
            assert len(tj["labels"]) == len(tj["predictions"]) == len(tj["probs"]) == len(tj["frames"]) == n
            assert sum(map(sum, tj["confusion"])) == n
            assert tj["accuracy"] == pytest.approx(np.mean(np.array(tj["labels"]) == np.array(tj["predictions"])))
            assert np.allclose(np.sum(tj["probs"], 1), 1.0, atol=1e-3)
            meta = json.loads((d / "meta.json").read_text())
            assert meta["model"] == m and meta["fold"] == k and meta["n_classes"] == 7
            assert len(meta["class_names"]) == 7 and meta["iters"] == 6
            assert "max_iter: 6" in (d / "solver.prototxt").read_text()
            index = json.loads((ds / "lmdb" / ("fold_%d" % k) / "test_index.json").read_text())
            assert tj["frames"] == [e["frame"] for e in index]
            # the BatchNorm stage ran: final = trained with every BatchNorm layer's statistics replaced
            trained, final = read_caffemodel(str(d / "trained.caffemodel")), read_caffemodel(str(d / "final.caffemodel"))
            assert set(trained) == set(final)
            bn = [name for name in final if name.startswith(("en", "de")) and "_bn" in name]
            assert bn and json.loads((d / "bn_stats.json").read_text())["layers"] == len(bn)
            for name in final:
                same = all(np.array_equal(a, b) for a, b in zip(trained[name], final[name]))
                assert same == (name not in bn), name
            for name in bn:
                assert final[name][2].ravel()[0] == 1.0 and np.all(final[name][1] > 0), name


def test_surgery_copied_pretrained_weights(first_run):
    ds = first_run["ds"]
    for k in (0, 1):
        enc = read_caffemodel(str(ds / "pretrain" / ("fold_%d" % k) / "encdec" / "final.caffemodel"))
        cid = read_caffemodel(str(ds / "pretrain" / ("fold_%d" % k) / "cnn_id" / "final.caffemodel"))
        gen = read_caffemodel(str(ds / "generator" / ("fold_%d" % k) / "final.caffemodel"))
        g = read_caffemodel(str(ds / "gcnet_s1r1" / ("fold_%d" % k) / "init.caffemodel"))
        # En_1 / De_1r from the generator stage, the reconstruction decoders from encdec
        pairs = [("en1_conv1", gen, "en1_conv1"), ("en1_scale3", gen, "en1_scale3"),
                 ("de1r_deconv2", gen, "de1r_deconv2"), ("de1r_scale1", gen, "de1r_scale1"),
                 ("en2_conv1", cid, "en2_conv1"),
                 ("en2_conv3", cid, "en2_conv3"), ("de2r_deconv3", enc, "de1r_deconv3"),
                 ("de2i_deconv1", enc, "de1r_deconv1"), ("de2i_scale2", enc, "de1r_scale2")]
        for tgt, src, src_layer in pairs:
            assert len(g[tgt]) == len(src[src_layer]), tgt
            for a, b in zip(g[tgt], src[src_layer]):
                assert a.shape == b.shape and np.array_equal(a, b), tgt
        # the classifier is not pretrained; BatchNorm statistics are zeroed (--surgery-bn-stats zero), not copied
        assert "fc1" in g and "fc2" in g and "id_fc1" not in g
        for layer in ("en1_bn2", "en2_bn1", "en2r_bn3", "de1r_bn1"):
            assert all(not b.any() for b in g[layer]), layer
            assert any(b.any() for b in (gen.get(layer) or cid.get(layer.replace("en2r", "en2")))), layer
        p = read_caffemodel(str(ds / "cnn_pair" / ("fold_%d" % k) / "init.caffemodel"))
        for layer in ("en2_conv1", "en2_conv3", "en2r_conv2"):
            assert all(np.array_equal(a, b) for a, b in zip(p[layer], cid[layer.replace("en2r", "en2")])), layer
        assert "en1_conv1" not in p and "de1r_deconv1" not in p
        c = read_caffemodel(str(ds / "cnn" / ("fold_%d" % k) / "init.caffemodel"))
        for layer in ("en2_conv1", "en2_conv2", "en2_conv3", "en2_scale1"):
            for a, b in zip(c[layer], cid[layer]):
                assert np.array_equal(a, b), layer
        rep = json.loads((ds / "gcnet_s1r1" / ("fold_%d" % k) / "surgery.json").read_text())
        copied = {c["layer"]: c["from_layer"] for c in rep["copied"]}
        assert copied["de2r_deconv1"] == "de1r_deconv1" and copied["en2r_conv2"] == "en2_conv2"
        assert {r["layer"] for r in rep["random"]} >= {"fc1", "fc2"}


def test_surgery_is_reproducible(first_run, tmp_path):
    """The random fillers (fc1, fc2) are seeded: the same surgery gives the same init.caffemodel byte for byte;
    another --seed other classifier weights and the same copied ones."""
    ds = first_run["ds"]
    d, pre = ds / "gcnet_s1r1" / "fold_0", ds / "pretrain" / "fold_0"
    outs = {}
    for seed in (None, 2):
        out = tmp_path / ("init_%s.caffemodel" % seed)
        cmd = [sys.executable, "-m", "gcnet.surgery", "gcnet_s1r1", str(d / "train_val.prototxt"), str(out),
               "--encdec", str(pre / "encdec" / "final.caffemodel"),
               "--cnn-id", str(pre / "cnn_id" / "final.caffemodel"),
               "--generator", str(ds / "generator" / "fold_0" / "final.caffemodel")]
        p = subprocess.run(cmd + ([] if seed is None else ["--seed", str(seed)]), cwd=str(REPO),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        outs[seed] = out
    assert outs[None].read_bytes() == (d / "init.caffemodel").read_bytes()
    a, b = read_caffemodel(str(outs[None])), read_caffemodel(str(outs[2]))
    assert not np.array_equal(a["fc1"][0], b["fc1"][0])
    assert all(np.array_equal(x, y) for x, y in zip(a["en2_conv1"], b["en2_conv1"]))


def test_second_run_is_cached(first_run):
    ds = first_run["ds"]
    logs = sorted(ds.glob("*/fold_*/train.log")) + sorted(ds.glob("pretrain/fold_*/*/train.log"))
    assert len(logs) == 12                       # 3 models + the generator stage, 2 pretraining nets; 2 folds
    before = {str(p): p.stat().st_mtime_ns for p in logs}
    init_before = {str(p): p.stat().st_mtime_ns for p in ds.glob("*/fold_*/init.caffemodel")}
    # leftovers of writes cut short (a full disk, a kill) are removed at the next start: in the job folders (under
    # their locks) whatever their age, in the shared results root once older than a write can take
    stale = [ds / "run_report.json.partial4242.1", ds / "cnn" / "fold_0" / "stage.json.partial4242.1",
             ds / "pretrain" / "fold_1" / "encdec" / "final.caffemodel.tmp"]
    fresh = ds / "summary.json.partial4243.1"
    for f in stale + [fresh]:
        f.write_text("")
    os.utime(str(stale[0]), (time.time() - 3600, time.time() - 3600))
    t0 = time.time()
    p = run(MAIN + ["--data", str(first_run["data"]), "--out", str(first_run["out"])])
    secs = time.time() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not any(f.exists() for f in stale) and fresh.exists(), p.stdout[-3000:]
    assert "removed %s (left by an interrupted write)" % stale[1] in p.stdout
    fresh.unlink()
    assert {str(q): q.stat().st_mtime_ns for q in logs} == before          # caffe train did not run again
    assert {str(q): q.stat().st_mtime_ns for q in ds.glob("*/fold_*/init.caffemodel")} == init_before
    rep = json.loads((ds / "run_report.json").read_text())
    assert rep["stages"]["lmdb"]["cached"] is True
    assert set(rep["stages"]["pretrain"].values()) == set(rep["stages"]["generator"].values()) == {"cached"}
    assert {v["status"] for v in rep["stages"]["models"].values()} == {"cached"}
    assert " iter " not in p.stdout
    assert secs < max(60.0, 0.5 * first_run["seconds"]), secs


def test_moved_results_cached_and_a_failing_stage_summarised(first_run, tmp_path, monkeypatch):
    """The production stages on a copy of the first run under another <out>: still cached (the keys hash the
    prototxts with <out> replaced); then a stage that fails is recorded in stage.json and in the summary."""
    from gcnet.experiment import cli, stages
    from gcnet.experiment.plan import Context, model_jobs
    from gcnet.experiment.procs import JobError, Supervisor
    from gcnet.experiment.summary import collect_summary, summary_markdown
    out = tmp_path / "moved"
    ctx = copied_context(first_run, out)
    s, lay = ctx.s, ctx.layout
    jobs = {(j.model, j.fold): j for j in model_jobs(ctx)}
    stages.run_model(ctx, jobs[("gcnet_s1r1", 0)])
    assert jobs[("gcnet_s1r1", 0)].status == "cached"
    # pretraining: a new --iters (other snapshot interval) keeps it; a result recorded under the key of
    # the former gcnet/runner.py (which hashed display and snapshot) is accepted and re-recorded under the new key
    from gcnet.experiment import cache
    from gcnet.experiment.plan import data_fingerprint, pretrain_jobs, write_prototxts
    args = MAIN + ["--data", str(first_run["data"]), "--out", str(out)]
    args[args.index("--iters") + 1] = "12"
    s2 = cli.settings_from(args)
    ctx2 = Context(s2, lay, Supervisor(), man=ctx.man)
    pre = pretrain_jobs(ctx2)[(0, "encdec")]
    write_prototxts(ctx2, pre)
    assert "snapshot: 3" in pre.texts["solver"] and "max_iter: 6" in pre.texts["solver"]
    legacy = cache.pretrain_keys(ctx2, pre, data_fingerprint(ctx.man, 0, "pretrain"))[1]
    st = json.loads((pre.dir / "stage.json").read_text())
    (pre.dir / "stage.json").write_text(json.dumps(dict(st, hash=legacy)))
    stages.run_pretrain(ctx2, pre)
    assert pre.status == "cached" and json.loads((pre.dir / "stage.json").read_text())["hash"] == st["hash"]

    def boom(ctx, job):
        raise JobError("boom")
    (lay.model_dir("cnn", 1) / "test.json").unlink()
    monkeypatch.setattr(stages, "MODEL_STAGES", (("surgery", stages.run_surgery), ("bnstats", boom)))
    with pytest.raises(JobError, match="boom"):
        stages.run_model(ctx, jobs[("cnn", 1)])
    st = json.loads((lay.model_dir("cnn", 1) / "stage.json").read_text())
    assert (st["status"], st["failed_stage"], st["error"]) == ("failed", "bnstats", "boom")
    sm = collect_summary(lay, s.models, s.folds)
    e, done = sm["models"]["cnn"], sm["models"]["cnn"]["folds"]["0"]
    assert (e["missing_folds"], e["n_folds_done"], e["std"]) == ([1], 1, 0.0)
    assert e["mean"] == done["accuracy"] and e["pooled"]["n"] == done["n_test"]
    assert [(f["model"], f["fold"], f["stage"], f["error"]) for f in sm["failures"]] == [("cnn", 1, "bnstats", "boom")]
    assert sm["models"]["gcnet_s1r1"]["n_folds_done"] == 2
    md = summary_markdown(sm)
    assert "* cnn fold 1 (bnstats, failed): boom" in md and "| cnn | 1/2 | %.2f%% ± 0.00 |" % (100 * e["mean"]) in md


def test_collect_rebuilds_summary(first_run):
    ds = first_run["ds"]
    old = json.loads((ds / "summary.json").read_text())
    (ds / "summary.json").unlink()
    p = run(["synthetic", "--collect", "--no-figures", "--out", str(first_run["out"])])
    assert p.returncode == 0, p.stdout + p.stderr
    new = json.loads((ds / "summary.json").read_text())
    assert new["models"] == old["models"] and new["settings"] == old["settings"]
    assert "accuracy (mean ± std)" in p.stdout


def test_interrupt_then_resume(first_run, work):
    out = work / "out_resume"
    args = ["synthetic", "--data", str(first_run["data"]), "--out", str(out), "--models", "cnn", "--folds", "0",
            "--iters", "40", "--test-interval", "40", "--snapshot", "1000", "--no-figures"] + TINY
    args[args.index("--display") + 1] = "1"
    proc = subprocess.Popen(RUN + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, cwd=str(REPO))
    lines, sent = [], False
    t0 = time.time()
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"\[synthetic fold 0 cnn\] iter (\d+)/40", line)
        if m and int(m.group(1)) >= 3 and not sent:
            proc.send_signal(signal.SIGINT)             # Ctrl-C
            sent = True
        assert time.time() - t0 < 400
    rc = proc.wait(timeout=120)
    text = "".join(lines)
    assert sent, text[-3000:]
    assert rc == 130, text[-3000:]
    assert "rerun the same command to resume" in text and "Traceback" not in text
    d = out / "synthetic" / "cnn" / "fold_0"
    snaps = sorted(d.glob("snapshots/cnn_iter_*.solverstate"))
    assert snaps, "no snapshot written on Ctrl-C"
    it_stop = int(re.search(r"_iter_(\d+)\.", snaps[-1].name).group(1))
    assert 3 <= it_stop < 40
    assert not (d / "final.caffemodel").exists()
    assert json.loads((d / "stage.json").read_text())["status"] == "interrupted"
    # resume
    p = run(args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming from snapshots/cnn_iter_%d.solverstate" % it_stop in p.stdout
    log = (d / "train.log").read_text()
    assert "Resuming from snapshots/cnn_iter_%d.solverstate" % it_stop in log
    part2 = log[log.rindex("=== gcnet runner"):]
    its = [r["iter"] for r in parse_log(part2)["train"]]
    assert its and min(its) >= it_stop and max(its) == 40        # continued, not restarted
    assert (d / "final.caffemodel").exists() and (d / "test.json").exists()
    sm = json.loads((out / "synthetic" / "summary.json").read_text())
    assert sm["models"]["cnn"]["n_folds_done"] == 1
    # the summary says the training was resumed, and from where (not bit-identical to an uninterrupted one)
    assert sm["models"]["cnn"]["folds"]["0"]["resumed_from"] == [it_stop]
    assert sm["resumed"] == [{"model": "cnn", "fold": 0, "from_iterations": [it_stop]}]
    assert "* cnn fold 0: from iteration %d" % it_stop in (out / "synthetic" / "summary.md").read_text()


def test_bad_input_exits_2(work):
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    cases = [
        (["ck+"], "--data"),                                       # real dataset without --data
        (["nosuch"], "unknown dataset"),
        (["synthetic", "--models", "cnn,bogus"], "unknown model"),
        (["synthetic", "--folds", "3-12"], "out of range"),
        (["synthetic", "--folds", "x"], "bad --folds"),
        (["ck+", "--data", str(work / "missing")], "does not exist"),
        (["ck+", "--data", str(empty), "--out", str(work / "out_bad")], ""),     # DataError from the readers
    ]
    for args, needle in cases:
        p = run(args, timeout=300)
        assert p.returncode == 2, (args, p.stdout[-2000:], p.stderr[-2000:])
        err = p.stderr.strip().splitlines()
        assert err and err[-1].startswith("error: ") and needle in err[-1], (args, p.stderr)
        assert "Traceback" not in p.stderr
    # no C compiler for the Python layers' kernels: one clear error before any work
    p = run(["synthetic", "--out", str(work / "out_cc")], timeout=300, env=dict(os.environ, CC="/nonexistent/cc"))
    assert p.returncode == 2 and "cannot compile the Python layers' C kernels" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not [f for f in (work / "out_cc").rglob("*") if f.is_file()]           # nothing written but the folder


def test_figures_stage_redraws_only_when_inputs_change(first_run, tmp_path, monkeypatch, capsys):
    """The runner's figures stage (gcnet.figures.make_all_figures stubbed): drawn once, then up to date until a
    test result changes."""
    import os
    import shutil
    import gcnet.figures
    from gcnet.experiment import cli, stages
    from gcnet.experiment.plan import Context
    from gcnet.experiment.procs import Supervisor
    out = tmp_path / "figs"
    shutil.copytree(str(first_run["ds"]), str(out / "synthetic"), symlinks=True)
    s = cli.settings_from(MAIN + ["--data", str(first_run["data"]), "--out", str(out)])
    ctx = Context(s, s.layout, Supervisor())
    calls = []

    def draw(root, log=print, **kw):
        calls.append(root)
        s.layout.figures_dir.mkdir(exist_ok=True)
        (s.layout.figures_dir / "fig.png").write_bytes(b"png")
        return [str(s.layout.figures_dir / "fig.png")]
    monkeypatch.setattr(gcnet.figures, "make_all_figures", draw)
    stages.run_figures(ctx)
    stages.run_figures(ctx)
    assert calls == [str(s.layout.root)] and "up to date (inputs unchanged): 1 files" in capsys.readouterr().out
    tj = s.layout.model_dir("cnn", 0) / "test.json"
    os.utime(str(tj), ns=(tj.stat().st_atime_ns, tj.stat().st_mtime_ns + 10 ** 9))
    stages.run_figures(ctx)
    assert len(calls) == 2
    (s.layout.figures_dir / "fig.png").unlink()                 # a figure deleted: drawn again
    stages.run_figures(ctx)
    assert len(calls) == 3


def test_damaged_outputs_are_redone(first_run, tmp_path, capsys):
    """A damaged init/trained/final.caffemodel or pretraining final.caffemodel under a finished stage used to be
    reused forever (every rerun failed at the test stage with a glog abort).  Each is verified against the sha256
    recorded when it was written, removed saying so, and its stage redone: surgery is seeded and the trained and
    pretrained weights are copies of the last snapshot, so they come back byte for byte.  A damaged latest snapshot
    is removed too (resuming from it would abort), and a snapshot's weights without its solver state."""
    from gcnet.experiment import stages
    from gcnet.experiment.plan import model_jobs, pretrain_jobs
    from gcnet.experiment.train import usable_snapshots
    ctx = copied_context(first_run, tmp_path / "damaged")
    lay = ctx.layout
    d, pre = lay.model_dir("gcnet_s1r1", 0), lay.pretrain_dir(0, "encdec")
    good = {p: p.read_bytes() for p in (d / "init.caffemodel", d / "trained.caffemodel", pre / "final.caffemodel")}
    test_before = json.loads((d / "test.json").read_text())
    (d / "init.caffemodel").write_bytes(b"")
    data = (d / "trained.caffemodel").read_bytes()
    (d / "trained.caffemodel").write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])   # one bit
    (d / "final.caffemodel").write_bytes((d / "final.caffemodel").read_bytes()[:5000])
    (pre / "final.caffemodel").write_bytes(b"\0" * 100)
    stages.run_pretrain(ctx, pretrain_jobs(ctx)[(0, "encdec")])
    job = {(j.model, j.fold): j for j in model_jobs(ctx)}[("gcnet_s1r1", 0)]
    stages.run_model(ctx, job)
    said = capsys.readouterr().out
    for p in list(good) + [d / "final.caffemodel"]:
        assert "%s is damaged (its sha256 differs from the one recorded when it was written): removed, its stage " \
               "runs again" % p in said, said
    assert job.status == "done" and "net surgery" in said and "training already complete" in said
    for p, b in good.items():
        if p.name == "init.caffemodel":   # (the same weights; the file also names the LMDBs, moved with the copy)
            (tmp_path / "init_before").write_bytes(b)
            was, now = read_caffemodel(str(tmp_path / "init_before")), read_caffemodel(str(p))
            assert set(was) == set(now) and all(np.array_equal(x, y) for k in was for x, y in zip(was[k], now[k]))
        else:
            assert p.read_bytes() == b, p
    st, meta = json.loads((d / "stage.json").read_text()), json.loads((d / "meta.json").read_text())
    assert meta["weights_sha256"] == st["outputs_sha256"]["final.caffemodel"] == sha256_file(d / "final.caffemodel")
    assert json.loads((d / "test.json").read_text())["n_test"] == test_before["n_test"]
    # snapshots: a damaged latest pair is dropped (the previous one is used), an unpaired .caffemodel removed
    snaps = usable_snapshots(d, "[t]")
    assert len(snaps) >= 2, snaps
    it, st_path, cm = snaps[-1]
    cm.write_bytes(cm.read_bytes()[:2000])
    orphan = d / "snapshots" / "gcnet_s1r1_iter_99.caffemodel"
    orphan.write_bytes(b"x")
    assert usable_snapshots(d, "[t]") == snaps[:-1] and not cm.exists() and not st_path.exists()
    assert not orphan.exists()
    said = capsys.readouterr().out
    assert "[t] snapshot at iteration %d is damaged" % it in said and "%s (an incomplete snapshot)" % orphan in said


def test_full_disk_is_one_line_and_loses_nothing(first_run, tmp_path, monkeypatch, capsys):
    """A full disk while writing the summary: exit 1, one line naming the file and "no space left", no traceback;
    the summary of the previous run is intact and no half-written file is left."""
    import errno
    import shutil
    import gcnet.util
    from gcnet.experiment import cli
    out = tmp_path / "full"
    shutil.copytree(str(first_run["ds"]), str(out / "synthetic"), symlinks=True)
    ds = out / "synthetic"
    before = (ds / "summary.json").read_bytes()
    real_dump = json.dump

    def dump(obj, f, **kw):
        f.write("{")                    # some bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gcnet.util.json, "dump", dump)
    try:
        rc = cli.main(["synthetic", "--collect", "--no-figures", "--out", str(out)])
    finally:
        monkeypatch.setattr(gcnet.util.json, "dump", real_dump)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == ["error: no space left on device: cannot write %s (free some space, then rerun the "
                               "same command)" % (ds / "summary.json")], err
    assert (ds / "summary.json").read_bytes() == before
    assert not [p for p in ds.rglob("*") if ".partial" in p.name]


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs (root only; skipped, saying why, where it cannot be mounted); unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a small tmpfs to fill (needs root): %s" % p.stdout.strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_real(first_run, small_disk):
    """A real full disk under the runner (it used to end in a traceback from an LMDB commit or the run report and
    leave empty *.partial* files): exit 1, one line naming the path and "no space left", nothing half-written;
    after space is freed the same command runs to the end."""
    args = ["synthetic", "--models", "cnn", "--folds", "0", "--iters", "2", "--test-interval", "2", "--no-figures",
            "--data", str(first_run["data"]), "--out", str(small_disk)] + TINY
    p = run(args)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: no space left on device: cannot write %s/" % small_disk), err
    assert not [f for f in small_disk.rglob("*") if ".partial" in f.name]
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    p = run(args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert json.loads((small_disk / "synthetic" / "summary.json").read_text())["models"]["cnn"]["n_folds_done"] == 1


def test_webface_pretraining_is_shared_by_results_folders(work):
    """The pretraining on a WebFace root runs once under <out> (pretrain/webface-<data hash>): a second results
    folder (another profile: synthetic-ablation) and another --seed reuse it; pretrain/fold_K links to it."""
    from gcnet.data.synthetic import make_synthetic
    wf = work / "wf"
    make_synthetic("webface", str(wf), subjects=4, seed=0, frames=4)
    out = work / "shared_out"
    common = ["--data", str(work / "synth_shared"), "--out", str(out), "--pretrain-data", str(wf), "--models", "cnn",
              "--folds", "0", "--iters", "2", "--generator-iters", "0", "--no-figures", "--jobs", "1"] + TINY
    p1 = run(["synthetic"] + common)
    assert p1.returncode == 0, p1.stdout[-3000:] + p1.stderr[-3000:]
    shared = sorted((out / "pretrain").glob("webface-*/encdec/final.caffemodel"))
    assert len(shared) == 1
    p2 = run(["synthetic", "--profile", "ablation", "--seed", "1"] + common)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    rep = json.loads((out / "synthetic-ablation" / "run_report.json").read_text())
    assert set(rep["stages"]["pretrain"].values()) == {"cached"}
    assert sorted((out / "pretrain").glob("webface-*/encdec/final.caffemodel")) == shared
    for name in ("synthetic", "synthetic-ablation"):
        link = out / name / "pretrain" / "fold_0"
        assert link.is_symlink() and link.resolve() == shared[0].parent.parent.resolve(), link
        st = json.loads((out / name / "cnn" / "fold_0" / "stage.json").read_text())
        assert st["status"] == "done"


def test_reference_value_retrains_cnn_pair_on_generated_references(first_run, tmp_path):
    """gcnet.experiment.reference_value: cnn_pair retrained on G(X_r) / G(X) (computed here with a plain caffe.Net
    of the generator stage), tested on the cnn's test images, paired statistics written."""
    import shutil
    import caffe
    from gcnet.caffe_io import read_lmdb
    ds = tmp_path / "synthetic"
    shutil.copytree(str(first_run["ds"]), str(ds), symlinks=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "python_layers"),
                                                       os.environ.get("PYTHONPATH", "")]))
    bad = subprocess.run([sys.executable, "-m", "gcnet.experiment.reference_value", str(ds), "--references", "xr"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--references" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "gcnet.experiment.reference_value", str(ds), "--folds", "x"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--folds" in bad.stderr
    p = subprocess.run([sys.executable, "-m", "gcnet.experiment.reference_value", str(ds), "--folds", "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    lay = ResultsLayout.at(ds)
    res = json.loads(lay.reference_value_json.read_text())
    n = json.loads((ds / "cnn" / "fold_0" / "test.json").read_text())["n_test"]
    assert set(res["paired"]) == {"blurred-true_vs_cnn", "blurred-true_vs_cnn_pair", "generated_vs_cnn",
                                  "generated_vs_cnn_pair", "blurred-true_vs_generated"}
    assert all(v["n"] == n for v in res["paired"].values())
    gen = caffe.Net(str(lay.generator_dir(0) / "deploy.prototxt"), str(lay.generator_dir(0) / "final.caffemodel"),
                    caffe.TEST)
    orig = np.stack([a for _, a, _ in read_lmdb(str(lay.lmdb(0, "test")))])
    for ref, channel in (("blurred-true", 1), ("generated", 0)):
        d = lay.reference_value_dir(ref, 0)
        new = np.stack([a for _, a, _ in read_lmdb(str(d / "lmdb_test"))])
        x = orig[:, channel:channel + 1, 1:65, 1:65].astype(np.float32) / 256
        gen.blobs["x"].reshape(*x.shape)
        gen.blobs["x"].data[...] = x
        g = np.clip(np.rint(gen.forward()["gen_r"][:, 0] * 256), 0, 255)
        assert np.array_equal(new[:, 0], orig[:, 0])                      # X untouched
        assert np.abs(new[:, 1, 1:65, 1:65].astype(int) - g).max() <= 1   # the reference is G(.)
        assert np.array_equal(new[:, 1, 0], orig[:, 1, 0])                # border: X_r's
        assert str(d / "lmdb_train") in (d / "train_val.prototxt").read_text()
        t = json.loads((d / "test.json").read_text())
        assert t["n_test"] == n and 0 <= t["accuracy"] <= 1
