"""gcnet.experiment.cli: the schedules, validation and Slurm task selection of tools/run_folds.sh (no Caffe)."""
from pathlib import Path

import pytest

from gcnet import config as C
from gcnet.experiment import cli
from gcnet.experiment.procs import child_env, n_cores
from gcnet.experiment.summary import paper_numbers, settings_record
from gcnet.util import UsageError, parse_folds

REPO = Path(__file__).resolve().parents[2]


def settings(*args):
    return cli.resolve_settings(cli.build_parser().parse_args(list(args)))


def test_parse_models_and_gpus():
    assert cli.parse_models("cnn,gcnet_s1r1,cnn") == ["cnn", "gcnet_s1r1"]
    with pytest.raises(UsageError):
        cli.parse_models("encdec")
    assert cli.parse_gpus("cpu") is None and cli.parse_gpus("0,1") == [0, 1]
    with pytest.raises(UsageError):
        cli.parse_gpus("x")


def test_settings_profiles():
    s = settings("synthetic")
    assert s.profile == "synthetic-cpu" and s.max_iter == cli.SYNTHETIC_PROFILE["max_iter"] and s.scaled_down
    assert s.folds == parse_folds(cli.SYNTHETIC_PROFILE["folds"], cli.SYNTHETIC_PROFILE["n_folds"])
    assert s.jobs == 2 and s.bn_samples == 512 and s.synthetic_subjects == 100 and s.lmdb_folds == s.folds
    assert s.data_root.endswith("ck+_100subjects_seed0")
    # pretraining on a synthetic WebFace set of other identities (fixed seed), then the generator stage
    assert s.pretrain_data.endswith("webface_300ids_seed0") and s.webface_identities == 300
    assert (s.pretrain_max_iter, s.generator_max_iter, s.fit_output_scale) == (3000, 1000, True)
    assert settings("synthetic", "--seed", "3").pretrain_data == s.pretrain_data
    assert settings("synthetic", "--pretrain-data", "folds").pretrain_data is None
    assert settings("synthetic", "--generator-iters", "0").generator_max_iter == 0
    assert s.layout.root.name == "synthetic"
    s = settings("synthetic", "--profile", "ablation", "--folds", "0")
    assert (s.profile, s.max_iter, s.pretrain_max_iter, s.generator_max_iter, s.folds) == ("ablation", 1000, 3000,
                                                                                          2000, [0])
    assert s.synthetic_subjects == 250 and s.layout.root.name == "synthetic-ablation"
    assert s.layout.dataset == "synthetic"
    with pytest.raises(UsageError, match="synthetic set"):
        settings("ck+", "--data", str(REPO), "--profile", "ablation")
    s = settings("ck+", "--data", str(REPO), "--gpu", "0,1")
    assert (s.max_iter, s.batch, s.n_folds, s.folds, s.models) == (300000, 64, 10, list(range(10)),
                                                                   list(C.EXPRESSION_MODELS))
    assert s.generator_max_iter == 30000 and s.pretrain_data is None and s.webface_identities is None
    assert s.profile == "paper" and not s.scaled_down and s.jobs == 2 and s.gpus == [0, 1]
    assert (s.display, s.snapshot, s.test_interval) == (100, 10000, 1000)
    s = settings("ck+", "--data", str(REPO), "--iters", "40", "--pretrain-iters", "8", "--out", "/tmp/r")
    assert (s.max_iter, s.pretrain_max_iter, s.profile) == (40, 8, "custom")
    assert s.layout.root == Path("/tmp/r/ck+") and s.layout.dataset == "ck+"
    assert settings_record(s, None)["iterations"] == 40 and settings_record(s, None)["pretrain_iterations"] == 8


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
    attr = {"--iters": "max_iter", "--pretrain-iters": "pretrain_max_iter", "--augment": "augment",
            "--clip-gradients": "clip_gradients", "--pretrain-clip-gradients": "pretrain_clip_gradients"}.get(
        flag, flag[2:].replace("-", "_"))
    if zero_ok:
        assert getattr(settings("synthetic", flag, "0"), attr) == 0
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
    assert (s.batch, s.jobs, s.display, s.snapshot, s.test_interval, s.n_folds, s.synthetic_subjects) == (
        3, 1, 1, 2, 2, 3, 7)
    assert settings_record(s, None)["batch"] == 3 and s.data_root.endswith("ck+_7subjects_seed0")
    with pytest.raises(UsageError, match="selects no fold"):
        settings("synthetic", "--folds", "")
    with pytest.raises(UsageError, match="--data is empty"):
        settings("synthetic", "--data", "")


