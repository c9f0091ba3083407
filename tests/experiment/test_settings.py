"""gcnet.experiment.settings: the schedules, validation and Slurm task selection of tools/run_folds.sh (no Caffe)."""
from pathlib import Path

import pytest

from gcnet import config as C
from gcnet.experiment import settings as S
from gcnet.experiment.cli import settings_from
from gcnet.experiment.procs import child_env, n_cores
from gcnet.experiment.summary import paper_numbers, settings_record
from gcnet.util import UsageError, parse_folds

REPO = Path(__file__).resolve().parents[2]


def settings(*args):
    return settings_from(args)


def test_parse_models_and_gpus():
    assert S.parse_models("cnn,gcnet_s1r1,cnn") == ["cnn", "gcnet_s1r1"]
    with pytest.raises(UsageError):
        S.parse_models("encdec")
    assert S.parse_gpus("cpu") is None and S.parse_gpus("0,1") == [0, 1]
    with pytest.raises(UsageError):
        S.parse_gpus("x")


def test_settings_profiles():
    s = settings("synthetic")
    row = C.SCHEDULES["synthetic-cpu"]
    assert s.profile == "synthetic-cpu" and s.schedule.iters == row["iters"] and s.scaled_down
    assert s.folds == parse_folds(row["folds"], row["n_folds"])
    assert s.jobs == n_cores() and s.threads == 1      # CPU default: one job per core, one BLAS thread each
    assert s.bn_samples == 512 and s.synthetic_subjects == 100 and s.lmdb_folds == s.folds
    assert s.data_root.endswith("ck+_100subjects_seed0")
    # pretraining on a synthetic WebFace set of other identities (fixed seed), then the generator stage
    assert s.pretrain_data.endswith("webface_300ids_seed0") and s.webface_identities == 300
    assert (s.schedule.pretrain_iters, s.schedule.generator_iters, s.fit_output_scale) == (3000, 1000, True)
    assert settings("synthetic", "--seed", "3").pretrain_data == s.pretrain_data
    assert settings("synthetic", "--pretrain-data", "folds").pretrain_data is None
    assert settings("synthetic", "--generator-iters", "0").schedule.generator_iters == 0
    assert s.layout.root.name == "synthetic"
    s = settings("synthetic", "--profile", "ablation", "--folds", "0")
    sch = s.schedule
    assert (s.profile, sch.iters, sch.pretrain_iters, sch.generator_iters, s.folds) == ("ablation", 1000, 3000, 2000,
                                                                                       [0])
    assert s.synthetic_subjects == 250 and s.layout.root.name == "synthetic-ablation"
    assert s.layout.dataset == "synthetic"
    with pytest.raises(UsageError, match="synthetic set"):
        settings("ck+", "--data", str(REPO), "--profile", "ablation")
    s = settings("ck+", "--data", str(REPO), "--gpu", "0,1")
    assert (s.schedule.iters, s.batch, s.n_folds, s.folds, s.models) == (300000, 64, 10, list(range(10)),
                                                                         list(C.EXPRESSION_MODELS))
    assert s.schedule.generator_iters == 30000 and s.pretrain_data is None and s.webface_identities is None
    assert s.profile == "paper" and not s.scaled_down and s.jobs == 2 and s.gpus == [0, 1]
    assert (s.schedule.display, s.schedule.snapshot, s.schedule.test_interval) == (100, 10000, 1000)
    s = settings("ck+", "--data", str(REPO), "--iters", "40", "--pretrain-iters", "8", "--out", "/tmp/r")
    assert (s.schedule.iters, s.schedule.pretrain_iters, s.profile) == (40, 8, "custom")
    assert s.layout.root == Path("/tmp/r/ck+") and s.layout.dataset == "ck+" and s.out == "/tmp/r"
    rec = settings_record(s, None)
    assert (rec["iters"], rec["pretrain_iters"], rec["generator_iters"]) == (40, 8, 4)


