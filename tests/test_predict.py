"""tools/predict.py and gcnet.inference.predict_arrays on a results folder made by the runner (conftest.tiny_results):
the same probabilities as the test stage, the LMDB's alignment, the command line and its errors."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, tool_env
from gcnet.caffe_io import read_lmdb
from gcnet.config import DATASETS
from gcnet.inference import predict_arrays
from gcnet.layout import TEST
from gcnet.util import read_json

NAMES = list(DATASETS["synthetic"].class_names)


def _landmarks_root(results):
    return results["data"] / "Landmarks"


def _predict(args, timeout=180):
    return subprocess.run([sys.executable, str(REPO / "tools" / "predict.py")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=tool_env(),
                          timeout=timeout)


def test_predict_arrays_matches_the_test_stage(tiny_results):
    # one BLAS thread as in the runner's test stage: other summation orders move a max-pooling near-tie now and
    # then, and the generator's unpooling carries that to the probabilities (~1e-3)
    from threadpoolctl import threadpool_limits
    for m, k in (("cnn", 0), ("cnn", 1), ("gcnet_s1r1", 0), ("gcnet_s1r1", 1)):
        d = tiny_results["layout"].model_dir(m, k)
        test = read_json(d / TEST)
        items = read_lmdb(str(tiny_results["layout"].lmdb(k, "test")))
        with threadpool_limits(limits=1):
            probs = predict_arrays(str(d), np.stack([a for _, a, _ in items]))
        assert probs.shape == (test["n_test"], 7)
        np.testing.assert_allclose(probs, np.asarray(test["probs"]), atol=2e-6)
        assert probs.argmax(1).tolist() == test["predictions"]


def test_predict_alignment_is_the_lmdb_one(tiny_results):
    from gcnet.predict import media as P
    index = json.loads(tiny_results["layout"].test_index(0).read_text())
    items = read_lmdb(str(tiny_results["layout"].lmdb(0, "test")))
    find = P.landmark_finder(str(_landmarks_root(tiny_results)), len(index))
    for e, (_, arr, label) in list(zip(index, items))[:4]:
        lm = find(e["frame"])
        assert lm and lm.endswith("_landmarks.txt")
        aligned, why = P.load_aligned(e["frame"], lm)
        assert why is None and label == e["label"]
        assert np.array_equal(aligned, arr[0])


def test_predict_cli_same_labels_as_test_json(tiny_results, tmp_path):
    d = tiny_results["layout"].model_dir("gcnet_s1r1", 0)
    test = read_json(d / TEST)
    frames = test["frames"]
    assert frames and len(frames) == test["n_test"]
    ref = tmp_path / "ref"
    p = _predict(["--model", d, "--json", "--landmarks", _landmarks_root(tiny_results), "--save-reference", ref]
                 + frames)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert [r["file"] for r in out] == frames
    assert [r["label"] for r in out] == [NAMES[k] for k in test["predictions"]]
    for r, pr in zip(out, test["probs"]):
        assert list(r["probs"]) == NAMES
        np.testing.assert_allclose([r["probs"][n] for n in NAMES], pr, atol=2e-6)
    # --save-reference: aligned input | generated reference, per file
    from PIL import Image
    pngs = sorted(ref.glob("*_reference.png"))
    assert len(pngs) == len(set(Path(f).stem for f in frames))
    with Image.open(str(pngs[0])) as im:
        assert im.size[0] > 2 * im.size[1] - 40 and im.size[1] == 4 * 64
    # the table form
    cnn = tiny_results["layout"].model_dir("cnn", 0)
    p = _predict(["--model", cnn, "--landmarks", _landmarks_root(tiny_results), frames[0]])
    assert p.returncode == 0, p.stderr
    first = NAMES[read_json(cnn / TEST)["predictions"][0]]
    assert re.search(r"^%s\s+%s\s" % (re.escape(Path(frames[0]).name), first), p.stdout, re.M), p.stdout


def test_predict_errors(tiny_results, tmp_path):
    d = tiny_results["layout"].model_dir("cnn", 0)
    frame = read_json(d / TEST)["frames"][0]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    p = _predict(["--model", d, "--json", "--landmarks", _landmarks_root(tiny_results), junk, frame,
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


def test_predict_detector_without_landmarks(tiny_results):
    """No landmarks: the mediapipe detector finds the 5 points (or the file is reported, never a traceback)."""
    d = tiny_results["layout"].model_dir("gcnet_s1r1", 0)
    frame = read_json(d / TEST)["frames"][0]
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
        assert out[0]["label"] in NAMES
    else:
        assert out[0]["error"] == "no face found"


def test_image_folders_are_walked_through_links(tmp_path):
    """Links to sub-folders are followed (they were skipped silently); a link loop is walked once and named."""
    from gcnet.predict import media as P
    photos, other = tmp_path / "photos", tmp_path / "elsewhere"
    (photos / "day1").mkdir(parents=True)
    other.mkdir()
    for f in (photos / "a.png", photos / "day1" / "b.jpg", other / "c.png"):
        f.write_bytes(b"x")
    (photos / "linked").symlink_to(other, target_is_directory=True)
    (photos / "day1" / "loop").symlink_to(photos, target_is_directory=True)
    notes = []
    items = P.collect_images([str(photos)], notes)
    assert items == [(str(photos / "a.png"), None), (str(photos / "day1" / "b.jpg"), None),
                     (str(photos / "linked" / "c.png"), None)]
    assert len(notes) == 1 and notes[0].startswith(str(photos / "day1" / "loop") + ": not followed")
    # a landmarks folder reached through a link is searched too
    lms = tmp_path / "lms"
    lms.mkdir()
    (lms / "more").symlink_to(other, target_is_directory=True)
    (other / "c_landmarks.txt").write_text("1 2\n")
    assert P.landmark_finder(str(lms), 2)(str(photos / "linked" / "c.png")) == str(lms / "more" / "c_landmarks.txt")


def test_data_readers_follow_linked_subject_folders(tmp_path):
    """The readers reach subject folders that are links (CK+ here) exactly as real ones."""
    from test_data_readers import make_ck_tree
    from gcnet.data.detect import read_dataset
    root = make_ck_tree(str(tmp_path / "ck"), {("S001", "001"): (4, 3.0), ("S002", "001"): (4, 5.0)})
    images = Path(root) / "cohn-kanade-images"
    shutil.move(str(images / "S002"), str(tmp_path / "S002"))
    (images / "S002").symlink_to(tmp_path / "S002", target_is_directory=True)
    assert {s.subject for s in read_dataset("ck+", root).samples} == {"S001", "S002"}


def _mixed_folder(tiny_results, tmp_path, model, weights_of, drop_sha=False):
    """A copy of <model>/fold_0 whose final.caffemodel is <weights_of>'s (meta.json's sha256 record removed when
    drop_sha, so that the layer check is the one that speaks)."""
    lay = tiny_results["layout"]
    d = tmp_path / ("%s_with_%s" % (model, weights_of))
    shutil.copytree(str(lay.model_dir(model, 0)), str(d))
    shutil.copy(str(lay.model_dir(weights_of, 0) / "final.caffemodel"), str(d / "final.caffemodel"))
    if drop_sha:
        meta = read_json(d / "meta.json")
        del meta["weights_sha256"]
        (d / "meta.json").write_text(json.dumps(meta))
    return d


def _one_line_exit_2(p, *needles):
    err = [line for line in p.stderr.splitlines() if line.startswith("predict:")]     # (tool_env: Caffe's log)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == "", (p.returncode, p.stderr[-2000:])
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], (n, err[0])


def test_predict_refuses_weights_of_another_model(tiny_results, tmp_path):
    """A GCNet's deploy.prototxt beside a cnn's final.caffemodel (or the reverse) used to print confident labels
    (exit 0) from a half-initialised net; now exit 2 naming the weights file."""
    frame = read_json(tiny_results["layout"].model_dir("cnn", 0) / TEST)["frames"][0]
    lm = ["--landmarks", _landmarks_root(tiny_results)]
    for model, other in (("gcnet_s1r1", "cnn"), ("cnn", "gcnet_s1r1")):
        d = _mixed_folder(tiny_results, tmp_path, model, other)          # meta.json records other weights
        _one_line_exit_2(_predict(["--model", d] + lm + [frame]), str(d / "final.caffemodel"), "sha256 differs")
        d = _mixed_folder(tiny_results, tmp_path / "nosha", model, other, drop_sha=True)
        _one_line_exit_2(_predict(["--model", d] + lm + [frame]), str(d / "final.caffemodel"),
                         "weights of net '%s', not of '%s'" % (other, model))
    assert "weights_sha256" in read_json(tiny_results["layout"].model_dir("cnn", 0) / "meta.json")
    # the test stage's load (python -m gcnet.experiment.evaluate) says the same, exit 2, one line
    d = _mixed_folder(tiny_results, tmp_path / "ev", "gcnet_s1r1", "cnn", drop_sha=True)
    lay = tiny_results["layout"]
    p = subprocess.run([sys.executable, "-m", "gcnet.experiment.evaluate", "--dir", str(d), "--lmdb",
                        str(lay.lmdb(0, "test")), "--n-classes", "7"], cwd=str(REPO), env=tool_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(err) == 1 and "weights of net 'cnn', not of 'gcnet_s1r1'" in err[0]
    assert read_json(d / TEST) == read_json(lay.model_dir("gcnet_s1r1", 0) / TEST)     # test.json untouched


def test_predict_on_damaged_weights_exits_2_not_134(tiny_results, tmp_path):
    frame = read_json(tiny_results["layout"].model_dir("cnn", 0) / TEST)["frames"][0]
    d = tmp_path / "cnn"
    shutil.copytree(str(tiny_results["layout"].model_dir("cnn", 0)), str(d))
    data = (d / "final.caffemodel").read_bytes()
    for name, bad in (("truncated", data[: len(data) // 2]), ("empty", b"")):
        (d / "final.caffemodel").write_bytes(bad)
        _one_line_exit_2(_predict(["--model", d, "--landmarks", _landmarks_root(tiny_results), frame]),
                         str(d / "final.caffemodel"))
        meta = read_json(d / "meta.json")                      # without the sha256 record: the parse check
        meta.pop("weights_sha256", None)
        (d / "meta.json").write_text(json.dumps(meta))
        _one_line_exit_2(_predict(["--model", d, "--landmarks", _landmarks_root(tiny_results), frame]),
                         str(d / "final.caffemodel"), "damaged or not a Caffe .caffemodel")
