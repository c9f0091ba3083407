"""tools/predict.py beyond photos in Caffe: the onnxruntime backend (same records, and without Caffe), videos and
frame folders (one record per processed frame, --every, faceless frames kept as errors, the timeline plot), and the
person's own reference (--reference IMG / first:K)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, needs_caffe, random_model_folder, tool_env
from gcnet.util import read_json

pytestmark = needs_caffe
TOL = 1e-4
FPS = 10.0
MODEL_FILES = ("deploy.prototxt", "deploy_ref.prototxt", "train_val.prototxt", "meta.json", "final.caffemodel")


def _predict(args, env=None, timeout=300):
    p = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py")] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env or tool_env(),
                       timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return p


def _json(p):
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def models(tiny_results, tmp_path_factory):
    """Copies of the runner's cnn and gcnet_s1r1 fold 0 with their ONNX export: {model: folder}."""
    from gcnet.onnx_export import export_model
    base = tmp_path_factory.mktemp("models")
    out = {}
    for m in ("cnn", "gcnet_s1r1"):
        src = tiny_results["layout"].model_dir(m, 0)
        d = base / m / "fold_0"
        d.mkdir(parents=True)
        for f in MODEL_FILES:
            if (src / f).exists():
                shutil.copy(str(src / f), str(d / f))
        export_model(d)
        out[m] = d
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """clip.avi: 12 synthetic frames of one face (MJPG, 10 fps) with landmark files <lm>/clip/<i>_landmarks.txt,
    the same frames as a frame folder, and blank5.avi with frame 5 a uniform grey (no face)."""
    import cv2
    from gcnet.data.synthetic.face import sample_identity
    from gcnet.data.synthetic.layouts import _fmt_ck_landmarks
    from gcnet.data.synthetic.render import DEFAULT_SIZE
    from gcnet.data.synthetic.sequences import SeqSpec, render_sequence
    d = tmp_path_factory.mktemp("videos")
    frames, lms, _ = render_sequence(sample_identity(np.random.default_rng(3)),
                                     SeqSpec("S1", "001", "happy", 1.0, True, 12, (3, 1)), DEFAULT_SIZE)

    def write(path, imgs):
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, DEFAULT_SIZE, True)
        assert w.isOpened()
        for f in imgs:
            w.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
        w.release()
    write(d / "clip.avi", frames)
    blank = list(frames)
    blank[5] = np.full_like(frames[5], 128)
    write(d / "blank5.avi", blank)
    (d / "lm" / "clip").mkdir(parents=True)
    (d / "frames").mkdir()
    for i, (f, lm) in enumerate(zip(frames, lms)):
        (d / "lm" / "clip" / ("%d_landmarks.txt" % i)).write_text(_fmt_ck_landmarks(lm))
        cv2.imwrite(str(d / "frames" / ("f%d.png" % i)), f)
        (d / "lm" / ("f%d_landmarks.txt" % i)).write_text(_fmt_ck_landmarks(lm))
    return d


def _test_frames(tiny_results, n=6):
    return read_json(tiny_results["layout"].model_dir("gcnet_s1r1", 0) / "test.json")["frames"][:n]


def test_onnx_backend_gives_the_records_of_caffe(models, tiny_results):
    """Same files, labels and probabilities (1e-4) on photos; a GCNet image may differ beyond 1e-4 only where an
    onnxruntime max-pooling argmax differs from Caffe's at a near tie (gcnet.onnx_check)."""
    from gcnet.inference import preprocess
    from gcnet.onnx_check import compare
    from gcnet.predict.media import landmark_finder, load_aligned
    frames = _test_frames(tiny_results)
    lm = tiny_results["data"] / "Landmarks"
    for m, d in models.items():
        args = ["--model", d, "--json", "--landmarks", lm] + frames
        if m == "gcnet_s1r1":
            args += ["--reference", frames[0]]
        caffe_out = _json(_predict(args + ["--backend", "caffe"]))
        onnx_out = _json(_predict(args + ["--backend", "onnx"]))
        assert [r["file"] for r in onnx_out] == [r["file"] for r in caffe_out] == frames
        find = landmark_finder(str(lm), len(frames))
        x = preprocess(np.stack([load_aligned(f, find(f))[0] for f in frames]))
        flipped = compare(d, "deploy.prototxt", d / "model.onnx", {"x": x}, threads=None)["flipped"]
        assert m == "gcnet_s1r1" or not flipped.any()
        for a, b, flip in zip(caffe_out, onnx_out, flipped):
            diff = max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"])
            assert flip or (diff <= TOL and a["label"] == b["label"]), (m, a["file"], diff)
            if m == "gcnet_s1r1":     # the deploy_ref net has no unpooling: within 1e-4 always
                wa, wb = a["with_reference"], b["with_reference"]
                assert wa["label"] == wb["label"] and a["given_reference"] == frames[0]
                assert max(abs(wa["probs"][k] - wb["probs"][k]) for k in wa["probs"]) <= TOL


