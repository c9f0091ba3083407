"""Caffe's own habit with the committed files (README "Caffe-native training"): after `tools/run_folds.sh ck+ --data
ROOT --stop-after lmdb`, `caffe train --solver prototxt/cnn/solver.prototxt` trains from the repository root.

The run happens in a copy of the repository's layout (prototxt/cnn/ copied byte for byte, the LMDBs under
<root>/results), so that the test never writes into the repository's own results/."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gcnet.experiment.cli import settings_from
from gcnet.layout import RESULTS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("caffe")


def test_committed_paths_are_the_runner_defaults():
    """The committed nets read the LMDBs where run_folds.sh writes them by default (--out <repository>/results),
    relative to the repository root; the solver names its net and snapshot prefix from there."""
    lay = settings_from(["ck+", "--data", str(REPO)]).layout
    assert lay.root == REPO / RESULTS / "ck+"
    for model, split in (("cnn", "train"), ("cnn", "test"), ("encdec", "pretrain"), ("gcnet_s1r1", "train")):
        text = (REPO / "prototxt" / model / "train_val.prototxt").read_text()
        assert 'source: "%s"' % lay.lmdb(0, split).relative_to(REPO).as_posix() in text, (model, split)
    solver = (REPO / "prototxt" / "cnn" / "solver.prototxt").read_text()
    assert 'net: "prototxt/cnn/train_val.prototxt"' in solver
    assert 'snapshot_prefix: "%s/caffe_cnn"' % lay.root.relative_to(REPO).as_posix() in solver


def test_caffe_train_with_the_committed_solver(tmp_path):
    from gcnet.data.synthetic import make_synthetic
    root = tmp_path / "repo"
    shutil.copytree(str(REPO / "prototxt" / "cnn"), str(root / "prototxt" / "cnn"))
    data = tmp_path / "ck+"
    make_synthetic("ck+", str(data), subjects=6, seed=1)            # a small tree in the CK+ layout
    p = subprocess.run([str(REPO / "tools" / "run_folds.sh"), "ck+", "--data", str(data), "--out",
                        str(root / RESULTS), "--stop-after", "lmdb", "--n-folds", "2", "--folds", "0",
                        "--augment", "0"], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (root / RESULTS / "ck+" / "lmdb" / "fold_0" / "train" / "data.mdb").exists()
    # caffe train as README shows it, from the root; stopped (SIGINT: Caffe snapshots and exits 0) once it trains
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1", OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen(["caffe", "train", "--solver", "prototxt/cnn/solver.prototxt"], cwd=str(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    log, deadline = [], time.time() + 300
    try:
        for line in proc.stderr:
            log.append(line)
            if "Iteration 0, lr = " in line:                   # a forward and backward pass is done
                proc.send_signal(signal.SIGINT)
                break
            assert time.time() < deadline, "".join(log[-20:])
        log += proc.stderr.readlines()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(log)
    assert rc == 0 and "Optimization stopped early" in text, text[-3000:]
    snaps = sorted((root / RESULTS / "ck+").glob("caffe_cnn_iter_*.caffemodel"))
    assert len(snaps) == 1 and snaps[0].stat().st_size > 0, text[-3000:]
    assert "Snapshotting to binary proto file %s" % snaps[0].relative_to(root).as_posix() in text
