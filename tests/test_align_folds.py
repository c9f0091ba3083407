"""5-point similarity alignment (closed form, template, 68->5, landmark files, detector fallback) and the
subject-independent folds."""
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gcnet.data import align as A  # noqa: E402
from gcnet.data.folds import assign_folds, fold_subjects, read_folds, write_folds  # noqa: E402
from gcnet.data.records import DataError  # noqa: E402


def random_similarity(rng):
    a = rng.uniform(-0.5, 0.5)
    s = rng.uniform(1.5, 4.0)
    t = rng.uniform(20, 120, size=2)
    return np.array([[s * np.cos(a), -s * np.sin(a), t[0]], [s * np.sin(a), s * np.cos(a), t[1]]])


def test_similarity_transform_recovers_known_transform():
    rng = np.random.RandomState(0)
    for _ in range(20):
        M = random_similarity(rng)
        src = rng.uniform(0, 60, size=(5, 2))
        dst = A.transform_points(M, src)
        assert np.allclose(A.similarity_transform(src, dst), M, atol=1e-9)
        # noisy points: least squares, still close
        noisy = dst + rng.normal(0, 0.1, size=dst.shape)
        assert np.abs(A.transform_points(A.similarity_transform(src, noisy), src) - dst).max() < 0.5


def test_similarity_has_no_reflection_and_rejects_degenerate():
    src = A.TEMPLATE_66.copy()
    mirrored = src * np.array([-1, 1]) + np.array([65, 0])
    M = A.similarity_transform(src, mirrored[[1, 0, 2, 4, 3]])      # mirrored with sides swapped: a proper fit
    assert np.linalg.det(M[:, :2]) > 0
    M2 = A.similarity_transform(src, mirrored)                      # true reflection: the best rotation instead
    assert np.linalg.det(M2[:, :2]) > 0
    with pytest.raises(ValueError, match="degenerate"):
        A.similarity_transform(np.ones((5, 2)), src)


def test_template_is_symmetric_and_inside():
    t = A.TEMPLATE_66
    assert t.shape == (5, 2)
    assert np.allclose(t[0, 0] + t[1, 0], 65) and np.allclose(t[3, 0] + t[4, 0], 65) and t[2, 0] == 32.5
    assert t[0, 1] == t[1, 1] < t[2, 1] < t[3, 1] == t[4, 1]
    assert (t > 2).all() and (t < 63).all()                        # survives any 64x64 crop
    assert np.allclose(A.template(66), t) and np.allclose(A.template(66, 15), t + 15)


def _blob_centroid(img, p, r=4):
    x0, y0 = int(round(p[0])), int(round(p[1]))
    win = img[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1].astype(np.float64)
    win = np.clip(win - 40, 0, None)
    ys, xs = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
    return np.array([(xs * win).sum() / win.sum(), (ys * win).sum() / win.sum()])


def test_align_face_maps_points_onto_template_within_one_pixel():
    import cv2
    rng = np.random.RandomState(1)
    for _ in range(5):
        # the template put in a larger image by a known similarity: these are the face's 5 points
        M = random_similarity(rng)
        M[:, :2] *= 1.0 / np.sqrt(abs(np.linalg.det(M[:, :2]))) * rng.uniform(2.0, 3.0)
        pts = A.transform_points(M, A.TEMPLATE_66)
        img = np.full((260, 300), 20, np.uint8)
        for p in pts:
            cv2.circle(img, (int(round(p[0] * 16)), int(round(p[1] * 16))), 4 * 16, 255, -1, cv2.LINE_AA, 4)
        out = A.align_face(img, pts)
        assert out.shape == (66, 66) and out.dtype == np.uint8
        # the fitted transform moves the points onto the template
        T = A.similarity_transform(pts, A.TEMPLATE_66)
        assert np.abs(A.transform_points(T, pts) - A.TEMPLATE_66).max() < 1e-6
        # and the blobs are found there in the warped image
        for p in A.TEMPLATE_66:
            assert np.abs(_blob_centroid(out, p) - p).max() < 1.0
        # a canvas with margin holds the same face in its centre
        canvas = A.align_face(img, pts, margin=15)
        assert canvas.shape == (96, 96)
        d = np.abs(canvas[15:81, 15:81].astype(int) - out)      # equal up to warpAffine's 1/32 px fixed point
        assert d.mean() < 0.2 and d.max() <= 16
        # 68-point input gives the same result
        from test_data_readers import pts68
        assert np.array_equal(A.align_face(img, pts68(pts)), out)


