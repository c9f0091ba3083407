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
