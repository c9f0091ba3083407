"""Synthetic data sets (gcnet/data/synthetic.py, tools/make_synthetic.py): exact layouts, landmarks that match the
drawing, expression ramps, determinism, identities, atomic writing and the CLI."""
import hashlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import cv2  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gcnet.data import synthetic as syn  # noqa: E402

CK_FLOAT = re.compile(r"^\s+-?\d\.\d{7}e[+-]\d{2}$")
CK_LM_LINE = re.compile(r"^\s+-?\d\.\d{7}e[+-]\d{2}\s+-?\d\.\d{7}e[+-]\d{2}$")
PTS_LINE = re.compile(r"^-?\d+\.\d+ -?\d+\.\d+$")
SIZE = (160, 120)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    out = {}
    for layout, n, frames in (("ck+", 4, None), ("oulu", 2, None), ("mmi", 4, 16), ("webface", 3, None)):
        d = str(base / layout.replace("+", "p"))
        out[layout] = (d, syn.make_synthetic(layout, d, n, seed=7, size=SIZE, frames=frames))
    return out


def read_ck_landmarks(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) == 68, path
    assert all(CK_LM_LINE.match(ln) for ln in lines), path
    return np.array([[float(v) for v in ln.split()] for ln in lines])


def read_pts(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) == 68, path
    assert all(PTS_LINE.match(ln) for ln in lines), path
    return np.array([[float(v) for v in ln.split()] for ln in lines])


def read_avi(path):
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))
    cap.release()
    return frames


def tree_digest(*roots):
    h = hashlib.sha256()
    for root in roots:
        for dp, dn, fn in sorted(os.walk(root)):
            dn.sort()
            for n in sorted(fn):
                p = os.path.join(dp, n)
                h.update(os.path.relpath(p, root).encode())
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def eye_centre_ok(img, lm, tol=1.6, win=4):
    """The darkest point (after a small blur) near each landmark eye centre is within tol px of it."""
    sm = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    for sl in (slice(36, 42), slice(42, 48)):
        cx, cy = lm[sl].mean(0)
        x0, y0 = int(round(cx)) - win, int(round(cy)) - win
        patch = sm[y0:y0 + 2 * win + 1, x0:x0 + 2 * win + 1]
        iy, ix = np.unravel_index(np.argmin(patch), patch.shape)
        if np.hypot(x0 + ix - cx, y0 + iy - cy) > tol:
            return False
    return True


def diff_curve(frames):
    f0 = cv2.GaussianBlur(frames[0].astype(np.float32), (0, 0), 1.0)
    return np.array([np.abs(cv2.GaussianBlur(f.astype(np.float32), (0, 0), 1.0) - f0).mean() for f in frames])


def ck_sequences(root):
    img_root = os.path.join(root, "cohn-kanade-images")
    for subj in sorted(os.listdir(img_root)):
        for seq in sorted(os.listdir(os.path.join(img_root, subj))):
            yield subj, seq, os.path.join(img_root, subj, seq)