@pytest.mark.parametrize("args, needle", [
    (["nosuch"], "unknown dataset 'nosuch'"),
    (["ck+"], "--data ROOT is required"),
    (["synthetic", "--folds", "3-12"], "out of range"),
    (["synthetic", "--iters", "0"], "--iters must be >= 1"),
    (["synthetic", "--margin", "-1"], "--margin must be > 0"),
    (["synthetic", "--generator-iters", "-1"], "--generator-iters must be >= 0"),
])
def test_bad_settings(args, needle):
    with pytest.raises(UsageError, match=needle):
        settings(*args)


@pytest.mark.parametrize("flag, zero_ok", [
    ("--batch", False), ("--n-folds", False), ("--jobs", False), ("--display", False), ("--snapshot", False),
    ("--test-interval", False), ("--synthetic-subjects", False), ("--iters", False), ("--pretrain-iters", False),
    ("--threads", False), ("--bn-samples", False), ("--keep-snapshots", False), ("--margin", False),
    ("--base-lr", False), ("--augment", True), ("--gamma", True), ("--power", True), ("--clip-gradients", True),
    ("--pretrain-clip-gradients", True), ("--seed", True)])
def test_zero_is_never_replaced_by_the_default(flag, zero_ok):
    """A 0 given to an option is either used as 0 (where 0 means something) or refused with one line naming the
    option; it is never silently replaced by the default (`--batch 0` used to train at 64).  Negative and
    non-finite values are refused everywhere."""
    attr = flag[2:].replace("-", "_")
    if zero_ok:
        s = settings("synthetic", flag, "0")
        assert getattr(s.schedule if hasattr(s.schedule, attr) else s, attr) == 0
    else:
        with pytest.raises(UsageError, match="^%s must be >?=? ?[0-9]+, got 0" % flag):
            settings("synthetic", flag, "0")
    for bad in ("-1",) + (("nan", "inf") if flag in FLOAT_FLAGS else ()):
        with pytest.raises(UsageError, match="^%s must be" % flag):
            settings("synthetic", flag, bad)


FLOAT_FLAGS = ("--margin", "--base-lr", "--gamma", "--power", "--clip-gradients", "--pretrain-clip-gradients")


def test_given_values_are_recorded_as_given():
    s = settings("synthetic", "--batch", "3", "--jobs", "1", "--display", "1", "--snapshot", "2",
                 "--test-interval", "2", "--n-folds", "3", "--synthetic-subjects", "7", "--iters", "5")
    sch = s.schedule
    assert (s.batch, s.jobs, sch.display, sch.snapshot, sch.test_interval, s.n_folds, s.synthetic_subjects) == (
        3, 1, 1, 2, 2, 3, 7)
    assert settings_record(s, None)["batch"] == 3 and s.data_root.endswith("ck+_7subjects_seed0")
    with pytest.raises(UsageError, match="selects no fold"):
        settings("synthetic", "--folds", "")
    with pytest.raises(UsageError, match="--data is empty"):
        settings("synthetic", "--data", "")


