"""Shared test helpers.

Tests that need Caffe FAIL when it cannot be imported (CI always has it: `source tools/env.sh`); set
GCNET_ALLOW_NO_CAFFE=1 to skip them instead, e.g. while working on numpy-only parts without a Caffe build.
"""
import os
import shutil

import pytest


def caffe_available() -> bool:
    if not shutil.which("caffe"):
        return False
    try:
        import caffe  # noqa: F401
        return True
    except Exception:
        return False


needs_caffe = pytest.mark.skipif(os.environ.get("GCNET_ALLOW_NO_CAFFE") == "1" and not caffe_available(),
                                 reason="Caffe not available and GCNET_ALLOW_NO_CAFFE=1")