def test_five_points_from_68():
    lm = np.arange(136, dtype=float).reshape(68, 2)
    p5 = A.five_points(lm)
    assert np.allclose(p5[0], lm[36:42].mean(0)) and np.allclose(p5[1], lm[42:48].mean(0))
    assert np.allclose(p5[2:], lm[[30, 48, 54]])
    assert np.allclose(A.five_points(p5), p5)
    with pytest.raises(ValueError):
        A.five_points(np.zeros((10, 2)))


def test_load_points_formats(tmp_path):
    pts = np.random.RandomState(2).uniform(0, 100, size=(68, 2))
    f1 = tmp_path / "a_landmarks.txt"
    f1.write_text("".join("   %.7e   %.7e\n" % tuple(p) for p in pts))         # CK+
    f2 = tmp_path / "b.pts"
    f2.write_text("version: 1\nn_points:  68\n{\n" + "".join("%.3f %.3f\n" % tuple(p) for p in pts) + "}\n")  # iBUG
    f3 = tmp_path / "c.pts"
    f3.write_text("".join("%.4f,%.4f\n" % tuple(p) for p in pts[:5]))
    assert np.allclose(A.load_points(str(f1)), pts)
    assert np.allclose(A.load_points(str(f2)), pts, atol=1e-3)
    assert A.load_points(str(f3)).shape == (5, 2)
    bad = tmp_path / "bad.pts"
    bad.write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match="5 or 68"):
        A.load_points(str(bad))
    bad.write_text("1 2 3\n")
    with pytest.raises(ValueError):
        A.load_points(str(bad))
    pts5, why = A.get_points(np.zeros((10, 10), np.uint8), str(bad))
    assert pts5 is None and why.startswith("bad landmarks")


def test_detector_fallback_no_face():
    """Without landmarks the detector is used; on noise it finds no face (also when mediapipe is missing)."""
    img = np.random.RandomState(0).randint(0, 256, size=(80, 80), dtype=np.uint8)
    out, why = A.align_frame(img, None)
    assert out is None and why == "no face found"


# ----------------------------------------------------------------------------------------------- folds
def test_folds_rank_mod_n_and_natural_order():
    subs = ["S%03d" % i for i in (5, 10, 11, 14, 22, 26, 32, 34, 35, 37, 42, 44, 45, 46)]
    f = assign_folds(reversed(subs), 10)
    assert [f[s] for s in subs] == [i % 10 for i in range(len(subs))]
    f2 = assign_folds(["S5", "S10", "S9", "S100", "S20"], 2)
    assert f2 == {"S5": 0, "S9": 1, "S10": 0, "S20": 1, "S100": 0}
    assert fold_subjects(f, 0) == ["S005", "S042"] and fold_subjects(f, 3) == ["S014", "S046"]


def test_folds_deterministic_subject_independent(tmp_path):
    rng = np.random.RandomState(3)
    subs = ["P%03d" % i for i in rng.choice(500, 80, replace=False)]
    a = assign_folds(subs, 10)
    b = assign_folds(list(rng.permutation(subs)) * 2, 10)     # order and duplicates do not matter
    assert a == b
    groups = [set(fold_subjects(a, k)) for k in range(10)]
    assert all(len(g) == 8 for g in groups)
    assert set().union(*groups) == set(subs) and sum(len(g) for g in groups) == len(subs)   # disjoint
    path = str(tmp_path / "folds.json")
    write_folds(path, a, 10, dataset="oulu")
    assert read_folds(path) == a
    d = json.load(open(path))
    assert d["n_folds"] == 10 and d["dataset"] == "oulu" and len(d["subjects_by_fold"]) == 10
    assert not os.path.exists(path + ".partial")
    with pytest.raises(DataError, match="3 subject"):
        assign_folds(["a", "b", "c"], 10)
    with pytest.raises(DataError):
        read_folds(str(tmp_path / "missing.json"))


def test_detector_finds_synthetic_face_points(tmp_path):
    """mediapipe (when installed) finds the 5 points of a synthetic face within a few pixels, in the right order."""
    pytest.importorskip("mediapipe")
    from gcnet.data import synthetic as syn
    from gcnet.data.images import imread_gray
    root = str(tmp_path / "oulu")
    syn.make_synthetic("oulu", root, 1, seed=0, frames=2)
    d = os.path.join(root, "OriginalImg", "VL", "Strong", "P001", "Happiness")
    gray = imread_gray(os.path.join(d, "000.jpeg"))
    det = A.FaceDetector()
    pts = det.detect(gray)
    if pts is None and det.error:
        pytest.skip(det.error)
    truth = A.five_points(A.load_points(os.path.join(root + "_landmarks", "OriginalImg", "VL", "Strong", "P001",
                                                     "Happiness", "000.pts")))
    assert pts is not None and np.abs(pts - truth).max() < 5.0
    det.close()
