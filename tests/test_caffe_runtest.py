"""Issue 11: Caffe's own unit tests (tools/setup.sh --runtest) and the image builder's command line.

The report script turns a gtest log into a verdict against tools/caffe_known_failures.txt; it is checked here on
gtest logs in the format of the suite's bundled gtest 1.7 (no Caffe build needed). docker_build.sh is checked only
for its argument handling and the Dockerfile for its layer order: building images is far too slow for this suite
(tools/docker_build.sh does that and checks the images itself)."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(REPO, "tools", "caffe_runtest_report.sh")
KNOWN = os.path.join(REPO, "tools", "caffe_known_failures.txt")
DOCKER_BUILD = os.path.join(REPO, "tools", "docker_build.sh")

HEAD = """[==========] Running 4 tests from 2 test cases.
[----------] Global test environment set-up.
[----------] 3 tests from ConvolutionLayerTest/0, where TypeParam = caffe::CPUDevice<float>
[ RUN      ] ConvolutionLayerTest/0.TestSetup
[       OK ] ConvolutionLayerTest/0.TestSetup (0 ms)
[ RUN      ] ConvolutionLayerTest/0.TestGradient
"""


def log_all_passed():
    return HEAD + """[       OK ] ConvolutionLayerTest/0.TestGradient (12 ms)
[ RUN      ] BlobSimpleTest/1.TestReshape
[       OK ] BlobSimpleTest/1.TestReshape (0 ms)
[ RUN      ] NetTest/0.TestForward
[       OK ] NetTest/0.TestForward (1 ms)

[----------] Global test environment tear-down
[==========] 4 tests from 2 test cases ran. (15 ms total)
[  PASSED  ] 4 tests.
"""


def log_two_failed():
    return HEAD + """src/caffe/test/test_gradient_check_util.hpp:175: Failure
The difference between computed_gradient and estimated_gradient is 0.5, which exceeds threshold_ * scale
[  FAILED  ] ConvolutionLayerTest/0.TestGradient, where TypeParam = caffe::CPUDevice<float> (12 ms)
[ RUN      ] BlobSimpleTest/1.TestReshape
src/caffe/test/test_blob.cpp:40: Failure
[  FAILED  ] BlobSimpleTest/1.TestReshape, where TypeParam = double (0 ms)
[ RUN      ] NetTest/0.TestForward
[       OK ] NetTest/0.TestForward (1 ms)

[----------] Global test environment tear-down
[==========] 4 tests from 2 test cases ran. (15 ms total)
[  PASSED  ] 2 tests.
[  FAILED  ] 2 tests, listed below:
[  FAILED  ] ConvolutionLayerTest/0.TestGradient, where TypeParam = caffe::CPUDevice<float>
[  FAILED  ] BlobSimpleTest/1.TestReshape, where TypeParam = double

 2 FAILED TESTS
