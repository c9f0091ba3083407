"""Readers of the original layouts (CK+, Oulu-CASIA, MMI, WebFace) and layout detection, on small hand-made trees
(tiny random images + label files) for the awkward cases, and on the synthetic sets when gcnet.data.synthetic
exists.  The helpers here are also used by test_lmdb.py."""
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gcnet.data import ckplus, mmi, oulu, webface  # noqa: E402
from gcnet.data.detect import detect_layout, read_dataset  # noqa: E402
from gcnet.data.images import split_frame  # noqa: E402
from gcnet.data.records import DataError, count_reasons  # noqa: E402

W, H = 64, 56


# ----------------------------------------------------------------------------------------------- tree builders
def face_points(rng=None):
    """A plausible 5-point face in a W x H image, slightly jittered."""
    p = np.array([[22.0, 22.0], [42.0, 22.0], [32.0, 32.0], [25.0, 41.0], [39.0, 41.0]])
    if rng is not None:
        p = p + rng.uniform(-1.5, 1.5, size=(1, 2))
    return p


def pts68(p5):
    """68 points whose 68->5 reduction is p5 (eyes 36-41 / 42-47 averaged, nose 30, mouth 48 / 54)."""
    lm = np.tile(p5.mean(0), (68, 1))
    lm[36:42] = p5[0] + np.array([[-3, 0], [-1, -1], [1, -1], [3, 0], [1, 1], [-1, 1]])
    lm[42:48] = p5[1] + np.array([[-3, 0], [-1, -1], [1, -1], [3, 0], [1, 1], [-1, 1]])
    lm[30], lm[48], lm[54] = p5[2], p5[3], p5[4]
    return lm


def write_image(path, seed=0, ext=None):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.RandomState(seed).randint(0, 256, size=(H, W), dtype=np.uint8)
    assert cv2.imwrite(path, img), path
    return img


def write_points(path, pts, fmt="%.3f %.3f"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join((fmt % tuple(p)) + "\n" for p in pts))


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_ck_tree(root, seqs, label_dir="Emotion", landmarks=True, wrap=None):
    """seqs: {(subject, seq): (n_frames, code or None)}; code may be a string written verbatim."""
    base = os.path.join(root, wrap) if wrap else root
    rng = np.random.RandomState(0)
    for (subj, seq), (n, code) in sorted(seqs.items()):
        for i in range(1, n + 1):
            stem = "%s_%s_%08d" % (subj, seq, i)
            write_image(os.path.join(base, "cohn-kanade-images", subj, seq, stem + ".png"), seed=hash(stem) % 1000)
            if landmarks:
                write_points(os.path.join(base, "Landmarks", subj, seq, stem + "_landmarks.txt"),
                             pts68(face_points(rng)), "   %.7e   %.7e")
        if code is not None:
            stem = "%s_%s_%08d" % (subj, seq, n)
            txt = code if isinstance(code, str) else "   %.7e\n" % code
            write_text(os.path.join(base, label_dir, subj, seq, stem + "_emotion.txt"), txt)
    return root


def make_oulu_tree(root, seqs, wrap=None, landmarks=True):
    """seqs: {(subject, emotion folder): n_frames}; landmarks in the <root>_landmarks sidecar."""
    base = os.path.join(root, wrap) if wrap else root
    rng = np.random.RandomState(1)
    side = root.rstrip("/") + "_landmarks"
    for (subj, emo), n in sorted(seqs.items()):
        for i in range(n):
            rel = os.path.join(*(([wrap] if wrap else []) + ["OriginalImg", "VL", "Strong", subj, emo]))
            write_image(os.path.join(root, rel, "%03d.jpeg" % i), seed=i)
            if landmarks:
                write_points(os.path.join(side, rel, "%03d.pts" % i), pts68(face_points(rng)))
    return base


def write_avi(path, n, seed=0):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H), False)
    assert vw.isOpened()
    rs = np.random.RandomState(seed)
    for i in range(n):
        vw.write(rs.randint(0, 256, size=(H, W), dtype=np.uint8))
    vw.release()


