"""End-to-end test of the experiment runner (tools/run_folds.sh -> gcnet.runner) on a tiny synthetic set.

10 synthetic subjects, 2 folds, models cnn + gcnet_s1r1, a handful of iterations at batch 4: LMDBs, pretraining,
surgery, caffe train, test, summary; then the cache (a second run trains nothing), Ctrl-C + resume, --collect and
bad input.  Needs the built Caffe (`source tools/env.sh`); select with `-m e2e`, deselect with `-m "not e2e"`.
Plain-Python parts (fold parsing, summary) are tested without Caffe at the end of the file.
"""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gcnet import runner as R  # noqa: E402
from conftest import needs_caffe  # noqa: E402




RUN = [str(REPO / "tools" / "run_folds.sh")]
TINY = ["--synthetic-subjects", "10", "--n-folds", "2", "--batch", "4", "--augment", "0",
        "--pretrain-iters", "6", "--display", "2"]
MAIN = ["synthetic", "--models", "cnn,gcnet_s1r1", "--folds", "0-1", "--iters", "6", "--test-interval", "6",
        "--jobs", "2", "--no-figures"] + TINY


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


# ================================================================================================ e2e
@pytest.mark.e2e
@needs_caffe
def test_pipeline_summary(first_run):
    p, ds = first_run["proc"], first_run["ds"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    sm = json.loads((ds / "summary.json").read_text())
    assert sm["dataset"] == "synthetic"
    st = sm["settings"]
    for key in ("iterations", "pretrain_source", "batch", "margin", "gamma", "power", "data_root", "data_hash",
                "caffe_build", "caffe_version", "git_commit", "synthetic", "contrastive_distance",
                "finetune_output_scale", "clip_gradients", "pretrain_clip_gradients", "recalibrate_bn", "bn_samples",
                "surgery_bn_stats"):
        assert key in st, key
    assert st["synthetic"] is True and st["iterations"] == 6 and st["batch"] == 4 and st["scaled_down"] is True
    assert "training folds" in st["pretrain_source"]
    assert set(sm["models"]) == {"cnn", "gcnet_s1r1"}
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
            else:
                assert "generator" not in f
        accs = [f["accuracy"] for f in e["folds"].values()]
        assert e["mean"] == pytest.approx(np.mean(accs)) and e["std"] == pytest.approx(np.std(accs))
        n = sum(f["n_test"] for f in e["folds"].values())
        assert e["pooled"]["n"] == n and e["pooled"]["ci95"][0] <= e["pooled"]["accuracy"] <= e["pooled"]["ci95"][1]
    assert sm["failures"] == []
    md = (ds / "summary.md").read_text()
    assert "| model | folds done | mean ± std over folds | all test images (n, 95% CI) | paper |" in md
    assert "not comparable to the paper" in md and "## Diagnostics" in md
    assert "cnn" in p.stdout and "accuracy (mean ± std)" in p.stdout        # the final table
    # one progress line per display interval, with the loss terms, lr and an ETA
    assert re.search(r"\[synthetic fold \d gcnet_s1r1\] iter 2/6 loss \S+ loss_cls \S+ .*loss_gen_r \S+ .*lr \S+",
                     p.stdout), p.stdout[-3000:]
    assert re.search(r"\[synthetic fold \d pretrain encdec\] iter 2/6 .*loss_rec", p.stdout)


@pytest.mark.e2e
@needs_caffe
def test_fold_outputs(first_run):
    ds = first_run["ds"]
    for m in ("cnn", "gcnet_s1r1"):
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
            index = json.loads((ds / "lmdb" / ("fold_%d" % k) / "test_index.json").read_text())
            assert tj["frames"] == [e["frame"] for e in index]
            # the BatchNorm stage ran: final = trained with every BatchNorm layer's statistics replaced
            from gcnet.caffe_io import read_caffemodel
            trained, final = read_caffemodel(str(d / "trained.caffemodel")), read_caffemodel(str(d / "final.caffemodel"))
            assert set(trained) == set(final)
            bn = [name for name in final if name.startswith(("en", "de")) and "_bn" in name]
            assert bn and json.loads((d / "bn_stats.json").read_text())["layers"] == len(bn)
            for name in final:
                same = all(np.array_equal(a, b) for a, b in zip(trained[name], final[name]))
                assert same == (name not in bn), name
            for name in bn:
                assert final[name][2].ravel()[0] == 1.0 and np.all(final[name][1] > 0), name


@pytest.mark.e2e
@needs_caffe
def test_surgery_copied_pretrained_weights(first_run):
    from gcnet.caffe_io import read_caffemodel
    ds = first_run["ds"]
    for k in (0, 1):
        enc = read_caffemodel(str(ds / "pretrain" / ("fold_%d" % k) / "encdec" / "final.caffemodel"))
        cid = read_caffemodel(str(ds / "pretrain" / ("fold_%d" % k) / "cnn_id" / "final.caffemodel"))
        g = read_caffemodel(str(ds / "gcnet_s1r1" / ("fold_%d" % k) / "init.caffemodel"))
        pairs = [("en1_conv1", enc, "en1_conv1"), ("en1_scale3", enc, "en1_scale3"),
                 ("de1r_deconv2", enc, "de1r_deconv2"), ("en2_conv1", cid, "en2_conv1"),
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
            assert any(b.any() for b in (enc.get(layer) or cid.get(layer.replace("en2r", "en2")))), layer
        c = read_caffemodel(str(ds / "cnn" / ("fold_%d" % k) / "init.caffemodel"))
        for layer in ("en2_conv1", "en2_conv2", "en2_conv3", "en2_scale1"):
            for a, b in zip(c[layer], cid[layer]):
                assert np.array_equal(a, b), layer
        rep = json.loads((ds / "gcnet_s1r1" / ("fold_%d" % k) / "surgery.json").read_text())
        copied = {c["layer"]: c["from_layer"] for c in rep["copied"]}
        assert copied["de2r_deconv1"] == "de1r_deconv1" and copied["en2r_conv2"] == "en2_conv2"
        assert {r["layer"] for r in rep["random"]} >= {"fc1", "fc2"}


@pytest.mark.e2e
@needs_caffe
def test_second_run_is_cached(first_run):
    ds = first_run["ds"]
    logs = sorted(ds.glob("*/fold_*/train.log")) + sorted(ds.glob("pretrain/fold_*/*/train.log"))
    assert len(logs) == 8
    before = {str(p): p.stat().st_mtime_ns for p in logs}
    init_before = {str(p): p.stat().st_mtime_ns for p in ds.glob("*/fold_*/init.caffemodel")}
    t0 = time.time()
    p = run(MAIN + ["--data", str(first_run["data"]), "--out", str(first_run["out"])])
    secs = time.time() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert {str(q): q.stat().st_mtime_ns for q in logs} == before          # caffe train did not run again
    assert {str(q): q.stat().st_mtime_ns for q in ds.glob("*/fold_*/init.caffemodel")} == init_before
    rep = json.loads((ds / "run_report.json").read_text())
    assert rep["stages"]["lmdb"]["cached"] is True
    assert set(rep["stages"]["pretrain"].values()) == {"cached"}
    assert {v["status"] for v in rep["stages"]["models"].values()} == {"cached"}
    assert " iter " not in p.stdout
    assert secs < max(60.0, 0.5 * first_run["seconds"]), secs


@pytest.mark.e2e
@needs_caffe
def test_collect_rebuilds_summary(first_run):
    ds = first_run["ds"]
    old = json.loads((ds / "summary.json").read_text())
    (ds / "summary.json").unlink()
    p = run(["synthetic", "--collect", "--no-figures", "--out", str(first_run["out"])])
    assert p.returncode == 0, p.stdout + p.stderr
    new = json.loads((ds / "summary.json").read_text())
    assert new["models"] == old["models"] and new["settings"] == old["settings"]
    assert "accuracy (mean ± std)" in p.stdout


@pytest.mark.e2e
@needs_caffe
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
    from gcnet.logparse import parse_log
    part2 = log[log.rindex("=== gcnet runner"):]
    its = [r["iter"] for r in parse_log(part2)["train"]]
    assert its and min(its) >= it_stop and max(its) == 40        # continued, not restarted
    assert (d / "final.caffemodel").exists() and (d / "test.json").exists()
    sm = json.loads((out / "synthetic" / "summary.json").read_text())
    assert sm["models"]["cnn"]["n_folds_done"] == 1


@pytest.mark.e2e
@needs_caffe
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


# ================================================================================================ no caffe
def test_parse_folds():
    assert R.parse_folds("0-9", 10) == list(range(10))
    assert R.parse_folds("0,2,5-7", 10) == [0, 2, 5, 6, 7]
    assert R.parse_folds("3", 10) == [3]
    for bad in ("5-12", "a", "4-2", ""):
        with pytest.raises(R.UsageError):
            R.parse_folds(bad, 10)


def test_parse_models_and_gpus():
    assert R.parse_models("cnn,gcnet_s1r1,cnn") == ["cnn", "gcnet_s1r1"]
    with pytest.raises(R.UsageError):
        R.parse_models("encdec")
    assert R.parse_gpus("cpu") is None and R.parse_gpus("0,1") == [0, 1]
    with pytest.raises(R.UsageError):
        R.parse_gpus("x")


def test_settings_profiles():
    ap = R.build_parser()
    s = R.resolve_settings(ap.parse_args(["synthetic"]))
    assert s.profile == "synthetic-cpu" and s.iters == R.SYNTHETIC_PROFILE["iters"] and s.scaled_down
    assert s.folds == R.parse_folds(R.SYNTHETIC_PROFILE["folds"], R.SYNTHETIC_PROFILE["n_folds"])
    assert s.jobs == 2 and s.bn_samples == 512 and s.synthetic_subjects == 100 and s.lmdb_folds == s.folds
    assert s.data_root.endswith("ck+_100subjects_seed0")
    s = R.resolve_settings(ap.parse_args(["synthetic", "--profile", "ablation", "--folds", "0"]))
    assert (s.profile, s.iters, s.pretrain_iters, s.folds) == ("ablation", 1000, 1000, [0])
    with pytest.raises(R.UsageError, match="synthetic set"):
        R.resolve_settings(ap.parse_args(["ck+", "--data", str(REPO), "--profile", "ablation"]))
    s = R.resolve_settings(ap.parse_args(["ck+", "--data", str(REPO), "--gpu", "0,1"]))
    assert (s.iters, s.batch, s.n_folds, s.folds, s.models) == (300000, 64, 10, list(range(10)),
                                                               list(R.C.EXPRESSION_MODELS))
    assert s.profile == "paper" and not s.scaled_down and s.jobs == 2 and s.gpus == [0, 1]
    assert (s.display, s.snapshot, s.test_interval) == (100, 10000, 1000)


def test_threads_per_job():
    """--threads N sets the BLAS/OpenMP threads of every job (child env) and is recorded in the summary settings;
    the default is cores // jobs (one per job when the jobs fill the cores)."""
    ap = R.build_parser()
    s = R.resolve_settings(ap.parse_args(["synthetic", "--jobs", "2", "--threads", "1"]))
    assert s.threads == 1 and s.jobs == 2
    env = R.child_env(s)
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert R.settings_record(s, None)["threads"] == 1
    s = R.resolve_settings(ap.parse_args(["synthetic", "--jobs", "2"]))
    assert s.threads == max(1, R.n_cores() // 2)
    with pytest.raises(R.UsageError):
        R.resolve_settings(ap.parse_args(["synthetic", "--threads", "0"]))


def test_summary_from_disk(tmp_path):
    ds = tmp_path / "ck+"
    for k, acc in ((0, 0.5), (1, 1.0)):
        d = ds / "cnn" / ("fold_%d" % k)
        d.mkdir(parents=True)
        (d / "test.json").write_text(json.dumps({"accuracy": acc, "n_train": 10, "n_test": 2,
                                                 "confusion": [[1, 0], [0, 1]]}))
        (d / "stage.json").write_text(json.dumps({"status": "done"}))
    d = ds / "cnn" / "fold_2"
    d.mkdir(parents=True)
    (d / "stage.json").write_text(json.dumps({"status": "failed", "failed_stage": "train", "error": "boom",
                                              "log_tail": ["F0101 Check failed"]}))
    sm = R.collect_summary(ds, "ck+", ["cnn"], [0, 1, 2], settings={"synthetic": False, "scaled_down": True})
    e = sm["models"]["cnn"]
    assert e["mean"] == pytest.approx(0.75) and e["std"] == pytest.approx(0.25) and e["n_folds_done"] == 2
    assert e["missing_folds"] == [2]
    assert sm["failures"][0]["error"] == "boom" and sm["failures"][0]["fold"] == 2
    assert sm["paper"]["models"]["cnn"] == pytest.approx(0.9694)
    assert sm["paper"]["best_prior"]["method"] == "DTAGN-Joint"
    assert e["pooled"]["n"] == 4 and e["pooled"]["accuracy"] == pytest.approx(0.75)
    md = R.summary_markdown(sm)
    assert "| cnn | 2/3 | 75.00% ± 25.00 | 75.00% (n 4, 30.1-95.4%) | 96.94% |" in md
    assert "boom" in md and "Scaled-down" in md
