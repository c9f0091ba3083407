"""gcnet.figures: the registry, the GCNet choice, and every figure on a results folder made by the runner
(conftest.tiny_results); tools/figures.py and the runner's figures stage."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, tool_env
from gcnet import figures as F
from gcnet.figures import confusion, curves, errors, plot
from gcnet.figures.results import gcnets_by_preference, pick_gcnet
from gcnet.layout import META, TEST, TRAIN_LOG, ResultsLayout
from gcnet.util import read_json, write_json

# matplotlib 3.9 (mathtext, font patterns) with pyparsing >= 3.3: deprecation noise only
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:matplotlib.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:pyparsing.*")]

EXPECTED = {"curves": ["curves_cnn", "curves_gcnet_s1r1", "curves_pretrain_cnn_id", "curves_pretrain_encdec"],
            "confusion": ["confusion_cnn", "confusion_gcnet_s1r1"], "tsne": ["fig5_tsne"],
            "filters": ["fig6_filters"], "generation": ["fig7_generation"], "errors": ["fig4_errors"],
            "mechanism": ["mechanism"]}


# ================================================================================================ no Caffe
def test_registry_order_and_modules():
    assert F.FIGURES == ("curves", "confusion", "tsne", "filters", "generation", "errors", "mechanism")
    for name, fn in F.FIGURE_FUNCS.items():
        assert fn.__module__ == "gcnet.figures." + name


def test_gcnet_choice_follows_the_model_facts():
    assert gcnets_by_preference() == ["gcnet_s1r1", "gcnet_s0r1", "gcnet_s1r0", "gcnet_s0r0"]
    found = {"cnn": {0: "d"}, "gcnet_s0r0": {0: "d"}, "gcnet_s1r0": {1: "d"}, "gcnet_s0r1": {}}
    assert pick_gcnet(found) == "gcnet_s1r0"
    assert pick_gcnet(found, reconstruction=True) is None            # gcnet_s0r1 has no fold
    assert pick_gcnet(dict(found, gcnet_s0r1={2: "d"}), reconstruction=True) == "gcnet_s0r1"
    assert pick_gcnet({"cnn": {0: "d"}}) is None


def test_an_empty_or_missing_folder_skips_everything(tmp_path):
    files, skipped, failed = F.run_figures(str(tmp_path), log=lambda m: None)
    assert files == [] and not failed and set(skipped) == set(F.FIGURES)
    files, skipped, failed = F.run_figures(str(tmp_path / "nope"), log=lambda m: None)
    assert files == [] and set(skipped) == set(F.FIGURES)
    with pytest.raises(ValueError):
        F.run_figures(str(tmp_path), only=["bogus"])


# ================================================================================================ figures
def _check_png_pdf(files, kind):
    from PIL import Image
    pngs = [f for f in files if f.endswith(".png")]
    assert pngs and len(pngs) == len([f for f in files if f.endswith(".pdf")]), files
    w, h = plot.FIG_SIZES[kind]
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (int(w * plot.DPI), int(h * plot.DPI)), (png, im.size)
            px = np.asarray(im.convert("L"))
        assert px.std() > 1, "blank figure %s" % png          # something is drawn
        pdf = Path(png[:-4] + ".pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000
        box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
        assert box and abs(float(box.group(1)) - 72 * w) < 1 and abs(float(box.group(2)) - 72 * h) < 1


def test_the_runner_draws_every_figure(tiny_results):
    lay = tiny_results["layout"]
    assert re.search(r"^\[figures\] %d files in " % (2 * sum(map(len, EXPECTED.values()))), tiny_results["log"],
                     re.M), tiny_results["log"][-3000:]
    stamp = read_json(lay.figures_stamp)
    assert sorted(Path(f).name for f in stamp["files"]) == sorted(
        n + ext for names in EXPECTED.values() for n in names for ext in (".pdf", ".png"))
    # --collect: the figures' inputs (and the figure code) are unchanged, nothing is redrawn
    p = subprocess.run([str(REPO / "tools" / "run_folds.sh"), "synthetic", "--collect", "--out", str(lay.root.parent)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert p.returncode == 0 and "[figures] up to date" in p.stdout, p.stdout[-3000:]


@pytest.mark.parametrize("kind", F.FIGURES)
def test_each_figure(tiny_results, kind):
    lay = tiny_results["layout"]
    logs = []
    files, skipped, failed = F.run_figures(str(lay.root), log=logs.append, only=[kind], strict=True)
    assert not skipped and not failed, (skipped, failed, logs)
    _check_png_pdf(files, kind)
    assert sorted(Path(f).name for f in files) == sorted(n + ext for n in EXPECTED[kind] for ext in (".pdf", ".png"))
    assert all(Path(f).parent == lay.figures_dir for f in files)


def test_curves_content_and_per_fold(tiny_results):
    lay = tiny_results["layout"]
    c = curves.parse_curves(lay.model_dir("gcnet_s1r1", 0) / TRAIN_LOG)
    for term in ("loss", "loss_cls", "loss_contr", "loss_gen_r", "loss_rec_r", "loss_rec_i"):
        assert len(c["train"].get(term, [])) >= 3, (term, c["train"].keys())
    assert c["test"].get("accuracy") and len(c["lr"]) >= 3
    files = curves.fig_curves(lay, models=["cnn"], per_fold=True)
    assert sorted(Path(f).name for f in files if f.endswith(".png")) == ["curves_cnn_fold_0.png",
                                                                         "curves_cnn_fold_1.png"]


def test_confusion_sums_folds(tiny_results):
    lay = tiny_results["layout"]
    tj = [read_json(lay.model_dir("cnn", k) / TEST) for k in (0, 1)]
    total = sum(np.asarray(t["confusion"]) for t in tj)
    assert total.sum() == sum(t["n_test"] for t in tj)
    assert confusion._confusion_of(tj[0], 7).tolist() == tj[0]["confusion"]
    without = {k: v for k, v in tj[0].items() if k != "confusion"}       # from labels and predictions
    assert confusion._confusion_of(without, 7).tolist() == tj[0]["confusion"]


def test_the_dataset_comes_from_the_layout(tiny_results, tmp_path, monkeypatch):
    # a moved results folder under another name: titles and class names from its meta.json, or the layout's
    moved = ResultsLayout(tmp_path, "renamed")
    shutil.copytree(str(tiny_results["layout"].root / "cnn"), str(moved.root / "cnn"))
    titles = []
    monkeypatch.setattr(confusion, "save", lambda fig, d, name: titles.append(fig._suptitle.get_text()) or [name])
    assert confusion.fig_confusion(ResultsLayout.at(moved.root)) == ["confusion_cnn"]
    assert confusion.fig_confusion(ResultsLayout(tmp_path, "ck+8", root=moved.root)) == ["confusion_cnn"]
    assert titles[0].startswith("synthetic, cnn: ") and titles[1].startswith("ck+8, cnn: "), titles


def test_errors_without_the_test_lmdb_show_the_source_frames(tiny_results, tmp_path):
    lay = ResultsLayout(tmp_path, "synthetic")
    for m in ("cnn", "gcnet_s1r1"):
        shutil.copytree(str(tiny_results["layout"].model_dir(m, 0)), str(lay.model_dir(m, 0)))
        meta = read_json(lay.model_dir(m, 0) / META)
        for key in ("test_lmdb", "test_source"):
            meta.pop(key)
        write_json(lay.model_dir(m, 0) / META, meta)
    logs = []
    errs, n = errors._test_errors(lay, "cnn", {0: lay.model_dir("cnn", 0)}, logs.append)
    test = read_json(lay.model_dir("cnn", 0) / TEST)
    assert n == test["n_test"] and len(errs) == n - sum(np.diag(test["confusion"]))
    assert errs and all(img is not None and img.shape == (66, 66) for *_, img in errs)
    assert any("images shown from the source frames" in m for m in logs), logs
    assert [Path(f).name for f in errors.fig_errors(lay, log=logs.append)] == ["fig4_errors.png", "fig4_errors.pdf"]


def test_missing_inputs_are_skipped_with_a_reason(tiny_results, tmp_path):
    # a results folder with the baseline only and no reachable test LMDB: GCNet figures name what is missing
    lay = ResultsLayout(tmp_path, "synthetic")
    shutil.copytree(str(tiny_results["layout"].model_dir("cnn", 0)), str(lay.model_dir("cnn", 0)))
    meta = read_json(lay.model_dir("cnn", 0) / META)
    for key in ("test_lmdb", "test_source"):
        meta.pop(key)
    write_json(lay.model_dir("cnn", 0) / META, meta)
    logs = []
    files, skipped, failed = F.run_figures(str(lay.root), log=logs.append)
    assert not failed, failed
    assert {"filters", "generation", "errors"} <= set(skipped), skipped
    for kind in ("filters", "generation", "errors"):
        assert "GCNet" in skipped[kind]
    assert "tsne" in skipped and "LMDB" in skipped["tsne"]
    assert any(Path(f).name == "curves_cnn.png" for f in files)
    # the command line: an empty folder and a missing one give messages, never a traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, rc in (([str(empty)], 0), ([str(empty), "--only", "filters"], 1), ([str(tmp_path / "nope")], 2),
                     ([str(lay.root), "--only", "bogus"], 2)):
        p = subprocess.run([sys.executable, str(REPO / "tools" / "figures.py")] + args, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, env=tool_env(), timeout=120)
        assert p.returncode == rc, (args, p.stdout)
        assert "Traceback" not in p.stdout, p.stdout
    assert "skipped" in subprocess.run([sys.executable, str(REPO / "tools" / "figures.py"), str(empty)],
                                       stdout=subprocess.PIPE, universal_newlines=True, env=tool_env()).stdout


def test_mechanism_figure_from_a_summary(tmp_path):
    """The mechanism figure reads only summary.json: accuracy bars with intervals and paired statistics, the
    generator against its baselines; a folder without a summary is skipped with a reason."""
    from gcnet.figures import mechanism
    from gcnet.figures.results import Skip
    lay = ResultsLayout(tmp_path, "synthetic")
    lay.root.mkdir()
    with pytest.raises(Skip, match="summary.json"):
        mechanism.fig_mechanism(lay)
    pooled = lambda a: {"accuracy": a, "n": 258, "ci95": [a - 0.05, a + 0.04]}
    gen = {"l_gen_r": 4.3, "baseline_copy_x": 5.8, "baseline_blurred_copy": 9.1, "l_gen_r_on_reference": 3.5,
           "accuracy_true_reference": pooled(0.95)}
    write_json(lay.summary_json, {
        "settings": {"synthetic": True},
        "models": {"cnn": {"pooled": pooled(0.8)}, "cnn_pair": {"pooled": pooled(0.97)},
                   "gcnet_s0r0": {"pooled": pooled(0.82), "generator": gen}},
        "paired": {"cnn_pair": {"difference": 0.17, "difference_ci95": [0.1, 0.25], "mcnemar_p": 1e-6},
                   "gcnet_s0r0": {"difference": 0.02, "difference_ci95": [-0.05, 0.08], "mcnemar_p": 0.5}}})
    files = mechanism.fig_mechanism(lay)
    _check_png_pdf(files, "mechanism")
