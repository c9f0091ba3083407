"""The GPU check's parts that run without a GPU (gcnet.gpucheck, tools/gpu_check.sh, tools/bench.py --json): the
unit-test selection from Caffe's own listing, gtest and pycaffe result parsing, the GPU-vs-CPU judgement, the
paper-schedule arithmetic, the data placeholders, the runner arguments, and the scripts' bad-usage exits."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_caffe, tool_env
from gcnet.gpucheck import data, gtests, timing, training
from gcnet.stats import prediction_interval
from gcnet.util import UsageError

LISTING = """\
ConvolutionLayerTest/0.  # TypeParam = caffe::CPUDevice<float>
  TestSetup
  TestGradient
ConvolutionLayerTest/2.  # TypeParam = caffe::GPUDevice<float>
  TestSetup
  TestGradient
NeuronLayerTest/3.  # TypeParam = caffe::GPUDevice<double>
  TestReLU
  TestDropoutHalf
  TestSigmoid
NeuronLayerTest/1.  # TypeParam = caffe::CPUDevice<double>
  TestReLUGradient
  TestTanH
SyncedMemoryTest.
  TestInitialization
  TestGPURead
Im2colKernelTest/0.  # TypeParam = float
  Test2D
RandomNumberGeneratorTest/1.  # TypeParam = double
  TestRngGaussian
  TestRngGaussianGPU
EltwiseLayerTest/2.  # TypeParam = caffe::GPUDevice<float>
  TestProd