def make_mmi_tree(root, sessions, peaks=None, landmarks=True):
    """sessions: {id: dict(n=frames, emotion="4" or list, view="0" or None, subject="S001", video=bool,
    subject_in="xml"|"name")}; peaks: {id: index} written to <root>/peaks.csv."""
    rng = np.random.RandomState(2)
    side = root.rstrip("/") + "_landmarks"
    for sid, s in sessions.items():
        d = os.path.join(root, "Sessions", str(sid))
        n = s.get("n", 7)
        name = "%s-%03d" % (s.get("subject", "S001"), int(sid))
        if s.get("video"):
            write_avi(os.path.join(d, name + ".avi"), n, seed=int(sid))
        else:
            for i in range(n):
                write_image(os.path.join(d, (name + "_%04d.png" if s.get("subject_in") == "name" else "frame_%04d.png")
                                         % i), seed=i)
        if landmarks:
            for i in range(n):
                write_points(os.path.join(side, "Sessions", str(sid), "%04d.pts" % i), pts68(face_points(rng)))
        emos = s.get("emotion", "4")
        emos = emos if isinstance(emos, list) else [emos]
        tags = "".join('<Metatag Name="Emotion" Value="%s"/>' % e for e in emos)
        if s.get("view", "0") is not None:
            tags += '<Metatag Name="View" Value="%s"/>' % s.get("view", "0")
        if s.get("subject_in", "xml") == "xml":
            tags += '<Metatag Name="Subject" Value="%s"/>' % s.get("subject", "S001")
        write_text(os.path.join(d, s.get("xml", "session.xml")), '<?xml version="1.0"?><Session>%s</Session>\n' % tags)
    if peaks is not None:
        write_text(os.path.join(root, "peaks.csv"), "session,peak_frame\n" + "".join(
            "%s,%d\n" % kv for kv in peaks.items()))
    return root


def reasons(res):
    return {p: r for p, r in res.skipped}


# ----------------------------------------------------------------------------------------------- CK+
def test_ckplus_basic_labels_peaks_reference(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {("S005", "001"): (6, 3.0), ("S010", "002"): (5, 2.0),
                                               ("S010", "003"): (4, 7.0)})
    r = ckplus.read(root, "ck+")
    assert len(r.samples) == 9 and not r.skipped
    s = [x for x in r.samples if x.sequence == "S005/001"]
    assert [x.frame_index for x in s] == [3, 4, 5]                       # last 3 frames
    assert {x.label for x in s} == {2}                                   # disgust: CK+ code 3 - 1
    assert all(x.reference.endswith("S005_001_00000001.png") for x in s)  # first frame of the same sequence
    assert all(os.path.isabs(x.frame) and x.landmarks.endswith("_landmarks.txt") for x in s)
    assert s[0].ref_landmarks.endswith("S005_001_00000001_landmarks.txt")
    assert {x.label for x in r.samples if x.sequence == "S010/002"} == {1}   # contempt
    assert {x.label for x in r.samples if x.sequence == "S010/003"} == {6}   # surprise
    assert len(r.sequences) == 3 and len(r.sequences[0].frames) == 6

    r8 = ckplus.read(root, "ck+8")
    assert len(r8.samples) == 12                                         # + one neutral per sequence
    neutral = [x for x in r8.samples if x.label == 0]
    assert len(neutral) == 3 and all(x.frame == x.reference and x.frame_index == 0 for x in neutral)
    assert {x.label for x in r8.samples if x.sequence == "S005/001" and x.frame_index} == {3}  # keeps the CK+ code


def test_ckplus_emotion_labels_name_and_wrapped_root(tmp_path):
    root = str(tmp_path / "ck")
    make_ck_tree(root, {("S005", "001"): (5, 1.0)}, label_dir="Emotion_labels", wrap="CK+")
    assert detect_layout(root) == "ckplus"
    r = read_dataset("ck+", root)
    assert len(r.samples) == 3 and {x.label for x in r.samples} == {0}
    # Emotion_labels/Emotion/Sxxx (as the archive unpacks)
    root2 = str(tmp_path / "ck2")
    make_ck_tree(root2, {("S005", "001"): (5, 5.0)}, label_dir=os.path.join("Emotion_labels", "Emotion"))
    assert {x.label for x in ckplus.read(root2, "ck+").samples} == {4}


