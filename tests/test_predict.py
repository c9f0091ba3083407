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
