"""gcnet.layout: the paths of a results folder."""
import json

from gcnet.layout import ResultsLayout, fold_of


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