"""


def report(tmp_path, log_text, known_text=None):
    log = tmp_path / "gtest.log"
    log.write_text(log_text)
    args = [REPORT, str(log)]
    if known_text is not None:
        known = tmp_path / "known.txt"
        known.write_text(known_text)
        args.append(str(known))
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_all_passed_prints_gtest_closing_lines_and_zero_failed(tmp_path):
    r = report(tmp_path, log_all_passed(), "# nothing known\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[  PASSED  ] 4 tests." in r.stdout
    assert "Caffe test suite: 4 tests, 0 failed (0 known, 0 unexpected)" in r.stdout


def test_unlisted_failure_fails_and_listed_one_is_reported_with_its_reason(tmp_path):
    known = "# comment line\nConvolutionLayerTest/*.TestGradient  gradient check off by float rounding  # why\n"
    r = report(tmp_path, log_two_failed(), known)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "known failure: ConvolutionLayerTest/0.TestGradient -- gradient check off by float rounding" in out
    assert "UNEXPECTED failure: BlobSimpleTest/1.TestReshape" in out
    assert "4 tests, 2 failed (1 known, 1 unexpected)" in out
    assert "2 FAILED TESTS" in out                              # gtest's own closing lines are shown


def test_all_failures_listed_passes_and_stale_entries_are_named(tmp_path):
    known = ("ConvolutionLayerTest/0.TestGradient reason one\nBlobSimpleTest/1.TestReshape reason two\n"
             "PoolingLayerTest/*.TestGone reason three\n")
    r = report(tmp_path, log_two_failed(), known)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 failed (2 known, 0 unexpected)" in r.stdout
    assert "did not fail in this run: PoolingLayerTest/*.TestGone" in r.stdout
    assert "reason two" in r.stdout


def test_a_run_that_did_not_finish_is_not_a_pass(tmp_path):
    r = report(tmp_path, HEAD, "")                     # crashed inside TestGradient: no summary line
    assert r.returncode == 3
    assert "did not finish" in r.stderr and "Traceback" not in r.stderr


def test_known_failure_without_a_reason_is_refused(tmp_path):
    r = report(tmp_path, log_two_failed(), "BlobSimpleTest/1.TestReshape\n")
    assert r.returncode == 2
    assert "gives no reason" in r.stderr


def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([REPORT], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([REPORT, str(tmp_path / "missing.log")], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read gtest log" in r.stderr


def test_project_known_failures_file_is_well_formed(tmp_path):
    """Every entry of the real list has a reason (the report refuses the file otherwise)."""
    r = report(tmp_path, log_all_passed())              # default list: tools/caffe_known_failures.txt
    assert r.returncode == 0, r.stdout + r.stderr
    assert KNOWN in r.stdout


def test_setup_help_documents_runtest():
    r = subprocess.run([os.path.join(REPO, "tools", "setup.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--runtest" in r.stdout


def _runtest_dir():
    root = os.environ.get("CAFFE_ROOT", "")
    m = re.match(r"(.*)/caffe-(cpu)-([0-9a-f]{12})$", root)
    return os.path.join(m.group(1), "runtest-%s-%s" % (m.group(2), m.group(3))) if m else None


@pytest.mark.skipif(not (_runtest_dir() and os.path.isfile(os.path.join(_runtest_dir(), ".complete"))),
                    reason="no cached --runtest result for this CPU build (tools/setup.sh --runtest makes one)")
def test_second_runtest_is_a_cached_no_op(tmp_path):
    """With the suite already run on this build, --runtest only reprints the cached verdict (seconds, not minutes)."""
    log = os.path.join(_runtest_dir(), "gtest.log")
    mtime = os.path.getmtime(log)
    r = subprocess.run([os.path.join(REPO, "tools", "setup.sh"), "--no-apt", "--runtest",
                        "--env-file", str(tmp_path / "env.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "already run on this build" in r.stdout
    assert re.search(r"Caffe test suite: \d{3,} tests, \d+ failed \(\d+ known, 0 unexpected\)", r.stdout)
    assert "compiling" not in r.stdout and "running Caffe's test suite" not in r.stdout
    assert os.path.getmtime(log) == mtime


@pytest.mark.parametrize("args,msg", [
    ([], "--variant cpu|cuda is required"),
    (["--variant", "gpu"], "unknown variant 'gpu'"),
    (["--variant"], "--variant needs cpu or cuda"),
    (["--variant", "cpu", "--builder", "podman"], "unknown builder 'podman'"),
    (["--variant", "cpu", "--frobnicate"], "unknown option '--frobnicate'"),
])
def test_docker_build_rejects_bad_arguments_before_building(args, msg):
    r = subprocess.run([DOCKER_BUILD] + args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_docker_build_help():
    r = subprocess.run([DOCKER_BUILD, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--variant cpu|cuda" in r.stdout and "buildah" in r.stdout


def _stages(dockerfile):
    stages, cur = {}, None
    for line in dockerfile.splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            cur = m.group(1)
            stages[cur] = []
        elif cur and line.strip() and not line.startswith("#"):
            stages[cur].append(line)
    return stages


def test_dockerfile_builds_caffe_before_copying_the_project():
    """Changing project code must not rebuild Caffe: setup.sh runs before `COPY . .` in both targets."""
    stages = _stages(open(os.path.join(REPO, "Dockerfile")).read())
    assert {"cpu", "cuda"} <= set(stages)
    for target in ("cpu", "cuda"):
        lines = stages[target]
        setup = [i for i, l in enumerate(lines) if re.match(r"RUN\s+tools/setup\.sh", l)]
        copy_all = [i for i, l in enumerate(lines) if re.match(r"COPY\s+\.\s+\.", l)]
        assert len(setup) == 1 and len(copy_all) == 1 and setup[0] < copy_all[0], target
        for l in lines[:setup[0]]:                       # only what the build key depends on comes before it
            if l.startswith("COPY"):
                assert re.match(r"COPY\s+(--from=setup-files\s|tools/|patches/|requirements)", l), l
    for l in stages["setup-files"] + stages["base"]:      # the stages the targets copy from / build on
        if l.startswith("COPY"):
            assert re.match(r"COPY\s+(tools/|patches/|requirements)", l), l
    cuda = "\n".join(stages["cuda-toolkit"] + stages["cuda"])
    assert "nvidia-cuda-toolkit" in cuda and "g++-11" in cuda and "CXX=g++-11" in cuda