def test_onnx_backend_runs_where_caffe_cannot_be_imported(models, tiny_results, tmp_path):
    fake = tmp_path / "fake" / "caffe"
    fake.mkdir(parents=True)
    marker = tmp_path / "caffe_import_attempted"
    (fake / "__init__.py").write_text("open(%r, 'w').close()\nraise ImportError('no Caffe here (test)')\n"
                                      % str(marker))
    env = tool_env()
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env["PYTHONPATH"]])
    frames = _test_frames(tiny_results, 2)
    lm = tiny_results["data"] / "Landmarks"
    d = models["gcnet_s1r1"]
    args = ["--model", d, "--json", "--landmarks", lm, "--reference", frames[1]] + frames
    with_caffe = _json(_predict(args + ["--backend", "onnx"]))
    p = _predict(args + ["--backend", "onnx"], env=env)
    assert p.returncode == 0, p.stderr
    assert _json(p) == with_caffe and not marker.exists()            # never tried to import caffe
    p = _predict(args, env=env)                                      # default: caffe if importable, else onnx
    assert p.returncode == 0, p.stderr
    assert _json(p) == with_caffe and marker.exists()
    # the onnx file alone (metadata: class names, transform) and its _ref sibling
    solo = tmp_path / "solo"
    solo.mkdir()
    shutil.copy(str(d / "model.onnx"), str(solo / "net.onnx"))
    shutil.copy(str(d / "model_ref.onnx"), str(solo / "net_ref.onnx"))
    p = _predict(["--model", solo / "net.onnx"] + args[2:], env=env)
    assert p.returncode == 0 and _json(p) == with_caffe, p.stderr
    p = _predict(["--model", d, "--backend", "caffe", frames[0]], env=env)
    assert p.returncode == 2 and "pycaffe cannot be imported" in p.stderr and p.stdout == ""
    bare = tmp_path / "bare"
    shutil.copytree(str(d), str(bare), ignore=shutil.ignore_patterns("*.onnx"))
    p = _predict(["--model", bare, frames[0]], env=env)
    assert p.returncode == 2 and "model.onnx does not exist" in p.stderr and "export_onnx.py" in p.stderr


def test_video_gives_one_record_per_processed_frame(models, videos, tmp_path, backend="onnx"):
    d = models["gcnet_s1r1"]
    lm = videos / "lm"
    plot = tmp_path / "timeline.png"
    p = _predict(["--model", d, "--json", "--backend", backend, "--landmarks", lm, videos / "clip.avi",
                  "--plot", plot])
    assert p.returncode == 0, p.stderr
    out = _json(p)
    assert [r["frame"] for r in out] == list(range(12))
    assert [r["time"] for r in out] == [round(i / FPS, 4) for i in range(12)]
    assert all(r["file"] == str(videos / "clip.avi") and r["label"] and len(r["probs"]) == 7 for r in out)
    from PIL import Image
    with Image.open(str(plot)) as im:
        assert im.size[0] == 1100 and im.size[1] > 300
    p = _predict(["--model", d, "--json", "--backend", backend, "--landmarks", lm, videos / "clip.avi",
                  "--every", "3"])
    every = _json(p)
    assert p.returncode == 0 and [r["frame"] for r in every] == [0, 3, 6, 9]
    for r in every:
        a, b = r["probs"], out[r["frame"]]["probs"]
        assert max(abs(a[k] - b[k]) for k in a) <= 2e-6
    # the same frames as a frame folder: the same predictions (PNG frames vs MJPG: close, not equal)
    p = _predict(["--model", d, "--json", "--backend", backend, "--landmarks", lm, "--frame-folders",
                  "--fps", FPS, videos / "frames"])
    folder = _json(p)
    assert p.returncode == 0, p.stderr
    assert [r["frame"] for r in folder] == list(range(12)) and {r["video"] for r in folder} == {str(videos / "frames")}
    assert [os.path.basename(r["file"]) for r in folder] == ["f%d.png" % i for i in range(12)]
    assert [r["time"] for r in folder] == [r["time"] for r in out]


def test_a_faceless_frame_is_an_error_record(models, videos, tmp_path):
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        pytest.skip("mediapipe (requirements-face.txt) is not installed: no face detector to find no face")
    plot = tmp_path / "t.png"
    p = _predict(["--model", models["cnn"], "--json", "--backend", "onnx", videos / "blank5.avi", "--plot", plot])
    assert p.returncode == 1
    out = _json(p)
    assert [r["frame"] for r in out] == list(range(12))
    assert out[5]["error"] == "no face found" and "label" not in out[5]
    assert all(r.get("label") for i, r in enumerate(out) if i != 5)
    assert "blank5.avi#5: no face found" in p.stderr and "1 of 12 record(s) failed" in p.stderr
    assert plot.exists()


def test_reference_first_k_is_the_mean_of_the_first_aligned_frames(models, videos):
    from gcnet.inference import DeployModel
    from gcnet.predict.media import align_image
    import cv2
    d = models["gcnet_s1r1"]
    lm = videos / "lm"
    p = _predict(["--model", d, "--json", "--landmarks", lm, videos / "clip.avi", "--every", "4",
                  "--reference", "first:3"])
    assert p.returncode == 0, p.stderr
    out = _json(p)
    assert [r["frame"] for r in out] == [0, 4, 8]
    assert all(r["given_reference"] == "first:3" and r["reference_frames"] == [0, 1, 2] for r in out)
    cap = cv2.VideoCapture(str(videos / "clip.avi"))
    faces = []
    for i in range(9):
        ok, img = cap.read()
        faces.append(align_image(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), str(lm / "clip" / ("%d_landmarks.txt" % i)))[0])
    cap.release()
    ref = DeployModel(d, deploy="deploy_ref.prototxt").predict(np.stack([faces[0], faces[4], faces[8]]),
                                                              reference=np.mean(np.stack(faces[:3]), axis=0)[None])
    names = list(out[0]["probs"])
    np.testing.assert_allclose([[r["with_reference"]["probs"][n] for n in names] for r in out], ref, atol=2e-6)


def test_reference_usage_errors(models, videos, tiny_results, tmp_path):
    from gcnet.predict.run import PredictOptions, run_predict
    from gcnet.util import UsageError
    frame = _test_frames(tiny_results, 1)[0]
    gc, clip = str(models["gcnet_s1r1"]), str(videos / "clip.avi")
    cases = [
        (dict(model=str(models["cnn"]), inputs=[frame], reference=frame), "classifies X alone"),
        (dict(model=gc, inputs=[frame], reference="first:3"), "is a photo"),
        (dict(model=gc, inputs=[clip], reference="first:0"), "positive integer"),
        (dict(model=gc, inputs=[frame], reference=str(tmp_path / "none.png")), "no such image file"),
        (dict(model=gc, inputs=[clip], every=0), "--every must be a positive"),
        (dict(model=gc, inputs=[clip], fps=10.0), "give --frame-folders"),
        (dict(model=gc, inputs=[frame], plot=str(tmp_path / "p.png")), "give a video or a frame folder"),
    ]
    for kw, why in cases:
        with pytest.raises(UsageError, match=why.replace("-", "\\-")):
            run_predict(PredictOptions(**kw))
    # on the command line: exit 2, one line, nothing on stdout
    p = _predict(["--model", models["cnn"], "--reference", frame, frame])
    assert p.returncode == 2 and p.stdout == "" and "classifies X alone" in p.stderr
    assert len([l for l in p.stderr.splitlines() if l.startswith("predict:")]) == 1, p.stderr
    # a GCNet folder from before deploy_ref.prototxt: a clear error naming it
    old = tmp_path / "old"
    shutil.copytree(str(models["gcnet_s1r1"]), str(old))
    (old / "deploy_ref.prototxt").unlink()
    p = _predict(["--model", old, "--reference", frame, frame])
    assert p.returncode == 2 and "deploy_ref.prototxt" in p.stderr and "run_folds.sh" in p.stderr


def test_a_net_that_takes_the_reference_as_input(tiny_results, tmp_path):
    """cnn_pair (the paper's Fig. 2(b): deploy inputs x and xr): exported as it is, and predict needs --reference
    and feeds it, from the net's inputs."""
    d = random_model_folder(tmp_path / "cnn_pair" / "fold_0", "cnn_pair")
    p = subprocess.run([sys.executable, str(REPO / "tools" / "export_onnx.py"), "--model", str(d)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=tool_env())
    assert p.returncode == 0 and "inputs x, xr -> outputs prob" in p.stdout, p.stderr
    assert not (d / "model_ref.onnx").exists()
    frames = _test_frames(tiny_results, 2)
    lm = tiny_results["data"] / "Landmarks"
    out = {}
    for backend in ("caffe", "onnx"):
        p = _predict(["--model", d, "--backend", backend, "--landmarks", lm, frames[0]])
        assert p.returncode == 2 and "takes the person's reference as its input `xr`" in p.stderr
        p = _predict(["--model", d, "--backend", backend, "--json", "--landmarks", lm, "--reference", frames[1],
                      frames[0]])
        assert p.returncode == 0, p.stderr
        (out[backend],) = _json(p)
        assert out[backend]["given_reference"] == frames[1] and "with_reference" not in out[backend]
    a, b = out["caffe"]["probs"], out["onnx"]["probs"]
    assert max(abs(a[k] - b[k]) for k in a) <= TOL and out["caffe"]["label"] == out["onnx"]["label"]