def test_ckplus_bad_input_cases(tmp_path):
    root = str(tmp_path / "ck")
    make_ck_tree(root, {("S005", "001"): (5, 3.0),      # good
                        ("S005", "002"): (5, None),     # unlabelled
                        ("S006", "001"): (5, 9.0),      # unknown code
                        ("S006", "002"): (5, "garbage\n"),
                        ("S007", "001"): (1, 4.0),      # no neutral frame (single frame)
                        ("S008", "001"): (5, 5.0),      # corrupt peak frame (below)
                        ("S009", "001"): (5, 6.0)})     # corrupt reference (below)
    bad_peak = os.path.join(root, "cohn-kanade-images", "S008", "001", "S008_001_00000005.png")
    bad_ref = os.path.join(root, "cohn-kanade-images", "S009", "001", "S009_001_00000001.png")
    for p in (bad_peak, bad_ref):
        with open(p, "wb") as f:
            f.write(b"this is not a png")
    r = ckplus.read(root, "ck+")
    rs = reasons(r)
    assert rs[os.path.join(root, "cohn-kanade-images", "S005", "002")] == "unlabelled sequence"
    assert any(p.endswith("S006_001_00000005_emotion.txt") and v.startswith("unknown label code: 9")
               for p, v in rs.items())
    assert any(p.endswith("S006_002_00000005_emotion.txt") and v.startswith("unknown label code") for p, v in rs.items())
    assert rs[os.path.join(root, "cohn-kanade-images", "S007", "001")].startswith("no neutral frame")
    assert rs[bad_peak].startswith("corrupt image")
    assert rs[bad_ref].startswith("no neutral frame: reference corrupt image")
    assert {(x.subject, x.frame_index) for x in r.samples} == {("S005", 2), ("S005", 3), ("S005", 4),
                                                                ("S008", 2), ("S008", 3)}
    c = count_reasons(r.skipped)
    assert c == {"unlabelled sequence": 1, "unknown label code": 2, "no neutral frame": 2, "corrupt image": 1}
    # code 0 (neutral) is no class of the 7-class protocol
    root0 = make_ck_tree(str(tmp_path / "ck0"), {("S001", "001"): (4, 0.0)})
    r0 = ckplus.read(root0, "ck+")
    assert not r0.samples and r0.skipped[0][1].startswith("unknown label code: 0")


def test_ckplus_without_landmarks_uses_mirror_tree(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {("S005", "001"): (4, 3.0)}, landmarks=False)
    r = ckplus.read(root, "ck+")
    assert all(s.landmarks is None for s in r.samples)
    assert any("detector" in n for n in r.notes)
    lmr = str(tmp_path / "lm")
    write_points(os.path.join(lmr, "cohn-kanade-images", "S005", "001", "S005_001_00000004.pts"), face_points())
    r = ckplus.read(root, "ck+", landmarks_root=lmr)
    got = {s.frame_index: s.landmarks for s in r.samples}
    assert got[3] and got[3].endswith("S005_001_00000004.pts") and got[1] is None


