"""Shared test fixtures.

The one Caffe gate: the `caffe` fixture (pycaffe imported, the `caffe` binary on PATH, CPU mode).  A test that
asks for it FAILS when Caffe is missing (CI always has it: `source tools/env.sh`); with GCNET_ALLOW_NO_CAFFE=1 it
is skipped instead, e.g. while working on numpy-only parts without a Caffe build.
"""
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