def _no_run(monkeypatch):
    """main() must stop before any work: running would fail the test (not train at a replaced value)."""
    import gcnet.experiment.pipeline as P
    monkeypatch.setattr(P, "run", lambda s, sup: pytest.fail("ran (batch %s, data %s)" % (s.batch, s.data_root)))


def test_cli_exit_2_one_line_for_a_zero(capsys, monkeypatch, tmp_path):
    """Through main(): exit 2, one line naming the option, nothing else printed."""
    _no_run(monkeypatch)
    assert cli.main(["synthetic", "--batch", "0", "--out", str(tmp_path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --batch must be >= 1, got 0"]


def test_synthetic_data_that_is_a_file(tmp_path, capsys, monkeypatch):
    """`synthetic --data FILE` names the real problem (a file, not a folder) before generating anything; it used
    to say it was generating the set there and then complain about a --force option run_folds.sh does not have."""
    import gcnet.experiment.pipeline as P
    monkeypatch.setattr(P.stages, "run_lmdb", lambda ctx: pytest.fail("went on to the LMDB stage"))
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert cli.main(["synthetic", "--data", str(f), "--out", str(tmp_path / "out")]) == cli.EXIT_USAGE
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and "is a file" in err[0] and "--force" not in err[0], err
    assert "generating" not in cap.out and f.read_text() == "x" and not (tmp_path / "out").exists()


def test_threads_per_job():
    """--threads N sets the BLAS/OpenMP threads of every job (child env) and is recorded in the summary settings;
    the default is cores // jobs (one per job when the jobs fill the cores)."""
    s = settings("synthetic", "--jobs", "2", "--threads", "1")
    assert s.threads == 1 and s.jobs == 2
    env = child_env(s.threads)
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert settings_record(s, None)["threads"] == 1
    assert settings("synthetic", "--jobs", "2").threads == max(1, n_cores() // 2)
    with pytest.raises(UsageError):
        settings("synthetic", "--threads", "0")


def test_slurm_array_tasks():
    s = settings("synthetic", "--models", "cnn,gcnet_s1r1", "--folds", "0-2")
    assert cli.array_tasks(s) == [(0, "cnn"), (0, "gcnet_s1r1"), (1, "cnn"), (1, "gcnet_s1r1"), (2, "cnn"),
                                  (2, "gcnet_s1r1")]
    cli.select_task(s, 3)
    assert (s.folds, s.models, s.lmdb_folds) == ([1], ["gcnet_s1r1"], [0, 1, 2])
    s = settings("synthetic", "--folds", "0-2", "--stop-after", "pretrain")
    assert cli.array_tasks(s) == [(0, None), (1, None), (2, None)]
    with pytest.raises(UsageError, match="out of range: 3 task"):
        cli.select_task(s, 3)


def test_paper_numbers():
    p = paper_numbers("ck+")
    assert p["models"]["cnn"] == pytest.approx(0.9694) and p["cnn_baseline"] == pytest.approx(0.9694)
    assert p["best_prior"] == {"method": "DTAGN-Joint", "accuracy": pytest.approx(0.9725)}
    assert "gcnet_s1r1" not in p["prior"] and paper_numbers("synthetic")["table"] is None


def test_help_needs_no_numpy_nor_caffe():
    """tools/run_folds.sh --help works before tools/setup.sh (system Python: no numpy, no pycaffe)."""
    import subprocess
    import sys
    code = ("import runpy, sys; sys.modules['numpy'] = sys.modules['caffe'] = None; sys.argv = ['x', '--help']; "
            "runpy.run_module('gcnet.experiment', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "usage: tools/run_folds.sh" in p.stdout and "--iters" in p.stdout, p.stderr