def test_threads_per_job():
    """--threads N sets the BLAS/OpenMP threads of every job (child env) and is recorded in the summary settings;
    the default is cores // jobs (one per job when the jobs fill the cores)."""
    s = settings("synthetic", "--jobs", "2", "--threads", "1")
    assert s.threads == 1 and s.jobs == 2
    env = child_env(s.threads)
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert settings_record(s, None)["threads"] == 1
    assert settings("synthetic", "--jobs", "2").threads == max(1, n_cores() // 2)
    paper = settings("ck+", "--data", str(REPO))
    assert (paper.jobs, paper.threads) == (n_cores(), 1)              # outside the profiles too
    with pytest.raises(UsageError):
        settings("synthetic", "--threads", "0")


def test_slurm_array_tasks():
    s = settings("synthetic", "--models", "cnn,gcnet_s1r1", "--folds", "0-2")
    assert S.array_tasks(s) == [(0, "cnn"), (0, "gcnet_s1r1"), (1, "cnn"), (1, "gcnet_s1r1"), (2, "cnn"),
                                  (2, "gcnet_s1r1")]
    S.select_task(s, 3)
    assert (s.folds, s.models, s.lmdb_folds) == ([1], ["gcnet_s1r1"], [0, 1, 2])
    s = settings("synthetic", "--folds", "0-2", "--stop-after", "pretrain")
    assert S.array_tasks(s) == [(0, None), (1, None), (2, None)]
    with pytest.raises(UsageError, match="out of range: 3 task"):
        S.select_task(s, 3)


def test_paper_numbers():
    p = paper_numbers("ck+")
    assert p["models"]["cnn"] == pytest.approx(0.9694) and p["cnn_baseline"] == pytest.approx(0.9694)
    assert p["best_prior"] == {"method": "DTAGN-Joint", "accuracy": pytest.approx(0.9725)}
    assert "gcnet_s1r1" not in p["prior"] and paper_numbers("synthetic")["table"] is None


def test_schedule_table():
    """config.SCHEDULES holds every schedule (the synthetic rows as measured for README "Results"); the settings and
    tools/make_prototxt.py take a row through make_schedule, and solver_options gives each net's solver from it."""
    synthetic = dict(subjects=100, n_folds=10, folds="0-1", webface_identities=300, pretrain_iters=3000,
                     generator_iters=1000, iters=200, batch=16, augment=2, display=20, bn_samples=512)
    assert C.SCHEDULES == {"paper": dict(n_folds=10, iters=300000, batch=64), "synthetic-cpu": synthetic,
                           "ablation": dict(synthetic, subjects=250, generator_iters=2000, iters=1000, display=50,
                                            bn_samples=1024)}
    paper = C.make_schedule("paper")
    assert (paper.iters, paper.pretrain_iters, paper.generator_iters) == (300000, 300000, 30000)
    assert (paper.display, paper.snapshot, paper.test_interval) == (100, 10000, 1000)
    sch = C.make_schedule("synthetic-cpu", generator_iters=0, snapshot=7)
    assert (sch.iters, sch.pretrain_iters, sch.generator_iters, sch.display, sch.snapshot) == (200, 3000, 0, 20, 7)
    assert settings("synthetic", "--generator-iters", "0", "--snapshot", "7").schedule == sch
    # one mapping to the solver: each kind of net its iterations, the intervals clipped to them, its clipping
    sch = C.make_schedule("paper", iters=40, pretrain_iters=8, generator_iters=4)
    so = {m: C.solver_options(sch, m, gpu=True) for m in ("encdec", "generator", "gcnet_s1r1")}
    assert [so[m].max_iter for m in so] == [8, 4, 40]
    assert [(so[m].display, so[m].snapshot, so[m].test_interval) for m in so] == [(2, 8, 8), (2, 4, 4), (2, 10, 8)]
    assert so["encdec"].clip_gradients == C.PRETRAIN_CLIP_GRADIENTS and so["gcnet_s1r1"].clip_gradients == 0
    assert all(o.solver_mode == "GPU" for o in so.values())


def test_fused_unpool_on_cpu_off_on_gpu_unless_asked():
    """Patch 0012's UnpoolDeconvolution has no GPU kernel: CPU runs use it, --gpu runs keep MaxUnpool, either way
    on request; summary.json records the choice under the option's name."""
    assert settings("synthetic").fused_unpool is True
    assert settings("synthetic", "--gpu", "0").fused_unpool is False
    assert settings("synthetic", "--no-fused-unpool").fused_unpool is False
    assert settings("synthetic", "--gpu", "0", "--fused-unpool").fused_unpool is True
    assert settings_record(settings("synthetic", "--no-fused-unpool"), None)["fused_unpool"] is False