# ----------------------------------------------------------------------------------------------- errors, detection
def test_empty_missing_and_unknown_roots(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty.*%s" % str(empty)):
        detect_layout(str(empty))
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(str(tmp_path / "nope"))
    other = tmp_path / "other"
    (other / "stuff").mkdir(parents=True)
    (other / "readme.txt").write_text("x")
    with pytest.raises(DataError) as e:
        detect_layout(str(other))
    msg = str(e.value)
    for what in ("cohn-kanade-images", "OriginalImg/VL/Strong", "Sessions", "identity", str(other), "readme.txt"):
        assert what in msg
    with pytest.raises(DataError, match="empty"):
        ckplus.read(str(empty), "ck+")
    with pytest.raises(DataError, match="CK\\+"):
        ckplus.read(str(other), "ck+")
    with pytest.raises(DataError, match="unknown dataset"):
        read_dataset("nope", str(other))


def test_detect_layouts_and_mismatch(tmp_path):
    ck = make_ck_tree(str(tmp_path / "ck"), {("S005", "001"): (4, 3.0)})
    ou = str(tmp_path / "ou")
    make_oulu_tree(ou, {("P001", "Anger"): 4})
    mm = make_mmi_tree(str(tmp_path / "mm"), {1: dict(n=5)})
    wf = str(tmp_path / "wf")
    write_image(os.path.join(wf, "0000045", "001.jpg"))
    assert [detect_layout(p) for p in (ck, ou, mm, wf)] == ["ckplus", "oulu", "mmi", "webface"]
    with pytest.raises(DataError, match="needs the oulu layout.*ckplus"):
        read_dataset("oulu", ck)
    with pytest.raises(DataError, match="serves"):
        ckplus.read(ck, "mmi")


# ----------------------------------------------------------------------------------------------- Oulu
def test_oulu_wrapped_sidecar_landmarks_and_unknown_folder(tmp_path):
    root = str(tmp_path / "oulu")
    make_oulu_tree(root, {("P001", "Anger"): 6, ("P001", "Happiness"): 5, ("P002", "Surprise"): 4,
                          ("P002", "Contempt"): 4, ("P003", "Fear"): 1}, wrap="Oulu_CASIA_VIS")
    assert detect_layout(root) == "oulu"
    r = oulu.read(root, "oulu")
    assert len(r.samples) == 9
    a = [s for s in r.samples if s.sequence == "P001/Anger"]
    assert [s.frame_index for s in a] == [3, 4, 5] and {s.label for s in a} == {0}
    assert a[0].reference.endswith(os.path.join("P001", "Anger", "000.jpeg"))
    assert a[0].landmarks and a[0].landmarks.startswith(root + "_landmarks") and a[0].landmarks.endswith("003.pts")
    assert {s.label for s in r.samples if s.sequence == "P001/Happiness"} == {3}
    assert {s.label for s in r.samples if s.sequence == "P002/Surprise"} == {5}
    c = count_reasons(r.skipped)
    assert c == {"unknown label code": 1, "no neutral frame": 1}
    assert any(p.endswith("Contempt") for p, _ in r.skipped)


# ----------------------------------------------------------------------------------------------- MMI
def test_mmi_video_frames_views_peaks(tmp_path):
    root = str(tmp_path / "mmi")
    make_mmi_tree(root, {
        1: dict(n=9, emotion="4", subject="S001", video=True),
        2: dict(n=7, emotion="1", subject="S002"),
        3: dict(n=7, emotion="6", subject="S002", view="2"),          # profile: skipped
        4: dict(n=7, emotion=["1", "3"], subject="S003"),              # two emotions: skipped
        5: dict(n=7, emotion="7", subject="S003"),                     # unknown code: skipped
        6: dict(n=7, emotion="5", subject="S004", subject_in="name", xml="S004-006.xml"),
        7: dict(n=6, emotion="2", subject="S005", view=None),          # no View tag: frontal + note
    }, peaks={1: 4, 2: 1, 6: 6})
    write_text(os.path.join(root, "Sessions", "8", "notes.txt"), "no xml here")
    assert detect_layout(root) == "mmi"
    r = mmi.read(root, "mmi")
    by = {}
    for s in r.samples:
        by.setdefault(s.sequence, []).append(s)
    assert sorted(by) == ["1", "2", "6", "7"]
    v = by["1"]
    assert [s.frame_index for s in v] == [3, 4, 5]                     # centred on peak 4
    assert v[0].frame.endswith("S001-001.avi#3") and v[0].reference.endswith("S001-001.avi#0")
    assert split_frame(v[0].frame) == (os.path.join(root, "Sessions", "1", "S001-001.avi"), 3)
    assert v[0].landmarks.endswith(os.path.join("Sessions", "1", "0003.pts"))
    assert {s.label for s in v} == {3} and v[0].subject == "S001"
    assert [s.frame_index for s in by["2"]] == [1, 2, 3]               # peak 1: window shifted, never frame 0
    assert [s.frame_index for s in by["6"]] == [4, 5, 6]               # peak at the end: shifted inside
    assert by["6"][0].subject == "S004" and by["6"][0].label == 4      # subject from the file name, sadness
    assert [s.frame_index for s in by["7"]] == [2, 3, 4]               # not in the CSV: middle (6 // 2 = 3)
    rs = {os.path.basename(p): v for p, v in r.skipped}
    assert rs["3"].startswith("non-frontal view") and rs["4"].startswith("multiple emotions")
    assert rs["5"].startswith("unknown label code: 7") and rs["8"].startswith("unlabelled sequence")
    assert any("peaks.csv" in n for n in r.notes) and any("not in the peaks CSV" in n for n in r.notes)
    assert any("without a View" in n for n in r.notes)
    assert mmi.MIDDLE_NOTE not in r.notes


def test_mmi_without_peaks_csv_notes_middle(tmp_path):
    root = make_mmi_tree(str(tmp_path / "mmi"), {3: dict(n=9, subject="S002"), 4: dict(n=8, subject="S002",
                                                                                        video=True)})
    r = mmi.read(root, "mmi")
    assert mmi.MIDDLE_NOTE in r.notes
    assert [s.frame_index for s in r.samples if s.sequence == "3"] == [3, 4, 5]
    assert [s.frame_index for s in r.samples if s.sequence == "4"] == [3, 4, 5]
    # an explicit CSV (peaks_csv=) wins over the middle frame
    csv = str(tmp_path / "p.csv")
    write_text(csv, "3,2\n")
    r = mmi.read(root, "mmi", peaks_csv=csv)
    assert [s.frame_index for s in r.samples if s.sequence == "3"] == [1, 2, 3]
    assert mmi.MIDDLE_NOTE not in r.notes


# ----------------------------------------------------------------------------------------------- WebFace
def test_webface_identity_labels(tmp_path):
    root = str(tmp_path / "wf")
    for ident, n in (("0000102", 2), ("0000045", 3)):
        for i in range(n):
            write_image(os.path.join(root, ident, "%03d.jpg" % (i + 1)), seed=i)
    os.makedirs(os.path.join(root, "0000999"))
    with open(os.path.join(root, "0000102", "003.jpg"), "wb") as f:
        f.write(b"")
    r = webface.read(root)
    assert [(s.subject, s.label) for s in r.samples] == [("0000045", 0)] * 3 + [("0000102", 1)] * 2
    assert all(s.frame == s.reference for s in r.samples)
    assert count_reasons(r.skipped) == {"corrupt image": 1, "no images in identity folder": 1}


# ----------------------------------------------------------------------------------------------- synthetic sets
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from gcnet.data import synthetic as syn
    d = tmp_path_factory.mktemp("synth")
    out = {}
    for lay, n in (("ck+", 4), ("oulu", 2), ("mmi", 3), ("webface", 2)):
        out[lay] = syn.make_synthetic(lay, str(d / lay), n, seed=3, frames=5 if lay != "webface" else 2)
        out[lay]["root"] = str(d / lay)
    return out


def test_synthetic_sets_read_back(synth):
    for lay, ds, reader in (("ck+", "ck+", "ckplus"), ("oulu", "oulu", "oulu"), ("mmi", "mmi", "mmi"),
                            ("webface", "webface", "webface")):
        root = synth[lay]["root"]
        assert detect_layout(root) == reader
        r = read_dataset(ds, root)
        assert r.samples, lay
        assert all(s.landmarks and os.path.isfile(s.landmarks) for s in r.samples), lay
        if lay != "webface":
            n_lab = synth[lay]["labelled"]
            assert len({s.sequence for s in r.samples}) == n_lab, lay
            assert set(count_reasons(r.skipped)) <= {"unlabelled sequence", "non-frontal view"}, lay
    r = read_dataset("mmi", synth["mmi"]["root"])
    assert any("peaks.csv" in n for n in r.notes)
    truth = {t["sequence"]: t["peak_frame"] for t in synth["mmi"]["truth"] if t.get("view", 0) == 0}
    got = {}
    for s in r.samples:
        got.setdefault(s.sequence, []).append(s.frame_index)
    assert got and set(got) <= set(truth)
    for q, idx in got.items():
        assert len(idx) == 3 and (truth[q] in idx or truth[q] == 0), (q, idx, truth[q])
