"""docs/ARCHITECTURE.md "Add a model", its three steps done as written on a copy of the repository: a throwaway
variant (gcnet_s1r1 without the En_2 pretraining: En_1/De_1r from the generator stage, En_2 random) gets its row in
config.MODELS (1), its prototxt/ files (2) and a few iterations of tools/run_folds.sh (3)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("caffe")]

NAME = "gcnet_s1r1_no_en2"
# step 1: the row (what docs/ARCHITECTURE.md shows): body, losses and lambdas, surgery sources
ROW = ('    "%s": ModelFacts("expression", "gcnet",\n'
       '                                   GCNET_S0R0_LOSSES + CONTRASTIVE_LOSS + RECONSTRUCTION_LOSSES,\n'
       '                                   EN1_DE1R_FROM_GENERATOR + DE2_FROM_ENCDEC),\n' % NAME)


def copy_repository(dst: Path) -> Path:
    """The repository's files without results, data, caches and .git; tools/env.sh pointed at the copy."""
    top, anywhere = {".git", "results", "data", ".pytest_cache"}, {"__pycache__"}
    shutil.copytree(str(REPO), str(dst), ignore=lambda d, names: [
        n for n in names if n in anywhere or (n in top and Path(d) == REPO)])
    env_sh = dst / "tools" / "env.sh"
    env_sh.write_text((REPO / "tools" / "env.sh").read_text().replace(str(REPO), str(dst)))
    return dst


def test_add_a_model_in_three_steps(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    config = repo / "gcnet" / "config.py"
    text = config.read_text()
    end = text.index("\n}\n", text.index("MODELS: Dict[str, ModelFacts] = {")) + 1
    config.write_text(text[:end] + ROW + text[end:])                                      # step 1
    p = subprocess.run([sys.executable, "tools/make_prototxt.py"], cwd=str(repo), capture_output=True,
                       text=True, timeout=300)                                             # step 2
    assert p.returncode == 0, p.stderr
    assert "wrote prototxt/%s/solver.prototxt" % NAME in p.stdout
    assert sorted(f.name for f in (repo / "prototxt" / NAME).iterdir()) == [
        "deploy.prototxt", "deploy_ref.prototxt", "solver.prototxt", "train_val.prototxt"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}       # tools/env.sh of the copy sets it
    p = subprocess.run(["tools/run_folds.sh", "synthetic", "--models", NAME, "--folds", "0", "--n-folds", "2",
                        "--synthetic-subjects", "6", "--iters", "2", "--pretrain-iters", "2", "--generator-iters",
                        "2", "--batch", "2", "--augment", "0", "--bn-samples", "8", "--no-figures",
                        "--out", str(tmp_path / "out")], cwd=str(repo), capture_output=True, text=True,
                       timeout=900, env=env)                                                # step 3
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ds = tmp_path / "out" / "synthetic"
    sm = json.loads((ds / "summary.json").read_text())
    assert list(sm["models"]) == [NAME] and 0 <= sm["models"][NAME]["folds"]["0"]["accuracy"] <= 1
    d = ds / NAME / "fold_0"
    rep = json.loads((d / "surgery.json").read_text())
    copied = {c["layer"]: (c["from_net"], c["from_layer"]) for c in rep["copied"]}
    assert copied["en1_conv1"] == ("generator", "en1_conv1") and copied["de2r_deconv1"] == ("encdec", "de1r_deconv1")
    assert not any(layer.startswith("en2") for layer in copied)                # no En_2 pretraining
    assert {"en2_conv1", "fc1"} <= {r["layer"] for r in rep["random"]}
    tv = (d / "train_val.prototxt").read_text()
    assert "loss_contr" in tv and 'name: "%s"' % NAME in tv
    assert json.loads((d / "meta.json").read_text())["iters"] == 2
