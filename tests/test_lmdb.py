"""Per-fold paired LMDB builder: round trip through lmdb + caffe_pb2 and through Caffe's own Data layer, caching,
rebuilds, atomic output, skipped-file reporting, WebFace pretraining, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from test_data_readers import make_ck_tree, make_mmi_tree, write_image, write_points, face_points  # noqa: E402
from gcnet.caffe_io import decode_datum, encode_datum, read_lmdb  # noqa: E402
from gcnet.data import lmdb_build as L  # noqa: E402
from gcnet.data.records import DataError  # noqa: E402
from gcnet.layout import LmdbLayout, ResultsLayout  # noqa: E402


def _caffe_pb2():
    try:
        from caffe.proto import caffe_pb2
        return caffe_pb2
    except Exception:
        return None


def ck_seqs():
    """6 subjects, 8 labelled sequences (one unlabelled)."""
    s = {}
    for i, subj in enumerate(["S005", "S010", "S011", "S014", "S022", "S026"]):
        s[(subj, "001")] = (5, float(1 + i % 7))
        if i % 3 == 0:
            s[(subj, "002")] = (4, float(1 + (i + 3) % 7))
    s[("S026", "003")] = (4, None)
    return s


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmdb")
    root = make_ck_tree(str(d / "ck"), ck_seqs())
    # a truncated png (passes the signature check, fails to decode) as a peak frame
    bad = os.path.join(root, "cohn-kanade-images", "S011", "001", "S011_001_00000005.png")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[:40])
    # a reference whose landmark file is broken: its whole sequence has no usable neutral frame
    lm = os.path.join(root, "Landmarks", "S014", "001", "S014_001_00000001_landmarks.txt")
    with open(lm, "w") as f:
        f.write("1 2\n")
    out = str(d / "out")
    lines = []
    m = L.build_lmdbs("ck+", root, out, n_folds=3, augment_copies=2, seed=0, progress=lines.append)
    return dict(root=root, out=out, m=m, lines=lines, bad=bad)


def test_datum_encoding_matches_caffe_pb2():
    a = np.random.RandomState(0).randint(0, 256, size=(2, 66, 66)).astype(np.uint8)
    buf = encode_datum(a, 300)
    back, label = decode_datum(buf)
    assert np.array_equal(back, a) and label == 300
    pb2 = _caffe_pb2()
    if pb2 is None:
        pytest.skip("caffe not importable: wire format checked against our own decoder only")
    d = pb2.Datum(channels=2, height=66, width=66, data=a.tobytes(), label=300)
    assert d.SerializeToString() == buf


def test_manifest_counts_folds_and_report(built):
    m, out = built["m"], built["out"]
    assert m["cached"] is False and m["n_folds"] == 3 and m["folds_built"] == [0, 1, 2]
    # 8 labelled sequences * 3 peaks = 24; - 1 corrupt frame (S011) - 3 with a bad reference (S014/001)
    assert m["n_samples"] == 20
    assert sum(m["counts"]["per_class"].values()) == 20 and len(m["counts"]["per_class"]) == 7
    assert m["counts"]["per_subject"]["S011"] == 2 and "S014" in m["counts"]["per_subject"]
    folds = json.load(open(os.path.join(out, "folds.json")))["folds"]
    assert folds == {"S005": 0, "S010": 1, "S011": 2, "S014": 0, "S022": 1, "S026": 2}
    rep = json.load(open(os.path.join(out, "build_report.json")))
    # one entry per file; the bad reference's entry carries the 3 samples of its sequence
    assert rep["skipped_by_reason"] == {"corrupt image": 1, "no neutral frame": 1, "unlabelled sequence": 1}
    assert rep["samples_lost_by_reason"] == {"corrupt image": 1, "no neutral frame": 3, "unlabelled sequence": 0}
    assert rep["n_samples_lost"] == 24 - m["n_samples"] == m["n_samples_lost"]
    paths = {p: (r, n) for p, r, n in rep["skipped"]}
    assert paths[built["bad"]][0].startswith("corrupt image") and paths[built["bad"]][1] == 1
    ref = os.path.join(built["root"], "cohn-kanade-images", "S014", "001", "S014_001_00000001.png")
    assert paths[ref][0].startswith("no neutral frame: reference bad landmarks") and paths[ref][1] == 3
    assert rep["detector_fallbacks"] == [] and m["n_detector_fallbacks"] == 0
    assert m["skipped_by_reason"] == rep["skipped_by_reason"]
    for k in range(3):
        f = m["folds"][str(k)]
        assert f["n_train"] == 3 * f["n_train_unique"]
        assert f["n_train_unique"] + f["n_test"] == 20
        fm = json.load(open(os.path.join(out, "fold_%d" % k, "manifest.json")))
        assert fm["n_identities"] == 4 and fm["class_names"][0] == "anger"
    assert any("ETA" in ln or "done in" in ln for ln in built["lines"])
    # nothing half-written left behind
    for dirpath, dirnames, filenames in os.walk(out):
        assert not [n for n in dirnames + filenames if ".partial" in n], dirpath


def test_lmdb_round_trip_lmdb_package(built):
    out = built["out"]
    for k in range(3):
        test = read_lmdb(os.path.join(out, "fold_%d" % k, "test"))
        index = json.load(open(os.path.join(out, "fold_%d" % k, "test_index.json")))
        assert len(test) == len(index) > 0
        assert [key for key, _, _ in test] == ["%08d" % i for i in range(len(test))]
        subj = set()
        for (key, arr, label), rec in zip(test, index):
            assert arr.shape == (2, 66, 66) and arr.dtype == np.uint8 and label == rec["label"]
            assert rec["frame"] != rec["reference"] and rec["reference"].endswith("00000001.png")
            subj.add(rec["subject"])
        assert subj == set(json.load(open(os.path.join(out, "folds.json")))["subjects_by_fold"][str(k)])
        train = read_lmdb(os.path.join(out, "fold_%d" % k, "train"))
        assert len(train) == built["m"]["folds"][str(k)]["n_train"]
        assert all(a.shape == (2, 66, 66) for _, a, _ in train)
        # the unaugmented copies of the test samples are not in train (subject independence)
        test_x = {a[0].tobytes() for _, a, _ in test}
        assert not test_x & {a[0].tobytes() for _, a, _ in train}
        pre = read_lmdb(os.path.join(out, "fold_%d" % k, "pretrain"))
        assert pre and all(np.array_equal(a[0], a[1]) for _, a, _ in pre)
        assert {lab for _, _, lab in pre} == set(range(4))
    # X and X_r of a test pair are the aligned frame and its sequence's first frame
    pb2 = _caffe_pb2()
    if pb2 is not None:
        import lmdb
        env = lmdb.open(os.path.join(out, "fold_0", "test"), readonly=True, lock=False)
        with env.begin() as txn:
            d = pb2.Datum()
            d.ParseFromString(txn.get(b"00000000"))
        env.close()
        assert (d.channels, d.height, d.width, len(d.data)) == (2, 66, 66, 2 * 66 * 66)


def test_files_are_where_the_layouts_say(built, tmp_path):
    lay = LmdbLayout(built["out"])
    assert lay.folds() == [0, 1, 2]
    for p in (lay.manifest, lay.folds_json, lay.build_report, lay.align_cache):
        assert p.is_file(), p
    for k in range(3):
        paths = json.load(open(lay.fold_manifest(k)))["paths"]
        assert paths == {"train": "fold_%d/train" % k, "test": "fold_%d/test" % k, "pretrain": "fold_%d/pretrain" % k,
                         "test_index": "fold_%d/test_index.json" % k}
        assert all(lay.root / p == lay.test_index(k) or (lay.root / p / "data.mdb").is_file() for p in paths.values())
    # a results folder's LMDB paths are the same ones
    res = ResultsLayout(tmp_path, "ck+")
    assert res.lmdb(2, "train") == res.lmdbs.split(2, "train") == res.lmdb_root / "fold_2" / "train"
    assert (res.test_index(1), res.lmdb_manifest()) == (res.lmdbs.test_index(1), res.lmdb_root / "manifest.json")
    assert res.webface_lmdb({}) == res.lmdb_root / "pretrain_webface"


def test_same_augmentation_on_both_channels(monkeypatch):
    from gcnet.data.lmdb_build import augment
    rng = np.random.RandomState(0)
    cx = rng.randint(0, 256, size=(96, 96)).astype(np.uint8)
    x, r = L.augment_pair(cx, cx.copy(), np.random.RandomState(5))
    assert np.array_equal(x, r) and x.shape == (66, 66)
    assert not np.array_equal(x, L.crop(cx))
    # no-op parameters give the centre crop
    monkeypatch.setattr(augment, "AUG_SCALE", (1, 1))
    monkeypatch.setattr(augment, "AUG_ROTATION_DEG", (0, 0))
    monkeypatch.setattr(augment, "AUG_INTENSITY", (1, 1))
    x, _ = L.augment_pair(cx, cx, np.random.RandomState(5))
    assert np.array_equal(x, L.crop(cx))


def test_caffe_data_layer_reads_the_lmdb(built, tmp_path):
    """Caffe's own Data layer: TEST phase crops the centre ([1:65, 1:65] of 66), labels as stored.  Note: BVLC
    Caffe mirrors whenever `mirror: true`, in TEST phase too (do_mirror = mirror() && Rand(2)), so a TEST data layer
    must say mirror: false; with mirror: true each pair comes back as is or with BOTH channels flipped."""
    import caffe
    src = os.path.join(built["out"], "fold_1", "test")
    stored = read_lmdb(src)
    n = len(stored)
    exp = np.stack([a[:, 1:65, 1:65] for _, a, _ in stored]).astype(np.float32) * np.float32(0.00390625)
    caffe.set_mode_cpu()
    for mirror in ("false", "true"):
        p = tmp_path / ("net_%s.prototxt" % mirror)
        p.write_text("""
