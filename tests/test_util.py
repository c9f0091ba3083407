"""gcnet.util and the model facts / dataset table of gcnet.config: the shared helpers."""
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcnet import config as C, util  # noqa: E402


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
    assert C.EXPRESSION_MODELS == ("cnn", "cnn_pair", "gcnet_s0r0", "gcnet_s1r0", "gcnet_s0r1", "gcnet_s1r1")
    assert C.PRETRAIN_MODELS == ("encdec", "cnn_id") and C.STAGE_MODELS == ("generator",)
    assert C.GCNET_MODELS == tuple(m for m in C.EXPRESSION_MODELS if m.startswith("gcnet"))
    assert [m for m in C.ALL_MODELS if C.has_generator(m)] == ["generator"] + list(C.GCNET_MODELS)
    assert [m for m in C.ALL_MODELS if C.has_true_reference(m)] == ["cnn_pair"]
    assert [m for m in C.ALL_MODELS if C.has_contrastive(m)] == ["gcnet_s1r0", "gcnet_s1r1"]
    assert [m for m in C.ALL_MODELS if C.has_reconstruction(m)] == ["gcnet_s0r1", "gcnet_s1r1"]
