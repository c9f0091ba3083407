"""python_layers/gcnet_native.py: the Python layers' C kernels are compiled once per source into the kernels
folder, reused, rebuilt when the source changes; a failing compiler or an unwritable folder is a clear error.

Run:  source tools/env.sh && python -m pytest -q tests/test_gcnet_native.py
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python_layers"))
import gcnet_native as native  # noqa: E402


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """native with its own kernels folder and a copy of its sources (so a test may edit one)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "max_unpool.c").write_text(open(os.path.join(native.HERE, "max_unpool.c")).read())
    monkeypatch.setattr(native, "HERE", str(src))
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("GCNET_KERNELS_DIR", str(tmp_path / "kernels"))
    return src


def test_built_once_then_reused_and_rebuilt_for_a_changed_source(kernels, tmp_path):
    [(first, built)] = native.build_all()
    assert built and native.build_all() == [(first, False)]
    assert os.path.dirname(first) == str(tmp_path / "kernels") and os.path.basename(first).startswith("max_unpool-")
    stamp = os.stat(first).st_mtime_ns
    assert native.build("max_unpool") == (first, False) and os.stat(first).st_mtime_ns == stamp
    assert os.stat(first).st_mode & 0o777 == 0o755
    with open(str(kernels / "max_unpool.c"), "a") as f:
        f.write("\n/* changed */\n")
    second, built = native.build("max_unpool")
    assert built and second != first and os.path.exists(second)
    assert sorted(os.listdir(str(tmp_path / "kernels"))) == sorted(os.path.basename(p) for p in (first, second))


def test_compile_error_and_missing_compiler_are_clear_errors(kernels, tmp_path, monkeypatch):
    (kernels / "max_unpool.c").write_text("this is not C\n")
    with pytest.raises(RuntimeError, match=r"compiling max_unpool.c failed .*\n.*error"):
        native.build("max_unpool")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(RuntimeError, match="cannot compile the Python layers' C kernels .*set CC"):
        native.build("max_unpool")
    assert os.listdir(str(tmp_path / "kernels")) == []            # no half-written library left behind


def test_unwritable_kernels_folder_is_a_clear_error(kernels, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("GCNET_KERNELS_DIR", str(blocker / "kernels"))      # below a file: cannot be created
    with pytest.raises(RuntimeError, match="cannot write the Python layers' C kernels to .*set GCNET_KERNELS_DIR"):
        native.build("max_unpool")
