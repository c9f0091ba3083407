"""gcnet.util, gcnet.caffe_io (codec, no Caffe) and gcnet.layout: the shared helpers."""
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcnet import caffe_io, config as C, util  # noqa: E402
from gcnet.layout import ResultsLayout, fold_of  # noqa: E402


def test_parse_folds():
    assert util.parse_folds("0-9", 10) == list(range(10))
    assert util.parse_folds("0,2,5-7", 10) == [0, 2, 5, 6, 7]
    assert util.parse_folds(" 3 ", 10) == [3]
    assert util.parse_folds("12") == [12]                       # no upper bound without n_folds
    for bad, msg in (("5-12", "out of range"), ("a", "bad --folds"), ("4-2", "4 > 2"), ("", "selects no fold")):
        with pytest.raises(util.UsageError, match=msg):
            util.parse_folds(bad, 10)


def test_fmt_duration_and_num():
    assert [util.fmt_duration(s) for s in (None, float("nan"), 42.4, 185, 7625)] == ["?", "?", "42s", "3m05s",
                                                                                     "2h07m"]
    assert (util.fmt_num(None), util.fmt_num(float("inf")), util.fmt_num(1.234567)) == ("-", "inf", "1.235")


def test_write_json_atomic_and_read_default(tmp_path):
    p = tmp_path / "a.json"
    util.write_json(p, {"x": np.arange(3), "p": tmp_path})
    assert json.loads(p.read_text()) == {"x": [0, 1, 2], "p": str(tmp_path)}
    assert os.listdir(str(tmp_path)) == ["a.json"]              # no temporary left
    (tmp_path / "bad.json").write_text("{")
    assert util.read_json(tmp_path / "bad.json", 7) == 7 and util.read_json(tmp_path / "none.json") is None
    util.write_json(p, {"i": 0})
    errors = []

    def writer(i):
        try:
            for _ in range(50):
                util.write_json(p, {"i": i, "pad": "x" * 1000})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):
        assert json.loads(p.read_text())["i"] in range(4)      # never a half-written file
    for t in threads:
        t.join()
    assert not errors


def test_hashes(tmp_path):
    assert util.sha_text("a", {"b": 1}) == util.sha_text("a", {"b": 1}) != util.sha_text("a", {"b": 2})
    assert util.sha_text("ab") != util.sha_text("a", "b")
    (tmp_path / "f").write_bytes(b"abc")
    assert util.sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_data_error_is_a_usage_error_and_dataset_spec():
    from gcnet.data.records import DataError
    assert DataError is util.DataError and issubclass(DataError, util.UsageError)
    assert C.dataset_spec("ck+8").neutral_label == 0
    with pytest.raises(DataError, match="unknown dataset 'nosuch'"):
        C.dataset_spec("nosuch")


def test_model_facts():
    assert C.EXPRESSION_MODELS == ("cnn", "gcnet_s0r0", "gcnet_s1r0", "gcnet_s0r1", "gcnet_s1r1")
    assert C.PRETRAIN_MODELS == ("encdec", "cnn_id")
    assert [m for m in C.ALL_MODELS if C.has_generator(m)] == [m for m in C.ALL_MODELS if m.startswith("gcnet")]
    assert [m for m in C.ALL_MODELS if C.has_contrastive(m)] == ["gcnet_s1r0", "gcnet_s1r1"]
    assert [m for m in C.ALL_MODELS if C.has_reconstruction(m)] == ["gcnet_s0r1", "gcnet_s1r1"]


def test_datum_codec_roundtrip():
    a = np.random.RandomState(0).randint(0, 256, (2, 5, 3)).astype(np.uint8)
    for label in (0, 6, 300, -1):
        b, lab = caffe_io.decode_datum(caffe_io.encode_datum(a, label))
        assert lab == label and b.dtype == np.uint8 and np.array_equal(a, b)


def test_read_caffemodel_errors(tmp_path):
    with pytest.raises(caffe_io.WeightsError, match="cannot read"):
        caffe_io.read_caffemodel(str(tmp_path / "missing.caffemodel"))


def test_results_layout(tmp_path):
    lay = ResultsLayout(tmp_path, "ck+")
    assert lay.root == tmp_path / "ck+"
    assert lay.model_dir("cnn", 3) == tmp_path / "ck+" / "cnn" / "fold_3"
    assert lay.pretrain_dir(2, "encdec") == tmp_path / "ck+" / "pretrain" / "fold_2" / "encdec"
    assert lay.pretrain_dir(-1, "cnn_id") == tmp_path / "ck+" / "pretrain" / "webface" / "cnn_id"
    assert lay.lmdb(1, "test") == tmp_path / "ck+" / "lmdb" / "fold_1" / "test"
    assert lay.webface_lmdb({"pretrain": {"path": "pw"}}) == lay.lmdb_root / "pw"
    assert (fold_of("fold_12"), fold_of("fold_x"), fold_of("xfold_1")) == (12, None, None)
    for m, k, files in (("cnn", 0, ["test.json"]), ("cnn", 10, ["test.json"]), ("cnn", 2, []),
                        ("gcnet_s1r1", 1, ["test.json", "meta.json"])):
        d = lay.model_dir(m, k)
        d.mkdir(parents=True)
        for f in files:
            (d / f).write_text(json.dumps({"class_names": ["a", "b"], "dataset": "ck+"}))
    (lay.root / "figures" / "fold_0").mkdir(parents=True)          # not a model
    (lay.root / "cnn" / "notes").mkdir()
    found = lay.trained_models(need=("test.json",))
    assert list(found) == ["cnn", "gcnet_s1r1"] and list(found["cnn"]) == [0, 10]
    assert set(lay.trained_models()["cnn"]) == {0, 2, 10}
    assert list(lay.trained_models(models=["gcnet_s1r1"], folds=[1])) == ["gcnet_s1r1"]
    assert lay.trained_models(folds=[5]) == {}
    assert lay.class_names() == ["a", "b"]
    assert ResultsLayout(tmp_path, "oulu").class_names()[0] == "anger"
    for k, net in ((-1, "encdec"), (0, "cnn_id")):
        lay.pretrain_dir(k, net).mkdir(parents=True)
        (lay.pretrain_dir(k, net) / "train.log").write_text("")
    assert lay.pretrained() == {"encdec": {-1: lay.pretrain_dir(-1, "encdec")}, "cnn_id": {0: lay.pretrain_dir(0, "cnn_id")}}
    # the dataset of a results folder: its summary, else a meta.json, else the folder name
    moved = tmp_path / "renamed"
    lay.root.rename(moved)
    assert ResultsLayout.at(moved).dataset == "ck+"
    assert ResultsLayout.at(tmp_path / "mmi").dataset == "mmi"
    (moved / "summary.json").write_text(json.dumps({"dataset": "ck+8"}))
    assert ResultsLayout.at(moved).dataset == "ck+8" and ResultsLayout.at(moved).root == moved