# ----------------------------------------------------------------------------------------------- layouts
def test_ckplus_layout(sets):
    root, summ = sets["ck+"]
    assert sorted(os.listdir(root)) == ["Emotion", "Landmarks", "cohn-kanade-images"]
    subjects = sorted(os.listdir(os.path.join(root, "cohn-kanade-images")))
    assert len(subjects) == 4 and all(re.match(r"^S\d{3}$", s) for s in subjects)
    assert subjects[0] == "S005"
    n_seq = n_frames = n_lab = 0
    codes = []
    for subj, seq, d in ck_sequences(root):
        assert re.match(r"^\d{3}$", seq)
        files = sorted(os.listdir(d))
        n = len(files)
        assert 10 <= n <= 16
        assert files == ["%s_%s_%08d.png" % (subj, seq, i) for i in range(1, n + 1)]
        img = cv2.imread(os.path.join(d, files[0]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (SIZE[1], SIZE[0]) and img.dtype == np.uint8
        lmd = os.path.join(root, "Landmarks", subj, seq)
        assert sorted(os.listdir(lmd)) == ["%s_%s_%08d_landmarks.txt" % (subj, seq, i) for i in range(1, n + 1)]
        lm = read_ck_landmarks(os.path.join(lmd, "%s_%s_%08d_landmarks.txt" % (subj, seq, n)))
        assert (lm[:, 0] > 0).all() and (lm[:, 0] < SIZE[0]).all() and (lm[:, 1] > 0).all()
        emd = os.path.join(root, "Emotion", subj, seq)
        if os.path.isdir(emd):
            assert os.listdir(emd) == ["%s_%s_%08d_emotion.txt" % (subj, seq, n)]   # last frame only
            with open(os.path.join(emd, os.listdir(emd)[0])) as f:
                text = f.read()
            assert text.endswith("\n") and CK_FLOAT.match(text.rstrip("\n"))
            codes.append(float(text))
            n_lab += 1
        n_seq += 1
        n_frames += n
    assert all(c == int(c) and 1 <= c <= 7 for c in codes)
    assert len(set(codes)) == min(7, len(codes))          # all expressions covered (distinct until all seen)
    assert 0 < n_lab < n_seq or n_seq < 6
    assert (summ["subjects"], summ["sequences"], summ["labelled"], summ["frames"]) == (4, n_seq, n_lab, n_frames)
    assert summ["landmarks_dir"] is None and not os.path.exists(root + ".partial")


def test_ckplus_class_coverage_and_unlabelled_share():
    plan = syn.plan("ck+", 60, seed=3)
    seqs = [s for _, _, ss in plan for s in ss]
    lab = [s for s in seqs if s.labelled]
    assert set(s.expression for s in lab) == set(syn.EXPRESSIONS)
    assert 0.08 < 1 - len(lab) / len(seqs) < 0.28               # about 1 in 6 unlabelled
    per_subj = [len(ss) for _, _, ss in plan]
    assert min(per_subj) >= 3 and max(per_subj) <= 6
    for _, _, ss in plan:                                         # different expressions within a subject
        e = [s.expression for s in ss if s.labelled]
        assert len(e) == len(set(e))
    ids = [int(n[1:]) for n, _, _ in plan]
    assert ids == sorted(ids) and ids[-1] - ids[0] > len(ids) - 1  # non-contiguous subject ids


def test_oulu_layout(sets):
    root, summ = sets["oulu"]
    side = summ["landmarks_dir"]
    assert side == os.path.join(os.path.dirname(root), os.path.basename(root) + "_landmarks")
    base = os.path.join(root, "OriginalImg", "VL", "Strong")
    assert os.listdir(root) == ["OriginalImg"]
    assert sorted(os.listdir(base)) == ["P001", "P002"]
    for p in ("P001", "P002"):
        assert sorted(os.listdir(os.path.join(base, p))) == ["Anger", "Disgust", "Fear", "Happiness", "Sadness",
                                                             "Surprise"]
        for e in os.listdir(os.path.join(base, p)):
            files = sorted(os.listdir(os.path.join(base, p, e)))
            assert files == ["%03d.jpeg" % i for i in range(len(files))] and len(files) >= 10
            lmd = os.path.join(side, "OriginalImg", "VL", "Strong", p, e)
            assert sorted(os.listdir(lmd)) == [f.replace(".jpeg", ".pts") for f in files]
            lm = read_pts(os.path.join(lmd, "000.pts"))
            img = cv2.imread(os.path.join(base, p, e, "000.jpeg"), cv2.IMREAD_GRAYSCALE)
            assert img.shape == (SIZE[1], SIZE[0]) and eye_centre_ok(img, lm)
    assert summ["sequences"] == 12 and summ["labelled"] == 12


def test_mmi_layout_videos_peaks_and_profiles(sets):
    root, summ = sets["mmi"]
    side = summ["landmarks_dir"]
    assert sorted(os.listdir(root)) == ["Sessions", "peaks.csv"]
    with open(os.path.join(root, "peaks.csv")) as f:
        rows = f.read().splitlines()
    assert rows[0] == "session,peak_frame"
    peaks = {int(a): int(b) for a, b in (r.split(",") for r in rows[1:])}
    sessions = sorted(os.listdir(os.path.join(root, "Sessions")), key=int)
    assert set(peaks) == set(int(s) for s in sessions)
    kinds, views, emotions = set(), [], set()
    for s in sessions:
        d = os.path.join(root, "Sessions", s)
        meta = {m.get("Name"): m.get("Value") for m in ET.parse(os.path.join(d, "session.xml")).getroot()
                .iter("Metatag")}
        assert re.match(r"^S\d{3}$", meta["Subject"]) and meta["View"] in ("0", "1")
        assert meta["Emotion"] in {"1", "2", "3", "4", "5", "6"}
        views.append(meta["View"])
        files = sorted(os.listdir(d))
        avis = [f for f in files if f.endswith(".avi")]
        if avis:
            assert len(avis) == 1 and re.match(r"^%s-\d{3}\.avi$" % meta["Subject"], avis[0])
            assert files == sorted(avis + ["session.xml"])
            frames = read_avi(os.path.join(d, avis[0]))
            cap = cv2.VideoCapture(os.path.join(d, avis[0]))
            assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)
            cap.release()
            kinds.add("avi")
        else:
            pngs = [f for f in files if f != "session.xml"]
            assert pngs == ["frame_%04d.png" % i for i in range(len(pngs))]
            frames = [cv2.imread(os.path.join(d, f), cv2.IMREAD_GRAYSCALE) for f in pngs]
            kinds.add("frames")
        n = len(frames)
        assert n >= 16 and frames[0].shape == (SIZE[1], SIZE[0])
        assert sorted(os.listdir(os.path.join(side, "Sessions", s))) == ["%04d.pts" % i for i in range(n)]
        pk = peaks[int(s)]
        assert 0 < pk < n - 1
        if meta["View"] == "0":
            emotions.add(meta["Emotion"])
            curve = diff_curve(frames)
            assert abs(int(np.argmax(curve)) - pk) <= 1                # neutral -> peak -> neutral
            assert curve[pk] > 2 * curve[-1] or curve[pk] - curve[-1] > 1.0
            assert eye_centre_ok(frames[pk], read_pts(os.path.join(side, "Sessions", s, "%04d.pts" % pk)))
    assert kinds == {"avi", "frames"}
    assert "1" in views and views.count("0") > views.count("1")
    assert emotions == {"1", "2", "3", "4", "5", "6"}


def test_webface_layout(sets):
    root, summ = sets["webface"]
    side = summ["landmarks_dir"]
    ids = sorted(os.listdir(root))
    assert len(ids) == 3 and all(re.match(r"^\d{7}$", i) for i in ids)
    total = 0
    for i in ids:
        files = sorted(os.listdir(os.path.join(root, i)))
        assert 10 <= len(files) <= 20 and files == ["%03d.jpg" % k for k in range(1, len(files) + 1)]
        assert sorted(os.listdir(os.path.join(side, i))) == [f.replace(".jpg", ".pts") for f in files]
        img = cv2.imread(os.path.join(root, i, files[0]), cv2.IMREAD_GRAYSCALE)
        assert eye_centre_ok(img, read_pts(os.path.join(side, i, "001.pts")))
        total += len(files)
    assert summ["frames"] == total


def test_sidecar_found_by_reader_helper(sets):
    from gcnet.data import records
    for layout in ("oulu", "mmi", "webface"):
        root, summ = sets[layout]
        assert records.auto_landmarks_root(root) == summ["landmarks_dir"]


# ----------------------------------------------------------------------------------------------- content
def test_landmarks_match_drawing_and_expressions_ramp(sets):
    root, summ = sets["ck+"]
    checked = 0
    for subj, seq, d in ck_sequences(root):
        files = sorted(os.listdir(d))
        frames = [cv2.imread(os.path.join(d, f), cv2.IMREAD_GRAYSCALE) for f in files]
        lms = [read_ck_landmarks(os.path.join(root, "Landmarks", subj, seq, f[:-4] + "_landmarks.txt"))
               for f in files]
        for k in (0, len(frames) // 2, len(frames) - 1):
            assert eye_centre_ok(frames[k], lms[k]), (d, k)
            shifted = lms[k] + np.array([5.0, 0.0])                     # a wrong position must fail
            assert not eye_centre_ok(frames[k], shifted, win=4)
        # the mouth landmarks enclose the lips: darker inside than on the cheeks next to the corners
        lm = lms[-1]
        mask = np.zeros_like(frames[-1])
        cv2.fillPoly(mask, [np.round(lm[48:60]).astype(np.int32)], 255)
        inside = frames[-1][mask > 0].mean()
        eye_d = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
        cheek = [frames[-1][int(lm[i, 1] - 0.35 * eye_d), int(lm[i, 0] + s * 0.3 * eye_d)]
                 for i, s in ((48, -1), (54, 1))]
        assert inside < np.mean(cheek) - 5
        # expression grows monotonically from the neutral first frame
        curve = diff_curve(frames)
        assert curve[-1] > curve[1] + 0.3
        assert (np.diff(curve) > -0.15).all(), curve
        checked += 1
    assert checked == summ["sequences"]


def test_landmarks_follow_expressions():
    ident = syn.sample_identity(np.random.default_rng(0))
    lm0 = syn.face_geometry(ident, ident.rest)["landmarks"]
    lm = {e: syn.face_geometry(ident, ident.rest + syn.expression_vector(e))["landmarks"] for e in syn.EXPRESSIONS}
    up = lambda l, i: -l[i, 1]                                           # noqa: E731 (image y points down)
    assert up(lm["happy"], 48) > up(lm0, 48) + 0.05 and up(lm["happy"], 54) > up(lm0, 54) + 0.05
    assert up(lm["sadness"], 48) < up(lm0, 48) - 0.04
    c = lm["contempt"]
    assert abs((up(c, 54) - up(lm0, 54)) - (up(c, 48) - up(lm0, 48))) > 0.05                  # asymmetric
    assert up(lm["surprise"], 19) > up(lm0, 19) + 0.08 and up(lm["anger"], 21) < up(lm0, 21) - 0.05
    opening = lambda l: l[66, 1] - l[62, 1]                              # noqa: E731
    assert opening(lm["surprise"]) > opening(lm0) + 0.15
    eye_h = lambda l: l[41, 1] - l[37, 1]                                # noqa: E731
    assert eye_h(lm["surprise"]) > eye_h(lm0) * 1.3 and eye_h(lm["anger"]) < eye_h(lm0) * 0.85
    assert lm["anger"][21, 0] > lm0[21, 0] + 0.03                         # brows drawn together


def test_expression_change_without_motion():
    """With head motion and lighting fixed, the pixel change from the neutral face grows with the ramp."""
    ident = syn.sample_identity(np.random.default_rng([2, 0, 3]))
    for e in syn.EXPRESSIONS:
        vec = syn.expression_vector(e)
        imgs = [syn.render_face(ident, np.where(syn._NONNEG, np.clip(ident.rest + w * vec, 0, None),
                                                ident.rest + w * vec), SIZE)[0].astype(np.float32)
                for w in np.linspace(0, 1, 6)]
        d = [np.abs(im - imgs[0]).mean() for im in imgs]
        assert d[-1] > 0.08, (e, d)
        assert (np.diff(d) > -0.02).all(), (e, d)


def test_identities_differ_and_rest_like_weak_expressions():
    ids = [syn.sample_identity(np.random.default_rng([1, 0, k])) for k in range(40)]
    imgs = [syn.render_face(i, i.rest, SIZE)[0].astype(np.float32) for i in ids[:6]]
    for a in range(6):
        for b in range(a + 1, 6):
            assert np.abs(imgs[a] - imgs[b]).mean() > 3.0
    rest = np.array([i.rest for i in ids])
    P = syn._P
    # resting lip corners / brows spread about as much as a weak (0.4) expression moves them
    assert rest[:, P["corner_l"]].std() > 0.3 * 0.4 * syn.EXPRESSION_OFFSETS["happy"]["corner_l"]
    assert rest[:, P["brow_in"]].std() > 0.3 * 0.4 * syn.EXPRESSION_OFFSETS["surprise"]["brow_in"]
    assert rest[:, P["corner_l"]].std() < 1.0 * syn.EXPRESSION_OFFSETS["happy"]["corner_l"]


# ----------------------------------------------------------------------------------------------- determinism, I/O
def test_determinism_and_seed(tmp_path):
    for layout in ("ck+", "mmi"):
        a, b, c = (str(tmp_path / ("%s_%s" % (layout.replace("+", "p"), k))) for k in "abc")
        syn.make_synthetic(layout, a, 2, seed=11, frames=5)
        syn.make_synthetic(layout, b, 2, seed=11, frames=5)
        syn.make_synthetic(layout, c, 2, seed=12, frames=5)
        extra = (lambda r: [r + "_landmarks"] if layout != "ck+" else [])
        assert tree_digest(a, *extra(a)) == tree_digest(b, *extra(b))
        assert tree_digest(a, *extra(a)) != tree_digest(c, *extra(c))


def test_refuse_force_and_atomic(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        syn.make_synthetic("oulu", str(out), 1, seed=0, frames=3)
    assert (out / "keep.txt").exists() and not (tmp_path / "set.partial").exists()
    s = syn.make_synthetic("oulu", str(out), 1, seed=0, frames=3, force=True)
    assert not (out / "keep.txt").exists() and s["frames"] == 18
    assert sorted(os.listdir(tmp_path)) == ["set", "set_landmarks"]
    with pytest.raises(ValueError):
        syn.make_synthetic("nope", str(tmp_path / "x"), 1, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    syn.make_synthetic("webface", str(empty), 1, seed=0, frames=2)   # an empty folder is fine
    assert sorted(os.listdir(empty)) and not (tmp_path / "empty.partial").exists()


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic.py")] + list(args),
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    out = str(tmp_path / "ck")
    r = _cli("--layout", "ck+", "--subjects", "2", "--seed", "5", "--out", out, "--frames", "4")
    assert r.returncode == 0, r.stderr
    assert "ETA" in r.stdout and "2 subjects" in r.stdout and "frames" in r.stdout
    assert os.path.isdir(os.path.join(out, "cohn-kanade-images"))
    r = _cli("--layout", "ck+", "--subjects", "2", "--seed", "5", "--out", out)       # non-empty, no --force
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--force" in r.stderr
    for bad in (["--layout", "xyz", "--subjects", "2", "--out", out],
                ["--layout", "mmi", "--subjects", "0", "--out", out, "--size", "12"],
                ["--layout", "mmi", "--subjects", "2", "--out", out, "--frames", "2", "--force"]):
        r = _cli(*bad)
        assert r.returncode == 2, bad
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    r = _cli("--help")
    assert r.returncode == 0 and "--layout" in r.stdout and "cohn-kanade-images" in r.stdout
