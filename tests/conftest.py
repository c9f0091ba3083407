"""Shared test fixtures.

The one Caffe gate: the `caffe` fixture (pycaffe imported, the `caffe` binary on PATH, CPU mode).  A test that
asks for it FAILS when Caffe is missing (CI always has it: `source tools/env.sh`); with GCNET_ALLOW_NO_CAFFE=1 it
is skipped instead, e.g. while working on numpy-only parts without a Caffe build.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "python_layers")):
    if p not in sys.path:
        sys.path.insert(0, p)


def _import_caffe():
    try:
        import caffe
    except ImportError as e:
        return None, "pycaffe cannot be imported (%s)" % e
    if not shutil.which("caffe"):
        return None, "the `caffe` binary is not on PATH"
    return caffe, None


@pytest.fixture(scope="session")
def caffe():
    mod, why = _import_caffe()
    if mod is None:
        if os.environ.get("GCNET_ALLOW_NO_CAFFE") == "1":
            pytest.skip("%s and GCNET_ALLOW_NO_CAFFE=1" % why)
        pytest.fail("%s: run `source tools/env.sh` first (set GCNET_ALLOW_NO_CAFFE=1 to skip the Caffe tests "
                    "instead)" % why)
    mod.set_mode_cpu()
    return mod


# the marker form of the gate, for tests that run Caffe in a subprocess
needs_caffe = pytest.mark.usefixtures("caffe")


def tool_env() -> dict:
    """Environment of a tool run as a subprocess: the repository first on PYTHONPATH, Caffe's log on stderr."""
    env = dict(os.environ)
    env.update(GLOG_minloglevel="0", GLOG_logtostderr="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    pp = [str(REPO), str(REPO / "python_layers")]
    env["PYTHONPATH"] = os.pathsep.join(pp + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory, caffe):
    """A results folder made by the runner (tools/run_folds.sh, figures included): 4 synthetic CK+ subjects, 2
    folds, pretraining and cnn + gcnet_s1r1 for 3 iterations each, one BLAS thread per job (as tool_env), so that
    inference elsewhere can repeat the test stage's arithmetic.  -> {"layout", "data", "log"}."""
    import subprocess
    from gcnet.layout import ResultsLayout
    base = tmp_path_factory.mktemp("tiny_results")
    data, out = base / "data", base / "out"
    p = subprocess.run([str(REPO / "tools" / "run_folds.sh"), "synthetic", "--models", "cnn,gcnet_s1r1",
                        "--folds", "0-1", "--iters", "3", "--test-interval", "3", "--pretrain-iters", "3",
                        "--synthetic-subjects", "4", "--n-folds", "2", "--batch", "4", "--augment", "0",
                        "--display", "1", "--jobs", "2", "--threads", "1", "--data", str(data), "--out", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=900,
                       cwd=str(REPO))
    assert p.returncode == 0, p.stdout[-4000:]
    return {"layout": ResultsLayout(out, "synthetic"), "data": data, "log": p.stdout}


NAMES = ["a", "b", "c", "d", "e", "f", "g"]      # class names of random_model_folder


def random_model_folder(path, model, seed=0):
    """A model folder as the runner writes it (deploy, deploy_ref for GCNets, train_val, meta.json), with random
    weights and BatchNorm statistics of a trained net's scale (mean ~0, variance ~1, scale factor 7)."""
    import caffe
    import numpy as np
    from gcnet import nets
    from gcnet.config import NetOptions, has_reference_variant
    path.mkdir(parents=True)
    opts = NetOptions(n_classes=len(NAMES), batch_size=2, test_batch_size=2)
    phases = ("train_val", "deploy") + (("deploy_ref",) if has_reference_variant(model) else ())
    for phase in phases:
        nets.write_net(model, opts, phase, str(path / ("%s.prototxt" % phase)))
    (path / "meta.json").write_text(json.dumps({"model": model, "class_names": NAMES, "dataset": "synthetic"}))
    caffe.set_random_seed(seed)                   # the fillers' draws
    net = caffe.Net(str(path / "deploy.prototxt"), caffe.TEST)
    rng = np.random.default_rng(seed)
    for name, ps in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":
            c = ps[0].data.shape[0]
            ps[0].data[...] = 7 * rng.normal(0, 0.2, c)
            ps[1].data[...] = 7 * rng.uniform(0.2, 2.0, c)
            ps[2].data[...] = 7
        elif kind == "Scale":
            ps[0].data[...] = rng.uniform(0.5, 1.5, ps[0].data.shape)
            ps[1].data[...] = rng.normal(0, 0.2, ps[1].data.shape)
        elif len(ps) > 1:
            ps[1].data[...] = rng.normal(0, 0.05, ps[1].data.shape)
    net.save(str(path / "final.caffemodel"))
    return path
