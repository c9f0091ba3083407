"""The Caffe toolchain that tools/setup.sh builds: binary, pycaffe, Python layers, environment wiring."""
import os
import re
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_caffe_binary_reports_version():
    r = subprocess.run(["caffe", "--version"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"caffe version 1\.0\.0", r.stdout + r.stderr), r.stdout + r.stderr


def test_pycaffe_from_the_venv_has_python_layers():
    import caffe
    assert os.environ.get("VIRTUAL_ENV") and sys.prefix == os.path.realpath(os.environ["VIRTUAL_ENV"]) or \
        sys.prefix.startswith(os.environ["VIRTUAL_ENV"])
    assert caffe.__file__.startswith(os.environ["CAFFE_ROOT"])
    assert "Python" in caffe.layer_type_list()
    assert np.__version__.startswith("1."), "pycaffe needs numpy < 2"


def test_caffe_train_runs_a_python_layer_from_python_layers(tmp_path):
    """`caffe train` (the C++ binary, not pycaffe) must find python_layers/ through PYTHONPATH."""
    net = tmp_path / "net.prototxt"
    net.write_text(open(os.path.join(REPO, "tools", "tiny_python_layer_net.prototxt")).read())
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 3\ndisplay: 1\n'
                      'solver_mode: CPU\nsnapshot_after_train: false\n' % net)
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    r = subprocess.run(["caffe", "train", "--solver", str(solver)], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Creating layer dist" in out and "Optimization Done" in out


def test_ci_runs_exactly_the_readme_test_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    m = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert m, "README.md must hold the test command after a <!-- test-command --> marker"
    cmd = m.group(1).strip()
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert cmd in ci.splitlines(), "'.ci/run' must call README's test command: %s" % cmd


def test_second_setup_is_a_cached_no_op():
    r = subprocess.run([os.path.join(REPO, "tools", "setup.sh"), "--no-apt", "--env-file",
                        os.path.join(os.environ.get("TMPDIR", "/tmp"), "gcnet_env_test.sh")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "venv up to date" in r.stdout and "Caffe build cached" in r.stdout, r.stdout
    assert "compiling" not in r.stdout


def test_setup_fails_with_a_clear_message():
    r = subprocess.run([os.path.join(REPO, "tools", "setup.sh"), "--no-apt"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON="python-that-does-not-exist"), timeout=60)
    assert r.returncode != 0
    assert "FAILED in stage 'venv'" in r.stderr and "python-that-does-not-exist" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([os.path.join(REPO, "tools", "setup.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr
