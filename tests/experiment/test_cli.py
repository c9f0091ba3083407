"""gcnet.experiment.cli: the parser and main() of tools/run_folds.sh: exit codes, one-line errors, --help before the
setup (no Caffe)."""
from pathlib import Path

import pytest

from gcnet.experiment import cli
from gcnet.experiment.settings import EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]


def _no_run(monkeypatch):
    """main() must stop before any work: running would fail the test (not train at a replaced value)."""
    import gcnet.experiment.pipeline as P
    monkeypatch.setattr(P, "run", lambda s, sup: pytest.fail("ran (batch %s, data %s)" % (s.batch, s.data_root)))


def test_cli_exit_2_one_line_for_a_zero(capsys, monkeypatch, tmp_path):
    """Through main(): exit 2, one line naming the option, nothing else printed."""
    _no_run(monkeypatch)
    assert cli.main(["synthetic", "--batch", "0", "--out", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --batch must be >= 1, got 0"]


def test_synthetic_data_that_is_a_file(tmp_path, capsys, monkeypatch):
    """`synthetic --data FILE` names the real problem (a file, not a folder) before generating anything; it used
    to say it was generating the set there and then complain about a --force option run_folds.sh does not have."""
    import gcnet.experiment.pipeline as P
    monkeypatch.setattr(P.stages, "run_lmdb", lambda ctx: pytest.fail("went on to the LMDB stage"))
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert cli.main(["synthetic", "--data", str(f), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and "is a file" in err[0] and "--force" not in err[0], err
    assert "generating" not in cap.out and f.read_text() == "x" and not (tmp_path / "out").exists()


def test_help_needs_no_numpy_nor_caffe():
    """tools/run_folds.sh --help works before tools/setup.sh (system Python: no numpy, no pycaffe)."""
    import subprocess
    import sys
    code = ("import runpy, sys; sys.modules['numpy'] = sys.modules['caffe'] = None; sys.argv = ['x', '--help']; "
            "runpy.run_module('gcnet.experiment', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "usage: tools/run_folds.sh" in p.stdout and "--iters" in p.stdout, p.stderr
