"""Figures (gcnet.figures, tools/figures.py) and the predict command (tools/predict.py) on a tiny results folder.

The results folder is made here, self-contained and small (about a minute on 2 cores): 4 synthetic CK+ subjects,
2 folds, the real LMDBs (gcnet.data.lmdb_build), `cnn` (folds 0 and 1) and `gcnet_s1r1` (fold 0) trained for 3
iterations with `caffe train` (the nets of gcnet.nets, the solver of gcnet.solver) and tested with the runner's
test stage (gcnet.runner.evaluate) -- the layout of docs/ARCHITECTURE.md without the runner's pretraining.
Needs the built Caffe (`source tools/env.sh`); skipped otherwise.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gcnet import figures as F  # noqa: E402
from gcnet.inference import predict_arrays  # noqa: E402
from conftest import needs_caffe  # noqa: E402




pytestmark = [needs_caffe,
              # matplotlib 3.9 (mathtext, font patterns) with pyparsing >= 3.3: deprecation noise only
              pytest.mark.filterwarnings("ignore::DeprecationWarning:matplotlib.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:pyparsing.*")]

ITERS, BATCH = 3, 4


def _env():
    env = dict(os.environ)
    env.update(GLOG_minloglevel="0", GLOG_logtostderr="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    pp = [str(REPO), str(REPO / "python_layers")]
    env["PYTHONPATH"] = os.pathsep.join(pp + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


def _train(ds, model, fold, spec):
    """train_val/deploy/solver of gcnet.nets + gcnet.solver, `caffe train` for ITERS iterations, runner test."""
    from gcnet.config import NetOptions, SolverOptions
    from gcnet.nets import write_net
    from gcnet.runner import evaluate
    from gcnet.solver import make_solver
    lm = ds / "lmdb" / ("fold_%d" % fold)
    d = ds / model / ("fold_%d" % fold)
    (d / "snapshots").mkdir(parents=True)
    opts = NetOptions(n_classes=len(spec.class_names), neutral_label=spec.neutral_label, batch_size=BATCH,
                      test_batch_size=BATCH, train_source=str(lm / "train"), test_source=str(lm / "test"))
    write_net(model, opts, "train_val", str(d / "train_val.prototxt"))
    write_net(model, opts, "deploy", str(d / "deploy.prototxt"))
    so = SolverOptions(max_iter=ITERS, display=1, snapshot=ITERS, test_interval=ITERS, test_iter=1)
    (d / "solver.prototxt").write_text(make_solver("train_val.prototxt", so, "snapshots/%s" % model))
    with open(str(d / "train.log"), "w") as log:
        p = subprocess.run(["caffe", "train", "--solver=solver.prototxt"], cwd=str(d), stdout=log,
                           stderr=subprocess.STDOUT, env=_env(), timeout=300)
    assert p.returncode == 0, (d / "train.log").read_text()[-3000:]
    os.replace(str(d / "snapshots" / ("%s_iter_%d.caffemodel" % (model, ITERS))), str(d / "final.caffemodel"))
    meta = {"dataset": "synthetic", "model": model, "fold": fold, "class_names": list(spec.class_names),
            "neutral_label": spec.neutral_label, "n_classes": len(spec.class_names), "iters": ITERS,
            "test_lmdb": str(lm / "test")}
    (d / "meta.json").write_text(json.dumps(meta))
    res = evaluate(str(d), str(lm / "test"), str(lm / "test_index.json"), len(spec.class_names))
    (d / "test.json").write_text(json.dumps(res))
    return d


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from gcnet.config import DATASETS
    from gcnet.data.lmdb_build import build_lmdbs
    from gcnet.data.synthetic import make_synthetic
    base = tmp_path_factory.mktemp("figpred")
    data = base / "data" / "ck+"
    make_synthetic("ck+", str(data), subjects=4, seed=3, frames=5)
    ds = base / "res" / "synthetic"
    build_lmdbs("synthetic", str(data), str(ds / "lmdb"), n_folds=2, augment_copies=0, progress=None)
    spec = DATASETS["synthetic"]
    dirs = {(m, k): _train(ds, m, k, spec) for m, k in (("cnn", 0), ("gcnet_s1r1", 0), ("cnn", 1))}
    return {"ds": ds, "data": data, "dirs": dirs, "spec": spec}


# ================================================================================================ figures
def _check_png_pdf(files, kind):
    from PIL import Image
    pngs = [f for f in files if f.endswith(".png")]
    assert pngs and len(pngs) == len([f for f in files if f.endswith(".pdf")]), files
    w, h = F.FIG_SIZES[kind]
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (int(w * F.DPI), int(h * F.DPI)), (png, im.size)
            px = np.asarray(im.convert("L"))
        assert px.std() > 1, "blank figure %s" % png          # something is drawn
        pdf = Path(png[:-4] + ".pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000
        box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
        assert box and abs(float(box.group(1)) - 72 * w) < 1 and abs(float(box.group(2)) - 72 * h) < 1


@pytest.mark.parametrize("kind", F.FIGURES)
def test_each_figure(results, kind):
    logs = []
    files, skipped, failed = F.run_figures(str(results["ds"]), log=logs.append, only=[kind], strict=True)
    assert not skipped and not failed, (skipped, failed, logs)
    _check_png_pdf(files, kind)
    names = sorted(Path(f).name for f in files)
    expected = {"curves": ["curves_cnn.pdf", "curves_cnn.png", "curves_gcnet_s1r1.pdf", "curves_gcnet_s1r1.png"],
                "confusion": ["confusion_cnn.pdf", "confusion_cnn.png", "confusion_gcnet_s1r1.pdf",
                              "confusion_gcnet_s1r1.png"],
                "tsne": ["fig5_tsne.pdf", "fig5_tsne.png"], "filters": ["fig6_filters.pdf", "fig6_filters.png"],
                "generation": ["fig7_generation.pdf", "fig7_generation.png"],
                "errors": ["fig4_errors.pdf", "fig4_errors.png"]}[kind]
    assert names == expected
    assert all(Path(f).parent == results["ds"] / "figures" for f in files)


def test_curves_content_and_per_fold(results):
    c = F.parse_curves(results["dirs"][("gcnet_s1r1", 0)] / "train.log")
    for term in ("loss", "loss_cls", "loss_contr", "loss_gen_r", "loss_rec_r", "loss_rec_i"):
        assert len(c["train"].get(term, [])) >= ITERS, (term, c["train"].keys())
    assert c["test"].get("accuracy") and len(c["lr"]) >= ITERS
    files = F.fig_curves(str(results["ds"]), models=["cnn"], per_fold=True)
    assert sorted(Path(f).name for f in files if f.endswith(".png")) == ["curves_cnn_fold_0.png",
                                                                         "curves_cnn_fold_1.png"]


def test_confusion_sums_folds(results):
    tj = [json.loads((results["dirs"][("cnn", k)] / "test.json").read_text()) for k in (0, 1)]
    total = sum(np.asarray(t["confusion"]) for t in tj)
    assert total.sum() == sum(t["n_test"] for t in tj)
    assert F._confusion_of(tj[0], 7).tolist() == tj[0]["confusion"]


def test_missing_inputs_are_skipped_with_a_reason(results, tmp_path):
    # a results folder with the baseline only: GCNet figures name what is missing, nothing raises
    ds = tmp_path / "synthetic"
    (ds / "cnn").mkdir(parents=True)
    shutil.copytree(str(results["dirs"][("cnn", 0)]), str(ds / "cnn" / "fold_0"))
    meta = json.loads((ds / "cnn" / "fold_0" / "meta.json").read_text())
    del meta["test_lmdb"]                                    # and no test LMDB
    (ds / "cnn" / "fold_0" / "meta.json").write_text(json.dumps(meta))
    logs = []
    files, skipped, failed = F.run_figures(str(ds), log=logs.append)
    assert not failed, failed
    assert {"filters", "generation", "errors"} <= set(skipped), skipped
    for kind in ("filters", "generation", "errors"):
        assert "GCNet" in skipped[kind]
    assert "tsne" in skipped and "LMDB" in skipped["tsne"]
    assert any(Path(f).name == "curves_cnn.png" for f in files)
    # the command line: an empty folder and a missing one give messages, never a traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, rc in (([str(empty)], 0), ([str(empty), "--only", "filters"], 1), ([str(tmp_path / "nope")], 2),
                     ([str(ds), "--only", "bogus"], 2)):
        p = subprocess.run([sys.executable, str(REPO / "tools" / "figures.py")] + args, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, env=_env(), timeout=120)
        assert p.returncode == rc, (args, p.stdout)
        assert "Traceback" not in p.stdout, p.stdout
    assert "skipped" in subprocess.run([sys.executable, str(REPO / "tools" / "figures.py"), str(empty)],
                                       stdout=subprocess.PIPE, universal_newlines=True, env=_env()).stdout


# ================================================================================================ predict
def _landmarks_root(results):
    return results["data"] / "Landmarks"


def _predict(args, timeout=180):
    return subprocess.run([sys.executable, str(REPO / "tools" / "predict.py")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=_env(),
                          timeout=timeout)


def test_predict_arrays_matches_the_test_stage(results):
    from gcnet.caffe_io import read_lmdb
    for key in (("cnn", 0), ("gcnet_s1r1", 0)):
        d = results["dirs"][key]
        test = json.loads((d / "test.json").read_text())
        items = read_lmdb(str(results["ds"] / "lmdb" / "fold_0" / "test"))
        probs = predict_arrays(str(d), np.stack([a for _, a, _ in items]))
        assert probs.shape == (test["n_test"], 7)
        np.testing.assert_allclose(probs, np.asarray(test["probs"]), atol=2e-6)
        assert probs.argmax(1).tolist() == test["predictions"]


def test_predict_alignment_is_the_lmdb_one(results):
    sys.path.insert(0, str(REPO / "tools"))
    import predict as P
    from gcnet.caffe_io import read_lmdb
    index = json.loads((results["ds"] / "lmdb" / "fold_0" / "test_index.json").read_text())
    items = read_lmdb(str(results["ds"] / "lmdb" / "fold_0" / "test"))
    find = P.landmark_finder(str(_landmarks_root(results)), len(index))
    for e, (_, arr, label) in list(zip(index, items))[:4]:
        lm = find(e["frame"])
        assert lm and lm.endswith("_landmarks.txt")
        aligned, why = P.load_aligned(e["frame"], lm)
        assert why is None and label == e["label"]
        assert np.array_equal(aligned, arr[0])


def test_predict_cli_same_labels_as_test_json(results, tmp_path):
    d = results["dirs"][("gcnet_s1r1", 0)]
    test = json.loads((d / "test.json").read_text())
    frames = test["frames"]
    assert frames and len(frames) == test["n_test"]
    ref = tmp_path / "ref"
    p = _predict(["--model", d, "--json", "--landmarks", _landmarks_root(results), "--save-reference", ref] + frames)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    names = list(results["spec"].class_names)
    assert [r["file"] for r in out] == frames
    assert [r["label"] for r in out] == [names[k] for k in test["predictions"]]
    for r, pr in zip(out, test["probs"]):
        assert list(r["probs"]) == names
        np.testing.assert_allclose([r["probs"][n] for n in names], pr, atol=2e-6)
    # --save-reference: aligned input | generated reference, per file
    from PIL import Image
    pngs = sorted(ref.glob("*_reference.png"))
    assert len(pngs) == len(set(Path(f).stem for f in frames))
    with Image.open(str(pngs[0])) as im:
        assert im.size[0] > 2 * im.size[1] - 40 and im.size[1] == 4 * 64
    # the table form
    p = _predict(["--model", results["dirs"][("cnn", 0)], "--landmarks", _landmarks_root(results), frames[0]])
    assert p.returncode == 0, p.stderr
    first = names[json.loads((results["dirs"][("cnn", 0)] / "test.json").read_text())["predictions"][0]]
    assert re.search(r"^%s\s+%s\s" % (re.escape(Path(frames[0]).name), first), p.stdout, re.M), p.stdout


def test_predict_errors(results, tmp_path):
    d = results["dirs"][("cnn", 0)]
    frame = json.loads((d / "test.json").read_text())["frames"][0]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    p = _predict(["--model", d, "--json", "--landmarks", _landmarks_root(results), junk, frame,
                  tmp_path / "missing.png"])
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert [bool(r.get("error")) for r in out] == [True, False, True]
    assert "cannot read" in out[0]["error"] and out[1]["label"]
    assert "2 of 3" in p.stderr
    # a model folder without weights: one clear error
    bad = tmp_path / "model"
    bad.mkdir()
    shutil.copy(str(d / "deploy.prototxt"), str(bad))
    p = _predict(["--model", bad, frame])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "final.caffemodel" in p.stderr and "meta.json" in p.stderr and p.stdout == ""


def test_predict_detector_without_landmarks(results):
    """No landmarks: the mediapipe detector finds the 5 points (or the file is reported, never a traceback)."""
    d = results["dirs"][("gcnet_s1r1", 0)]
    frame = json.loads((d / "test.json").read_text())["frames"][0]
    p = _predict(["--model", d, "--json", frame])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert len(out) == 1
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        assert p.returncode == 1 and "mediapipe" in out[0]["error"]
        return
    if p.returncode == 0:
        assert out[0]["label"] in results["spec"].class_names
    else:
        assert out[0]["error"] == "no face found"
