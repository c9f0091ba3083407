"""Bad input of the data stage (issue 12): every case ends in a named skip counted once in build_report.json (with
the samples it cost) or in exit 2 with one line naming the path; a damaged LMDB under a finished build is rebuilt.
Trees are written in the real layouts by the helpers of test_data_readers.py."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from test_data_readers import make_ck_tree, make_mmi_tree, make_oulu_tree, write_text  # noqa: E402
from gcnet.caffe_io import read_lmdb  # noqa: E402
from gcnet.data import ckplus, lmdb_build as L, mmi, oulu  # noqa: E402
from gcnet.data.records import count_reasons  # noqa: E402

BUILD = os.path.join(REPO, "tools", "build_lmdb.py")
SYNTH = os.path.join(REPO, "tools", "make_synthetic.py")
IMG = "cohn-kanade-images"


def cli(*args, tool=BUILD, timeout=300):
    return subprocess.run([sys.executable, tool] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout)


def build(root, out, *extra):
    return cli("ck+", "--data", root, "--out", out, "--n-folds", "2", "--augment", "0", *extra)


def report(out):
    with open(os.path.join(str(out), "build_report.json")) as f:
        rep = json.load(f)
    return rep, {p: (r, n) for p, r, n in rep["skipped"]}


def frame(root, subj, seq, i):
    return os.path.join(root, IMG, subj, seq, "%s_%s_%08d.png" % (subj, seq, i))


def label_file(root, subj, seq, n):
    return os.path.join(root, "Emotion", subj, seq, "%s_%s_%08d_emotion.txt" % (subj, seq, n))


def one_line_error(p, *needles):
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


# ----------------------------------------------------------------------------------------------- 1 label codes
@pytest.mark.parametrize("text,want", [
    ("   3.0000000e+00\n", 2), ("3", 2), ("+7.0E+00", 6), ("1.", 0), ("  5.000 \n", 4),
    ("nan", "unknown label code: 'nan'"), ("inf", "unknown label code: 'inf'"),
    ("-Infinity", "unknown label code: '-Infinity'"), ("1e400", "unknown label code: '1e400'"),
    ("3.5", "unknown label code: 3.5"), ("9.0000000e+00", "unknown label code: 9"),
    ("-1", "unknown label code: -1"), ("0x3", "unknown label code: '0x3'"), ("1_0", "unknown label code: '1_0'"),
    ("3 4", "unknown label code: '3 4'"), ("", "unreadable label file: empty"),
])
def test_ckplus_label_parsing_accepts_exactly_the_codes(tmp_path, text, want):
    root = make_ck_tree(str(tmp_path / "ck"), {("S005", "001"): (5, text)})
    r = ckplus.read(root, "ck+")
    if isinstance(want, int):
        assert not r.skipped and {s.label for s in r.samples} == {want} and len(r.samples) == 3
    else:
        assert not r.samples
        assert r.skipped == [(label_file(root, "S005", "001", 5), want)]
        assert r.lost == {label_file(root, "S005", "001", 5): 3}          # the sequence's 3 peak samples


def test_nan_and_inf_labels_are_named_skips_in_the_build(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {("S001", "001"): (5, 3.0), ("S002", "001"): (5, 4.0),
                                               ("S003", "001"): (5, "nan\n"), ("S004", "001"): (5, "inf\n")})
    out = tmp_path / "out"
    p = build(root, out)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "skipped: unknown label code 2; 6 sample(s) lost" in p.stdout
    rep, entries = report(out)
    assert entries[label_file(root, "S003", "001", 5)] == ("unknown label code: 'nan'", 3)
    assert entries[label_file(root, "S004", "001", 5)] == ("unknown label code: 'inf'", 3)
    assert rep["skipped_by_reason"] == {"unknown label code": 2} and rep["n_samples_lost"] == 6


# ----------------------------------------------------------------------------------------------- 2 unwritable output
@pytest.mark.parametrize("out", ["/proc/gcnet_no_such/out", "/sys/gcnet_no_such", "/proc/self/status"])
def test_unwritable_output_exits_2_before_any_work(tmp_path, out):
    root = make_ck_tree(str(tmp_path / "ck"), {("S001", "001"): (4, 3.0), ("S002", "001"): (4, 3.0)})
    one_line_error(build(root, out), "build_lmdb: error: output folder %s is not writable" % out)
    p = subprocess.run([sys.executable, "-m", "gcnet.experiment", "ck+", "--data", root, "--out", out,
                        "--stop-after", "lmdb"], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    one_line_error(p, "error: output folder %s is not writable" % os.path.join(out, "ck+"))
    p = cli("--layout", "ck+", "--subjects", "1", "--out", os.path.join(out, "ck"), tool=SYNTH)
    one_line_error(p, "make_synthetic.py: error: folder %s is not writable" % out)


@pytest.fixture
def read_only_view(tmp_path):
    """mount(path) -> a read-only bind mount of path (genuinely read-only for root); skips where mounting is
    not allowed."""
    mounts = []

    def mount(src):
        dst = str(tmp_path / ("ro%d" % len(mounts)))
        os.makedirs(dst)
        ok = subprocess.run(["mount", "--bind", src, dst], capture_output=True).returncode == 0
        if ok:
            mounts.append(dst)
            ok = subprocess.run(["mount", "-o", "remount,bind,ro", dst], capture_output=True).returncode == 0
        if not ok:
            pytest.skip("cannot make a read-only bind mount here (needs root with CAP_SYS_ADMIN)")
        return dst
    yield mount
    for m in reversed(mounts):
        subprocess.run(["umount", m], capture_output=True)


def test_finished_build_on_a_read_only_file_system(tmp_path, read_only_view):
    root = make_ck_tree(str(tmp_path / "ck"), {("S001", "001"): (4, 3.0), ("S002", "001"): (4, 3.0)})
    out = str(tmp_path / "out")
    assert build(root, out).returncode == 0
    ro = read_only_view(out)
    with pytest.raises(OSError):
        open(os.path.join(ro, "probe"), "w")
    p = build(root, ro)                                   # up to date: nothing to write, no lock file needed
    assert p.returncode == 0 and "up to date" in p.stdout and not p.stderr, p.stderr
    p = build(root, ro, "--augment", "1")                 # out of date: cannot be rebuilt there
    one_line_error(p, "output folder %s is not writable (Read-only file system)" % ro, "out of date")


# ----------------------------------------------------------------------------------------------- 3 no frames
def test_labelled_sequence_without_frames_is_a_named_skip(tmp_path, monkeypatch):
    seqs = {(s, "001"): (5, 3.0) for s in ("S001", "S002", "S003", "S004", "S005")}
    root = make_ck_tree(str(tmp_path / "ck"), seqs)
    shutil.rmtree(os.path.join(root, IMG, "S003"))                          # missing image folder
    empty = os.path.join(root, IMG, "S004", "001")
    for f in os.listdir(empty):                                             # empty image folder
        os.remove(os.path.join(empty, f))
    out = tmp_path / "out"
    p = build(root, out)
    assert p.returncode == 0, p.stderr
    rep, entries = report(out)
    assert entries[os.path.join(root, IMG, "S003", "001")] == ("no frames: image folder missing", 3)
    assert entries[empty] == ("no frames: no image in the folder", 3)
    assert rep["skipped_by_reason"] == {"no frames": 2} and rep["samples_lost_by_reason"] == {"no frames": 6}
    # an image folder that cannot be listed (root reads any folder, so the refusal is simulated)
    unreadable = os.path.join(root, IMG, "S005", "001")
    real = os.listdir

    def listdir(path="."):
        if os.path.abspath(str(path)) == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "listdir", listdir)
    r = ckplus.read(root, "ck+")
    assert dict(r.skipped)[unreadable] == "no frames: cannot list the image folder (Permission denied)"
    assert r.lost[unreadable] == 3 and {s.subject for s in r.samples} == {"S001", "S002"}


def test_oulu_and_mmi_unmappable_labels_and_sessions_without_frames(tmp_path):
    root = str(tmp_path / "oulu")
    make_oulu_tree(root, {("P001", "Anger"): 5, ("P002", "Happiness"): 5, ("P002", "Contempt"): 6})
    strong = os.path.join(root, "OriginalImg", "VL", "Strong")
    os.makedirs(os.path.join(strong, "P003", "Fear"))                      # emotion folder without frames
    r = oulu.read(root, "oulu")
    got = {p: (why, r.lost[p]) for p, why in r.skipped}
    assert got == {os.path.join(strong, "P002", "Contempt"): ("unknown label code: folder name 'Contempt'", 3),
                   os.path.join(strong, "P003", "Fear"): ("no frames: no image in the folder", 3)}
    assert len(r.samples) == 6

    mroot = str(tmp_path / "mmi")
    make_mmi_tree(mroot, {1: dict(n=7, emotion="4"), 2: dict(n=7, emotion="inf", subject="S002"),
                          3: dict(n=7, emotion="nan", subject="S003"), 4: dict(n=7, emotion="2.5", subject="S004"),
                          5: dict(n=7, emotion="5.0", subject="S005")}, peaks={1: 3, 5: 3})
    with open(os.path.join(mroot, "peaks.csv"), "a") as f:
        f.write("2,nan\n")
    nomedia = os.path.join(mroot, "Sessions", "6")                          # XML but no video or image
    write_text(os.path.join(nomedia, "session.xml"),
               '<?xml version="1.0"?><Session><Metatag Name="Emotion" Value="3"/></Session>\n')
    r = mmi.read(mroot, "mmi")
    got = {os.path.relpath(p, mroot): (why, r.lost[p]) for p, why in r.skipped}
    assert got == {os.path.join("Sessions", "2"): ("unknown label code: inf", 3),
                   os.path.join("Sessions", "3"): ("unknown label code: nan", 3),
                   os.path.join("Sessions", "4"): ("unknown label code: 2.5", 3),
                   os.path.join("Sessions", "6"): ("no frames: no video or image in the folder", 3),
                   "peaks.csv:4": ("bad peak frame: 'nan' (peaks CSV)", 0)}
    assert sorted({s.sequence for s in r.samples}) == ["1", "5"] and {s.label for s in r.samples if
                                                                      s.sequence == "5"} == {4}


# ----------------------------------------------------------------------------------------------- 4 counting
def test_each_bad_file_is_one_entry_with_the_samples_it_cost(tmp_path):
    seqs = {(s, "001"): (6, 3.0) for s in ("S001", "S002", "S003", "S004", "S005", "S006")}
    root = make_ck_tree(str(tmp_path / "ck"), seqs)
    zero_peak, text_peak = frame(root, "S001", "001", 6), frame(root, "S002", "001", 5)
    empty_ref, trunc_ref = frame(root, "S003", "001", 1), frame(root, "S004", "001", 1)
    open(zero_peak, "wb").close()
    with open(text_peak, "wb") as f:
        f.write(b"not an image")
    open(empty_ref, "wb").close()
    with open(trunc_ref, "rb") as f:
        head = f.read(40)
    with open(trunc_ref, "wb") as f:                                        # passes the signature check
        f.write(head)
    out = tmp_path / "out"
    p = build(root, out)
    assert p.returncode == 0, p.stderr
    rep, entries = report(out)
    assert [e[0] for e in rep["skipped"]].count(zero_peak) == 1 and len(rep["skipped"]) == 4
    assert entries[zero_peak] == ("corrupt image: empty file", 1)
    assert entries[text_peak] == ("corrupt image: not a PNG file", 1)
    assert entries[empty_ref] == ("no neutral frame: reference corrupt image: empty file", 3)
    assert entries[trunc_ref] == ("no neutral frame: reference corrupt image: cannot decode", 3)
    assert rep["skipped_by_reason"] == {"corrupt image": 2, "no neutral frame": 2}
    assert rep["samples_lost_by_reason"] == {"corrupt image": 2, "no neutral frame": 6}
    m = json.load(open(os.path.join(str(out), "manifest.json")))
    assert m["n_samples"] == 6 * 3 - rep["n_samples_lost"] == 10


# ----------------------------------------------------------------------------------------------- 5 damaged cache
def test_damaged_lmdb_under_a_finished_build_is_rebuilt(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (5, 3.0) for s in ("S001", "S002", "S003", "S004")})
    out = str(tmp_path / "out")
    m = L.build_lmdbs("ck+", root, out, n_folds=2, augment_copies=1, progress=None)
    n_test0, n_train1 = m["folds"]["0"]["n_test"], m["folds"]["1"]["n_train"]
    open(os.path.join(out, "fold_0", "test", "data.mdb"), "w").close()     # zero bytes
    L.write_lmdb(os.path.join(out, "fold_1", "train"), [(np.zeros((2, 66, 66), np.uint8), 0)], 1, "x")
    assert L.lmdb_problem(os.path.join(out, "fold_0", "test"), n_test0).startswith("cannot be opened")
    lines = []
    m2 = L.build_lmdbs("ck+", root, out, n_folds=2, augment_copies=1, progress=lines.append)
    assert m2["cached"] is False
    assert any(ln.startswith("[build_lmdb] damaged LMDB fold_0/test: cannot be opened") and "rebuilding it" in ln
               for ln in lines), lines
    assert "[build_lmdb] damaged LMDB fold_1/train: holds 1 entries, its manifest records %d: rebuilding it" \
        % n_train1 in lines
    assert "  fold 0 train: unchanged, kept" in lines and "  fold 1 test: unchanged, kept" in lines
    assert len(read_lmdb(os.path.join(out, "fold_0", "test"))) == n_test0
    assert len(read_lmdb(os.path.join(out, "fold_1", "train"))) == n_train1
    assert any(n.startswith("rebuilt damaged LMDB fold_0/test") for n in m2["notes"])
    lines = []
    assert L.build_lmdbs("ck+", root, out, n_folds=2, augment_copies=1, progress=lines.append)["cached"] is True
    # a truncated data.mdb (not empty) is caught by its size
    mdb = os.path.join(out, "fold_1", "pretrain", "data.mdb")
    with open(mdb, "r+b") as f:
        f.truncate(os.path.getsize(mdb) // 2)
    assert "truncated" in L.lmdb_problem(os.path.dirname(mdb))
    p = build(root, out, "--augment", "1")
    assert p.returncode == 0 and "damaged LMDB fold_1/pretrain: data.mdb is truncated" in p.stdout, p.stdout


# ----------------------------------------------------------------------------------------------- 6 the rest
def test_missing_landmark_file_is_a_counted_detector_fallback(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (5, 3.0) for s in ("S001", "S002")})
    lm = os.path.join(root, "Landmarks", "S001", "001", "S001_001_00000004_landmarks.txt")
    os.remove(lm)
    out = tmp_path / "out"
    p = build(root, out)
    assert p.returncode == 0, p.stderr
    rep, entries = report(out)
    assert rep["detector_fallbacks"] == [frame(root, "S001", "001", 4)]
    assert any(n.startswith("1 frame(s) without a landmark file were located by the face detector")
               for n in rep["notes"])
    assert json.load(open(os.path.join(str(out), "manifest.json")))["n_detector_fallbacks"] == 1
    # random-noise images hold no face: the detector's failure is a named skip of that frame
    assert frame(root, "S001", "001", 4) in entries


def test_partial_leftovers_are_removed_at_the_start_of_a_build(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (4, 3.0) for s in ("S001", "S002")})
    out = tmp_path / "out"
    assert build(root, out).returncode == 0
    left = [out / "fold_0" / "train.partial", out / "manifest.json.partial", out / "align_cache.npz.partial.npz"]
    left[0].mkdir()
    (left[0] / "data.mdb").write_bytes(b"x")
    left[1].write_text("{")
    left[2].write_bytes(b"")
    p = build(root, out)
    assert p.returncode == 0 and "up to date" in p.stdout
    assert not any(x.exists() for x in left)
    assert "[build_lmdb] removed %s (left by an interrupted build)" % left[0] in p.stdout


def test_build_lmdb_exit_codes(tmp_path, monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(os.path.dirname(BUILD))         # the tool imports tools/_repo.py first
    spec = importlib.util.spec_from_file_location("build_lmdb_tool", BUILD)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (4, 3.0) for s in ("S001", "S002")})
    args = ["ck+", "--data", root, "--out", str(tmp_path / "out"), "--quiet"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(L, "build_lmdbs", interrupted)
    assert tool.main(args) == 130
    monkeypatch.setattr(L, "build_lmdbs", disk_full)
    assert tool.main(args) == 1
    with pytest.raises(SystemExit) as e:
        tool.main(["ck+", "--bogus"])
    assert e.value.code == 2
    assert count_reasons([("a", "x: 1"), ("b", "x: 2")], {"a": 2, "b": 3}) == {"x": 5}


# ----------------------------------------------------------------------------------------------- issue 22
def test_subject_ids_differing_only_in_case_stop_the_build(tmp_path):
    """S005 and s005 (trees merged on a case-insensitive disk) would be two subjects in two folds: the same person
    in training and test.  CK+, Oulu and MMI alike stop with exit 2 naming both folders; nothing is built."""
    from gcnet.data.detect import read_dataset
    from gcnet.util import DataError
    root = make_ck_tree(str(tmp_path / "ck"), {("S001", "001"): (4, 3.0), ("S005", "001"): (4, 3.0),
                                               ("s005", "002"): (4, 5.0), ("S007", "001"): (4, 3.0)})
    out = tmp_path / "out"
    line = one_line_error(build(root, out), "S005", "s005", os.path.join(root, IMG, "S005"),
                          os.path.join(root, IMG, "s005"))
    assert "differ only in letter case" in line
    assert not (out / "manifest.json").exists() and not (out / "fold_0").exists()

    oroot = str(tmp_path / "oulu")
    base = make_oulu_tree(oroot, {("P001", "Anger"): 4, ("p001", "Happiness"): 4, ("P002", "Fear"): 4})
    strong = os.path.join(base, "OriginalImg", "VL", "Strong")
    with pytest.raises(DataError, match="P001 and p001 differ only in letter case") as e:
        read_dataset("oulu", oroot)
    assert os.path.join(strong, "P001") in str(e.value) and os.path.join(strong, "p001") in str(e.value)

    mroot = str(tmp_path / "mmi")
    make_mmi_tree(mroot, {1: dict(subject="S001"), 2: dict(subject="s001"), 3: dict(subject="S002")})
    with pytest.raises(DataError, match="S001 and s001 differ only in letter case") as e:
        read_dataset("mmi", mroot)
    assert os.path.join(mroot, "Sessions", "1") in str(e.value) and os.path.join(mroot, "Sessions", "2") in str(e.value)


def test_landmarks_outside_the_image_are_a_named_skip(tmp_path):
    """A landmark file that does not fit its image (here: points of an image 10 times larger) is a named skip of
    that frame, counted with the sample it cost; it used to give a blank aligned face with a label."""
    from test_data_readers import face_points, pts68, write_points
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (5, 3.0) for s in ("S001", "S002")})
    lm = os.path.join(root, "Landmarks", "S001", "001", "S001_001_00000004_landmarks.txt")
    write_points(lm, pts68(face_points()) * 10)
    edge = os.path.join(root, "Landmarks", "S002", "001", "S002_001_00000004_landmarks.txt")
    write_points(edge, pts68(face_points() * [1, 1.3]))        # mouth corners at y ~ 53 of 56: inside, kept
    out = tmp_path / "out"
    p = build(root, out)
    assert p.returncode == 0, p.stderr
    rep, entries = report(out)
    why, lost = entries[frame(root, "S001", "001", 4)]
    assert why.startswith("bad landmarks: left eye point (220.0, 220.0) is outside the 64x56 image") and lm in why
    assert lost == 1 and len(rep["skipped"]) == 1
    assert json.load(open(os.path.join(str(out), "manifest.json")))["n_samples"] == 2 * 3 - 1


def test_lmdb_write_error_on_a_full_disk_names_the_path(tmp_path, monkeypatch):
    """LMDB reports a full disk as an I/O error of its commit (measured on a full tmpfs): write_lmdb turns it into
    ENOSPC naming the LMDB when the disk has no room left (any other LMDB error: EIO naming it), and leaves no
    half-written *.partial behind.  (The runner's one-line exit 1 on a real full disk: tests/experiment.)"""
    import errno
    import lmdb
    from gcnet.data.lmdb_build import store
    real_open = lmdb.open

    class Txn:                               # LMDB's commit on a full disk, as measured on a full tmpfs
        def __init__(self, txn):
            self.txn = txn

        def put(self, *a):
            return self.txn.put(*a)

        def commit(self):
            self.txn.abort()
            raise lmdb.Error("mdb_txn_commit: Input/output error")

    class Env:
        def __init__(self, *a, **k):
            self.env = real_open(*a, **k)

        def begin(self, write=False):
            return Txn(self.env.begin(write=write))

        def __getattr__(self, name):
            return getattr(self.env, name)
    monkeypatch.setattr(lmdb, "open", Env)
    items = [(np.zeros((2, 66, 66), np.uint8), 0)] * 3
    path = str(tmp_path / "train")
    for free, code in ((0, errno.ENOSPC), (1 << 40, errno.EIO)):
        monkeypatch.setattr(store, "disk_free", lambda p, free=free: free)
        with pytest.raises(OSError) as e:
            store.write_lmdb(path, iter(items), 3, "x")
        assert e.value.errno == code and e.value.filename == path
        assert os.listdir(str(tmp_path)) == []
    from gcnet.util import os_error_line
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", path)).startswith(
        "no space left on device: cannot write %s" % path)