name: "t"
layer { name: "data" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  transform_param { crop_size: 64 mirror: %s scale: 0.00390625 }
  data_param { source: "%s" batch_size: %d backend: LMDB } }
""" % (mirror, src, n))
        net = caffe.Net(str(p), caffe.TEST)
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
        assert data.shape == (n, 2, 64, 64)
        assert [int(v) for v in label] == [lab for _, _, lab in stored]
        if mirror == "false":
            assert np.allclose(data, exp, atol=1e-6)
        else:
            for d, e in zip(data, exp):
                assert np.allclose(d, e, atol=1e-6) or np.allclose(d, e[:, :, ::-1], atol=1e-6)


def test_second_build_cached_and_option_change_rebuilds(built):
    root, out = built["root"], built["out"]
    mtime = os.path.getmtime(os.path.join(out, "fold_0", "train", "data.mdb"))
    lines = []
    m2 = L.build_lmdbs("ck+", root, out, n_folds=3, augment_copies=2, seed=0, progress=lines.append)
    assert m2["cached"] is True and any("up to date" in ln for ln in lines)
    assert os.path.getmtime(os.path.join(out, "fold_0", "train", "data.mdb")) == mtime
    lines = []
    m3 = L.build_lmdbs("ck+", root, out, n_folds=3, augment_copies=1, seed=0, progress=lines.append)
    assert m3["cached"] is False and m3["options"]["augment_copies"] == 1
    assert m3["folds"]["0"]["n_train"] == 2 * m3["folds"]["0"]["n_train_unique"]
    assert any("reused from the cache" in ln for ln in lines)         # aligned frames are not recomputed
    assert any("fold 0 test: unchanged, kept" in ln for ln in lines)   # only train depends on --augment
    assert any("fold 0 pretrain: unchanged, kept" in ln for ln in lines)
    assert m3["inputs"]["data_hash"] == m2["inputs"]["data_hash"] and m3["inputs"]["hash"] != m2["inputs"]["hash"]
    assert len(read_lmdb(os.path.join(out, "fold_0", "train"))) == m3["folds"]["0"]["n_train"]
    # a touched input file also rebuilds
    f = os.path.join(root, "Emotion", "S005", "001", "S005_001_00000005_emotion.txt")
    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 10 ** 9))
    lines = []
    m4 = L.build_lmdbs("ck+", root, out, n_folds=3, augment_copies=1, progress=lines.append)
    assert m4["cached"] is False and m4["inputs"]["data_hash"] != m3["inputs"]["data_hash"]
    assert not any("unchanged" in ln for ln in lines)
    assert not [n for n in os.listdir(out) if ".partial" in n]


def test_subset_of_folds_and_ck8_neutral(tmp_path):
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (4, 5.0) for s in ("S001", "S002", "S003")})
    m = L.build_lmdbs("ck+8", root, str(tmp_path / "o"), n_folds=3, folds=[1], augment_copies=0, progress=None)
    assert m["folds_built"] == [1] and sorted(os.listdir(str(tmp_path / "o"))) == [
        "align_cache.npz", "build_report.json", "fold_1", "folds.json", "manifest.json"]
    test = read_lmdb(str(tmp_path / "o" / "fold_1" / "test"))
    assert [lab for _, _, lab in test] == [0, 5, 5, 5]                 # neutral first frame + 3 happy peaks
    assert np.array_equal(test[0][1][0], test[0][1][1])               # the neutral sample is its own reference
    with pytest.raises(DataError, match="outside"):
        L.build_lmdbs("ck+", root, str(tmp_path / "o2"), n_folds=3, folds=[3], progress=None)
    with pytest.raises(DataError, match="subject"):
        L.build_lmdbs("ck+", root, str(tmp_path / "o3"), n_folds=10, progress=None)


def test_mmi_video_and_webface_pretrain(tmp_path):
    root = make_mmi_tree(str(tmp_path / "mmi"), {i: dict(n=7, emotion=str(1 + i % 6), subject="S%03d" % (1 + i % 3),
                                                         video=bool(i % 2)) for i in range(1, 7)})
    wf = str(tmp_path / "wf")
    for ident in ("0000045", "0000102"):
        for j in range(3):
            p = os.path.join(wf, ident, "%03d.jpg" % j)
            write_image(p, seed=j)
            write_points(os.path.join(wf + "_landmarks", ident, "%03d.pts" % j), face_points())
    out = str(tmp_path / "o")
    m = L.build_lmdbs("mmi", root, out, n_folds=3, augment_copies=1, pretrain_root=wf, progress=None)
    assert m["n_samples"] == 18 and any("middle of sequence" in n for n in m["notes"])
    assert m["pretrain"]["n"] == 6 and m["pretrain"]["n_identities"] == 2
    for k in range(3):
        assert os.path.islink(os.path.join(out, "fold_%d" % k, "pretrain"))
        pre = read_lmdb(os.path.join(out, "fold_%d" % k, "pretrain"))
        assert sorted(lab for _, _, lab in pre) == [0, 0, 0, 1, 1, 1]
        assert m["folds"][str(k)]["n_identities"] == 2
        idx = json.load(open(os.path.join(out, "fold_%d" % k, "test_index.json")))
        assert all("#" in r["frame"] and r["reference"].endswith("#0") for r in idx if ".avi" in r["frame"])
    lay = LmdbLayout(out)                 # the folds' pretrain/ is a relative link to the one WebFace LMDB
    assert m["pretrain"]["path"] == "pretrain_webface" and json.load(open(lay.webface_meta))["n"] == 6
    assert all(lay.split(k, "pretrain").resolve() == lay.webface.resolve() for k in range(3))
    assert os.readlink(lay.split(0, "pretrain")) == os.path.join("..", "pretrain_webface")
    lines = []
    m2 = L.build_lmdbs("mmi", root, out, n_folds=3, augment_copies=0, pretrain_root=wf, progress=lines.append)
    assert any("pretraining LMDB" in ln and "up to date" in ln for ln in lines) and m2["pretrain"]["n"] == 6
    # another --seed reshuffles the folds' LMDBs but keeps the shared pretraining LMDB (and so the pretraining)
    lines = []
    m3 = L.build_lmdbs("mmi", root, out, n_folds=3, augment_copies=0, seed=5, pretrain_root=wf, progress=lines.append)
    assert any("pretraining LMDB" in ln and "up to date" in ln for ln in lines)
    assert m3["inputs"]["pretrain_hash"] == m["inputs"]["pretrain_hash"] and m3["inputs"]["hash"] != m2["inputs"]["hash"]


def test_cli_help_errors_and_build(tmp_path):
    tool = os.path.join(REPO, "tools", "build_lmdb.py")
    r = subprocess.run([sys.executable, tool, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--augment" in r.stdout and "--mmi-peaks" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, tool, "ck+", "--data", str(empty), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "empty" in r.stderr and str(empty) in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, tool, "oulu", "--data", str(empty), "--out", str(tmp_path / "o"),
                        "--folds", "3-x"], capture_output=True, text=True)
    assert r.returncode == 2 and "--folds" in r.stderr
    root = make_ck_tree(str(tmp_path / "ck"), {(s, "001"): (4, 3.0) for s in ("S001", "S002")})
    r = subprocess.run([sys.executable, tool, "ck+", "--data", root, "--out", str(tmp_path / "o"), "--n-folds", "2",
                        "--folds", "0", "--augment", "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fold 0: train 3 (3 unique), test 3" in r.stdout