"""


def test_listing_parsed_with_type_params():
    rows = gtests.parse_listing(LISTING)
    assert ("ConvolutionLayerTest/2", "TestGradient", "caffe::GPUDevice<float>") in rows
    assert ("SyncedMemoryTest", "TestGPURead", "") in rows
    assert len(rows) == 15


def test_selection_per_device_and_name_filter():
    cases = gtests.test_cases(["Convolution", "ReLU", "Dropout", "Split"])
    rows = gtests.parse_listing(LISTING)
    gpu = gtests.select(rows, cases, "gpu")
    cpu = gtests.select(rows, cases, "cpu")
    assert gpu == ["ConvolutionLayerTest/2.TestSetup", "ConvolutionLayerTest/2.TestGradient",
                   "NeuronLayerTest/3.TestReLU", "NeuronLayerTest/3.TestDropoutHalf", "SyncedMemoryTest.TestGPURead",
                   "Im2colKernelTest/0.Test2D", "RandomNumberGeneratorTest/1.TestRngGaussianGPU"]
    assert cpu == ["ConvolutionLayerTest/0.TestSetup", "ConvolutionLayerTest/0.TestGradient",
                   "NeuronLayerTest/1.TestReLUGradient", "SyncedMemoryTest.TestInitialization",
                   "RandomNumberGeneratorTest/1.TestRngGaussian"]
    # no layer of ours is Eltwise or Sigmoid: not selected
    assert not any("Eltwise" in n or "Sigmoid" in n or "TanH" in n for n in gpu + cpu)


def test_every_layer_type_of_the_committed_nets_has_tests():
    types = gtests.net_layer_types(str(REPO / "prototxt"))
    assert {"Convolution", "Deconvolution", "BatchNorm", "Python", "Split"} <= set(types)
    cases = dict(gtests.test_cases(types))
    assert "NesterovSolverTest" in cases and "DeconvolutionLayerTest" in cases


def test_an_unmapped_layer_type_is_an_error():
    with pytest.raises(UsageError, match="Crop"):
        gtests.test_cases(["Convolution", "Crop"])


GTEST_OUT = """\
[==========] Running 3 tests from 2 test cases.
[ RUN      ] A/2.X
[       OK ] A/2.X (3 ms)
[ RUN      ] A/2.Y
[  FAILED  ] A/2.Y (1 ms)
[ RUN      ] B.Z
[       OK ] B.Z (0 ms)
[==========] 3 tests from 2 test cases ran. (10 ms total)
[  PASSED  ] 2 tests.
[  FAILED  ] 1 test, listed below:
[  FAILED  ] A/2.Y, where TypeParam = caffe::GPUDevice<float>
"""


def test_gtest_results_parsed():
    r = gtests.parse_results(GTEST_OUT)
    assert r == {"passed": 2, "failed": 1, "failed_tests": ["A/2.Y"], "ran": True}
    crashed = gtests.parse_results("\n".join(GTEST_OUT.splitlines()[:4]))
    assert crashed["ran"] is False and crashed["passed"] == 1


def test_prediction_interval_uses_student_t():
    from scipy import stats as sps
    v = [1.0, 1.2, 0.9]
    pi = prediction_interval(v)
    sd = sps.tstd(v)
    half = sps.t.ppf(0.995, 2) * sd * (1 + 1 / 3.0) ** 0.5
    assert pi["interval"] == pytest.approx([sum(v) / 3 - half, sum(v) / 3 + half], rel=1e-4)
    assert prediction_interval([0.5, 0.5], floor=0.01)["sd"] == 0.01          # equal draws: the floor
    with pytest.raises(ValueError):
        prediction_interval([1.0])


def _run(loss_shift=0.0, acc=0.8, lgen=10.0, preds=None):
    nets = {n: {"iters": list(range(0, 100, 10)), "loss": [2.0 - 0.01 * i + loss_shift for i in range(0, 100, 10)]}
            for n in ("encdec", "cnn_id", "generator", "cnn", "gcnet_s1r1")}
    tests = {m: {"accuracy": acc, "n": 100, "predictions": preds or [0] * 100} for m in ("cnn", "gcnet_s1r1")}
    return {"nets": nets, "tests": tests, "generator": {"l_gen_r": lgen}}


def test_gpu_run_like_another_seed_agrees_and_a_broken_one_does_not():
    ref = {0: _run(0.0, 0.80, 10.0), 1: _run(0.05, 0.78, 10.3), 2: _run(-0.04, 0.82, 9.8)}
    ok = training.compare(_run(0.02, 0.79, 10.1), ref)
    assert ok["agree"] and ok["outside"] == []
    assert ok["prediction_agreement"]["cnn"]["run_vs_seed_0"] == 1.0
    bad = training.compare(_run(3.0, 0.14, 40.0), ref)
    assert not bad["agree"]
    assert {"accuracy/cnn", "loss/gcnet_s1r1", "l_gen_r/generator"} <= set(bad["outside"])
    missing = _run()
    del missing["nets"]["cnn"]["iters"]
    assert "loss/cnn" in training.compare(missing, ref)["outside"]
    with pytest.raises(ValueError):
        training.compare(_run(), {0: _run()})


def test_late_loss_is_the_second_half_mean():
    assert training.late_loss({"iters": [0, 10, 20, 30], "loss": [4.0, 3.0, 2.0, 1.0]}) == pytest.approx(1.5)
    assert training.late_loss({"iters": [], "loss": []}) is None


def test_paper_estimate_arithmetic():
    ms = {m: 100.0 for m in timing.PAPER_MODELS}
    ms.update(cnn_pair=100.0, generator=50.0, encdec=80.0, cnn_id=20.0)
    est = timing.paper_estimate(ms, {1: 100.0, 2: 150.0, 4: 400.0})
    per = 100.0 * 3e5 * 10 / 3.6e6                      # 83.3 h per model
    assert est["five_models_hours"] == pytest.approx(5 * per, abs=0.1)
    extra = per + 50.0 * 3e4 * 10 / 3.6e6 + (80.0 + 20.0) * 3e5 / 3.6e6
    assert est["pipeline_hours"] == pytest.approx(5 * per + extra, abs=0.1)
    jobs = est["jobs_on_one_gpu"]
    assert jobs["best_jobs"] == 2 and jobs["throughput_gain"][2] == pytest.approx(4 / 3.0, abs=0.01)
    assert jobs["pipeline_hours"] == pytest.approx((5 * per + extra) * 0.75, abs=0.2)
    assert "error" in timing.paper_estimate({"cnn": 1.0})


def test_generator_iterations_fit_the_time():
    ms = {"encdec": 30.0, "cnn_id": 10.0, "generator": 40.0}
    n = timing.generator_iterations(ms, 180, 45, slack=1.25)
    assert n == int(135 / 0.1)
    assert timing.generator_iterations(ms, 10, 45) == 1


def test_hollow_copy_keeps_size_signature_and_time(tmp_path):
    from gcnet.data.images import check_image_file
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    (src / "a" / "f.png").write_bytes(png)
    (src / "a" / "f_emotion.txt").write_text("3.0\n")
    for p in (src / "a" / "f.png", src / "a" / "f_emotion.txt"):
        os.utime(p, (data.FILE_TIME, data.FILE_TIME))
    r = data.hollow_copy(str(src), str(dst))
    assert r == {"images": 1, "image_bytes": len(png), "other_files": 1}
    out = (dst / "a" / "f.png").read_bytes()
    assert len(out) == len(png) and out[:data.SIGNATURE_BYTES] == png[:data.SIGNATURE_BYTES]
    assert set(out[data.SIGNATURE_BYTES:]) == {0}
    assert os.stat(dst / "a" / "f.png").st_mtime_ns == data.FILE_TIME * 10 ** 9
    assert (dst / "a" / "f_emotion.txt").read_text() == "3.0\n"
    assert check_image_file(str(dst / "a" / "f.png")) is None


def test_runner_accepts_the_schedule(tmp_path):
    from gcnet.experiment.cli import build_parser
    from gcnet.experiment.settings import resolve_settings
    args = training.runner_args(str(tmp_path / "set"), str(tmp_path / "out"), 1, 0, 4,
                                extra=["--stop-after", "generator"])
    s = resolve_settings(build_parser().parse_args(args))
    sch = s.schedule
    assert (sch.iters, sch.pretrain_iters, sch.generator_iters, s.batch, s.augment) == (60, 60, 20, 16, 2)
    assert s.models == ["cnn", "gcnet_s1r1"] and s.folds == [0] and s.gpus == [0] and s.seed == 1
    assert s.stop_after == "generator" and s.pretrain_data is None          # pretraining on the fold's faces


def _sh(*args, env=None):
    return subprocess.run([str(REPO / "tools" / "gpu_check.sh")] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=env, timeout=60)


@pytest.mark.parametrize("args,word", [(["--budget", "0"], "--budget"), (["--mode", "tpu"], "--mode"),
                                       (["--frobnicate"], "--frobnicate"), (["--out"], "--out")])
def test_gpu_check_bad_usage(args, word):
    p = _sh(*args)
    assert p.returncode == 2
    assert word in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_gpu_check_names_a_missing_bundle(tmp_path):
    env = dict(os.environ, GCNET_GPU_ROOT=str(tmp_path / "root"))     # nothing unpacked there by an earlier call
    p = _sh("--bundle", str(tmp_path / "nothing"), env=env)
    assert p.returncode == 2 and str(tmp_path / "nothing") in p.stderr and "gpu_bundle.sh" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = _sh("--dry-run", "--bundle", str(tmp_path / "nothing"), env=env)
    assert p.returncode == 2 and "--variant cpu" in p.stderr


def test_gpucheck_run_outside_the_bundle_is_bad_usage(tmp_path):
    env = dict(os.environ)
    env.pop("GCNET_BUNDLE", None)
    p = subprocess.run([sys.executable, "-m", "gcnet.gpucheck", "run", "--mode", "cpu", "--out", str(tmp_path)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
                       cwd=str(REPO))
    assert p.returncode == 2 and "tools/gpu_check.sh" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_gpu_bundle_bad_usage():
    p = subprocess.run([str(REPO / "tools" / "gpu_bundle.sh"), "--variant", "tpu"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert p.returncode == 2 and "--variant" in p.stderr


@needs_caffe
def test_bench_json_and_concurrent_copies(tmp_path):
    out = tmp_path / "t.json"
    p = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--models", "cnn", "--batch", "2",
                        "--iterations", "1", "--concurrent", "2", "--json", str(out)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, env=tool_env(), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:]
    r = json.loads(out.read_text())
    assert r["concurrent"] == 2 and r["batch"] == 2
    (build, ms), = r["models"]["cnn"].items()
    assert ms["fb"] > 0 and ms["f"] > 0 and ms["b"] > 0


@needs_caffe
def test_extract_and_compare_a_real_run(tiny_results):
    out = str(tiny_results["layout"].root.parent)
    run = training.extract(out)
    assert run["nets"]["encdec"]["iters"] and run["nets"]["cnn"]["loss"]
    assert "error" in run["nets"]["generator"]                       # --generator-iters 3 // 10 = 0: no stage
    assert 0.0 <= run["tests"]["cnn"]["accuracy"] <= 1.0 and run["tests"]["cnn"]["n"] > 0
    c = training.compare(run, {0: run, 1: run})
    assert c["quantities"]["accuracy/cnn"]["inside"]
    # the generator's loss and L_Gen,r are missing on both sides: reported, not passed
    assert sorted(c["outside"]) == ["l_gen_r/generator", "loss/generator"]
