"""tools/slurm/ on a real Slurm: a private single-node cluster (tools/slurm/local_cluster.sh: 2 CPUs, no GPU GRES)
brought up under a temporary folder and stopped afterwards.

End to end: `tools/slurm/submit.sh` with its default resources runs a tiny synthetic experiment (cnn and
gcnet_s0r0, one fold, 20 iterations) to a collected summary, compared with a local `tools/run_folds.sh` of the same
settings; a task signalled with TERM (what Slurm sends before the time limit) snapshots, requeues itself and
resumes from its snapshot; a failing sbatch cancels what was already submitted.  The Slurm tests need root (the
daemons run as root) and install slurm-wlm + munge with apt-get when missing; where that cannot be done they skip
and say why.  The command-line tests at the end use a stand-in sbatch and run anywhere.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from conftest import needs_caffe  # noqa: E402
from gcnet.logparse import parse_log  # noqa: E402

SLURM = REPO / "tools" / "slurm"
LOCAL_CLUSTER = str(SLURM / "local_cluster.sh")
SUBMIT = str(SLURM / "submit.sh")
MODELS = ["cnn", "gcnet_s0r0"]
SETTINGS = ["--models", ",".join(MODELS), "--folds", "0", "--n-folds", "2", "--iters", "20", "--pretrain-iters", "20",
            "--batch", "4", "--augment", "0", "--display", "5", "--no-figures"]
CHAIN_TIMEOUT = 1200          # seconds for the whole Slurm chain (measured here: see README, "On a Slurm cluster")
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STAGE_OUT", "SIGNALING"}
STUCK = ("PartitionConfig", "DependencyNeverSatisfied", "PartitionTimeLimit", "ReqNodeNotAvail", "BadConstraints",
         "InvalidQOS", "PartitionNodeLimit")


def sh(cmd, env=None, timeout=300, cwd=REPO):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout, env=env, cwd=str(cwd))


def repo_state():
    """What a run may not change in the checkout: `git status` in a git checkout; elsewhere (the Docker image holds
    the project without .git or git) every file's path, size and mtime."""
    if shutil.which("git") and (REPO / ".git").exists():
        return sh(["git", "status", "--porcelain", "--untracked-files=all"]).stdout
    state = []
    for root, dirs, files in os.walk(str(REPO)):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".pytest_cache"))
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            state.append((os.path.relpath(os.path.join(root, f), str(REPO)), st.st_size, st.st_mtime_ns))
    return state


# ============================================================================================ the local cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """env (SLURM_CONF of a private cluster) for the module; its daemons are stopped by PID afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (slurmctld/slurmd run as root); not root here")
    p = sh([LOCAL_CLUSTER, "install"], timeout=900)
    if p.returncode != 0:
        pytest.skip("Slurm cannot be installed here: %s" % (p.stderr.strip().splitlines() or ["?"])[-1])
    d = tmp_path_factory.mktemp("slurm")
    p = sh([LOCAL_CLUSTER, "start", str(d)], timeout=180)
    logs = "".join("\n--- %s\n%s" % (f.name, f.read_text()[-2000:]) for f in sorted((d / "log").glob("*")))
    assert p.returncode == 0, "local Slurm did not start: %s%s" % (p.stderr, logs)
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    env.pop("GCNET_ROOT", None)
    try:
        yield env
    finally:
        sh([LOCAL_CLUSTER, "stop", str(d)], timeout=120)


def job_states(env, ids):
    """{job or array task id: (state, reason)} of this cluster's jobs ids."""
    p = sh(["squeue", "-h", "-r", "--states=all", "-j", ",".join(map(str, ids)), "-o", "%i|%T|%r"], env=env,
           timeout=60)
    out = {}
    for line in p.stdout.splitlines():
        i, st, why = line.split("|", 2)
        out[i] = (st, why)
    return out


def wait_jobs(env, ids, timeout, logs_dir=None):
    """Wait until none of ids is queued or running; fail at once on a job Slurm can never run."""
    t0 = time.time()
    while True:
        st = job_states(env, ids)
        stuck = {i: s for i, s in st.items() if s[0] == "PENDING" and any(x in s[1] for x in STUCK)}
        assert not stuck, "jobs that can never run: %s" % stuck
        if st and not any(s[0] in ACTIVE for s in st.values()):
            return st
        if time.time() - t0 > timeout:
            tails = ""
            if logs_dir:
                tails = "".join("\n--- %s\n%s" % (f.name, f.read_text()[-1500:]) for f in sorted(logs_dir.glob("*")))
            pytest.fail("Slurm jobs not done after %d s: %s%s" % (timeout, st, tails))
        time.sleep(2)


def submitted_ids(text):
    m = re.search(r"submitted: prep (\d+), pretrain (\d+) .*train (\d+) .*collect (\d+)", text)
    assert m, text
    return dict(zip(("prep", "pretrain", "train", "collect"), map(int, m.groups())))


# ============================================================================================ the run
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm_data") / "ck+"
    p = sh([sys.executable, "tools/make_synthetic.py", "--layout", "ck+", "--subjects", "10", "--seed", "0",
            "--out", str(d), "--quiet"])
    assert p.returncode == 0, p.stderr
    return d


@pytest.fixture(scope="module")
def runs(cluster, data, tmp_path_factory):
    """The same tiny experiment submitted with tools/slurm/submit.sh (defaults) and run by tools/run_folds.sh,
    the local one while the Slurm chain runs."""
    work = tmp_path_factory.mktemp("slurm_runs")
    args = ["synthetic", "--data", str(data)] + SETTINGS
    git_before = repo_state()
    t0 = time.time()
    # from another folder with a relative --out: the jobs write where the submitter meant
    sub = sh([SUBMIT] + args + ["--out", "slurm"], env=cluster, timeout=300, cwd=str(work))
    local = subprocess.Popen(["nice", "-n", "5", str(REPO / "tools" / "run_folds.sh")] + args
                             + ["--out", str(work / "local")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, cwd=str(REPO))
    try:
        assert sub.returncode == 0, sub.stdout + sub.stderr
        ids = submitted_ids(sub.stdout)
        states = wait_jobs(cluster, ids.values(), CHAIN_TIMEOUT, work / "slurm" / "synthetic" / "slurm")
        seconds = time.time() - t0
        local_out, _ = local.communicate(timeout=CHAIN_TIMEOUT)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
    print("Slurm chain: %.0f s (submit to collected summary, next to the local run)" % seconds)
    return {"submit": sub, "ids": ids, "states": states, "seconds": seconds, "work": work, "args": args,
            "local_rc": local.returncode, "local_out": local_out, "git_before": git_before}


@pytest.mark.e2e
@needs_caffe
def test_submit_defaults_run_to_the_local_summary(runs, cluster):
    work, ids = runs["work"], runs["ids"]
    ds = work / "slurm" / "synthetic"
    logs = ds / "slurm"
    failed = {i: s for i, s in runs["states"].items() if s[0] != "COMPLETED"}
    assert not failed, "jobs not COMPLETED: %s\n%s" % (failed, "".join(
        "\n--- %s\n%s" % (f.name, f.read_text()[-2000:]) for f in sorted(logs.glob("*"))))
    # one pretrain task (one fold), one train task per model, logs beside the results, none in the checkout
    assert {i for i in runs["states"] if "_" in i} == {"%d_0" % ids["pretrain"], "%d_0" % ids["train"],
                                                       "%d_1" % ids["train"]}
    names = sorted(f.name for f in logs.glob("*.out"))
    assert names == sorted(["prep-%d.out" % ids["prep"], "pretrain-%d_0.out" % ids["pretrain"],
                            "train-%d_0.out" % ids["train"], "train-%d_1.out" % ids["train"],
                            "collect-%d.out" % ids["collect"]]), names
    assert repo_state() == runs["git_before"]
    assert "Traceback" not in "".join(f.read_text() for f in logs.glob("*.out"))
    # the defaults: 2 CPUs, 4G, no GPU
    show = sh(["scontrol", "show", "job", str(ids["prep"])], env=cluster).stdout
    assert "NumCPUs=2" in show and "MinMemoryNode=4G" in show, show
    assert "gres" not in sh(["scontrol", "show", "job", str(ids["train"])], env=cluster).stdout.lower()
    # the collected summary has what the local run produced
    assert runs["local_rc"] == 0, runs["local_out"][-3000:]
    sl = json.loads((ds / "summary.json").read_text())
    lo = json.loads((work / "local" / "synthetic" / "summary.json").read_text())
    assert sl["failures"] == [] and lo["failures"] == []
    assert list(sl["models"]) == list(lo["models"]) == MODELS
    for m in MODELS:
        fs, fl = sl["models"][m]["folds"], lo["models"][m]["folds"]
        assert set(fs) == set(fl) == {"0"}, (m, fs, fl)
        assert fs["0"]["n_test"] == fl["0"]["n_test"] > 0
        assert fs["0"]["n_train"] == fl["0"]["n_train"] > 0
        assert 0.0 <= fs["0"]["accuracy"] <= 1.0 and 0.0 <= fl["0"]["accuracy"] <= 1.0
        assert sl["models"][m]["n_folds_done"] == 1
    assert sl["folds_requested"] == lo["folds_requested"] == [0]
    ss, sloc = sl["settings"], lo["settings"]
    for key in ("iters", "pretrain_iters", "batch", "n_folds", "data_hash", "data_root", "git_commit",
                "caffe_version", "synthetic", "profile", "device"):
        assert key in ss and key in sloc, key
    assert ss["iters"] == ss["pretrain_iters"] == 20 and ss["batch"] == 4
    differ = {k: (ss[k], sloc[k]) for k in set(ss) & set(sloc) if ss[k] != sloc[k]}
    assert not differ, "settings records differ: %s" % differ
    md = (ds / "summary.md").read_text()
    assert all("| %s | 1/1 |" % m in md for m in MODELS), md


@pytest.mark.e2e
@needs_caffe
def test_term_snapshots_requeues_and_resumes(runs, cluster, data):
    """What Slurm does 10 minutes before the time limit (--signal=B:TERM@600), done by hand on one task."""
    out = runs["work"] / "requeue"
    src = runs["work"] / "slurm" / "synthetic"
    ds = out / "synthetic"
    for part in ("lmdb", "pretrain"):                    # reuse the chain's LMDBs and pretraining (cached)
        shutil.copytree(str(src / part), str(ds / part), symlinks=True)
    (ds / "slurm").mkdir()
    iters = 60
    args = ["synthetic", "--data", str(data), "--out", str(out)] + SETTINGS
    args[args.index("--models") + 1] = "cnn"
    args[args.index("--iters") + 1] = str(iters)         # same display: the pretraining stays cached
    p = sh(["sbatch", "--parsable", "--export=ALL", "--cpus-per-task=2", "--mem=4G",
            "--output=%s" % (ds / "slurm" / "all-%j.out"), str(SLURM / "run_folds.sbatch"), "all"] + args,
           env=dict(cluster, GCNET_ROOT=str(REPO)))
    assert p.returncode == 0, p.stderr
    job = int(p.stdout.strip().split(";")[0])
    d = ds / "cnn" / "fold_0"
    log = ds / "slurm" / ("all-%d.out" % job)
    t0 = time.time()
    it_seen = 0
    while it_seen < 5:                                    # wait until caffe trains
        assert time.time() - t0 < 600, "training never started:\n" + (log.read_text()[-3000:] if log.exists() else "")
        tl = d / "train.log"
        its = [r["iter"] for r in parse_log(tl.read_text())["train"]] if tl.exists() else []
        it_seen = max(its, default=0)
        assert it_seen < iters, "training finished before the signal; raise iters"
        time.sleep(0.2)
    sig = sh(["scancel", "--signal=TERM", "--batch", str(job)], env=cluster)
    assert sig.returncode == 0, sig.stderr
    states = wait_jobs(cluster, [job], 600, ds / "slurm")
    text = log.read_text()
    assert states[str(job)][0] == "COMPLETED", (states, text[-3000:])
    assert "SIGTERM: asking the runner to snapshot and stop" in text, text[-3000:]
    assert "runner exited with status 130" in text and "requeueing to resume from the snapshot" in text
    assert "Restarts=1" in sh(["scontrol", "show", "job", str(job)], env=cluster).stdout
    m = re.search(r"resuming from snapshots/cnn_iter_(\d+)\.solverstate", text)
    assert m, text[-3000:]
    it_stop = int(m.group(1))
    assert it_seen <= it_stop < iters
    tl = (d / "train.log").read_text()
    assert "Resuming from snapshots/cnn_iter_%d.solverstate" % it_stop in tl
    second = [r["iter"] for r in parse_log(tl[tl.rindex("=== gcnet runner"):])["train"]]
    assert second and min(second) >= it_stop and max(second) == iters      # continued, not restarted
    assert json.loads((d / "stage.json").read_text())["status"] == "done"
    assert (d / "test.json").exists() and "Traceback" not in text


@pytest.mark.e2e
@needs_caffe
def test_failed_sbatch_cancels_what_was_submitted(cluster, data, tmp_path):
    """--gpu on a cluster without GPU GRES: the pretrain sbatch fails; the prep job already queued is cancelled."""
    p = sh([SUBMIT, "synthetic", "--data", str(data), "--out", str(tmp_path), "--gpu", "0"] + SETTINGS, env=cluster)
    assert p.returncode == 1, p.stdout + p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "sbatch of the pretrain step failed" in err and "gres" in err.lower(), err
    m = re.search(r"cancelled the jobs already submitted \((\d+):prep\)", err)
    assert m, err
    st = wait_jobs(cluster, [m.group(1)], 120)
    assert st[m.group(1)][0] == "CANCELLED", st


# ============================================================================================ command line, no Slurm
FAKE_SBATCH = r"""#!/usr/bin/env bash
# stand-in sbatch: records its arguments, prints an id; fails on call number $FAKE_FAIL_AT
n=$(( $(cat "$FAKE_DIR/n" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE_DIR/n"
printf '%s\n' "$@" > "$FAKE_DIR/sbatch.$n"
if [[ "$n" == "${FAKE_FAIL_AT:-0}" ]]; then echo "sbatch: error: Batch job submission failed: nope" >&2; exit 1; fi
echo $((100 + n))
"""
FAKE_SCANCEL = "#!/usr/bin/env bash\necho \"$@\" >> \"$FAKE_DIR/scancel\"\n"


@pytest.fixture
def fake(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (bin_, os.environ["PATH"]), FAKE_DIR=str(tmp_path))
    env.pop("GCNET_ROOT", None)

    def calls():
        n = int((tmp_path / "n").read_text()) if (tmp_path / "n").exists() else 0
        return [(tmp_path / ("sbatch.%d" % i)).read_text().split("\n")[:-1] for i in range(1, n + 1)]
    return env, calls, tmp_path


def test_submit_flags_from_the_run(fake):
    env, calls, tmp = fake
    args = ["synthetic", "--data", str(tmp / "nodata"), "--out", str(tmp / "res")] + SETTINGS
    p = sh([SUBMIT] + args, env=env)
    assert p.returncode == 0, p.stderr
    c = calls()
    assert [x[x.index(str(SLURM / "run_folds.sbatch")) + 1] if str(SLURM / "run_folds.sbatch") in x else "collect"
            for x in c] == ["prep", "pretrain", "train", "collect"]
    logs = tmp / "res" / "synthetic" / "slurm"
    assert logs.is_dir()
    for x, step in zip(c, ["prep", "pretrain", "train", "collect"]):
        assert "--cpus-per-task=2" in x and "--mem=4G" in x and not any(a.startswith("--gres") for a in x), x
        out = [a for a in x if a.startswith("--output=")]
        assert out and out[0].startswith("--output=%s/%s-" % (logs, step)), out
        assert x[-len(args):] == args                      # the run options reach the job unchanged
    assert "--array=0-0" in c[1] and "--array=0-1" in c[2]
    assert "--dependency=afterok:101" in c[1] and "--dependency=afterok:102" in c[2]
    assert "--dependency=afterany:103" in c[3]
    assert "submitted: prep 101, pretrain 102 (1 tasks), train 103 (2 tasks), collect 104" in p.stdout
    # GPUs asked for: one per pretrain/train task, none for prep and collect; resources as options
    (tmp / "n").unlink()
    p = sh([SUBMIT] + args + ["--gpu", "0,1", "--cpus-per-task", "8", "--mem=32G", "--time", "48:00:00"], env=env)
    assert p.returncode == 0, p.stderr
    c = calls()
    assert ["--gres=gpu:1" in x for x in c] == [False, True, True, False]
    assert all("--cpus-per-task=8" in x and "--mem=32G" in x for x in c)
    assert ["--time=48:00:00" in x for x in c] == [True, True, True, False]


def test_submit_failure_cancels_and_names_the_step(fake):
    env, calls, tmp = fake
    p = sh([SUBMIT, "synthetic", "--data", str(tmp / "nodata"), "--out", str(tmp / "res")] + SETTINGS,
           env=dict(env, FAKE_FAIL_AT="3"))
    assert p.returncode == 1
    assert p.stderr.strip() == ("submit.sh: sbatch of the train step failed: sbatch: error: Batch job submission "
                                "failed: nope; cancelled the jobs already submitted (101:prep 102:pretrain)")
    assert (tmp / "scancel").read_text().split() == ["101", "102"]
    assert len(calls()) == 3                                # nothing submitted after the failure


@pytest.mark.parametrize("extra, msg", [
    (["--cpus-per-task", "two"], "--cpus-per-task must be a positive number"),
    (["--mem", "lots"], "--mem must be a size"),
    (["--time"], "--time needs a value"),
    (["--folds", "7"], "out of range"),
    (["--models", "cnn,bogus"], "unknown model"),
])
def test_submit_bad_input_one_line(fake, extra, msg):
    env, calls, tmp = fake
    p = sh([SUBMIT, "synthetic", "--n-folds", "2", "--out", str(tmp / "res")] + extra, env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert msg in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert calls() == []


def test_submit_and_local_cluster_help():
    p = sh([SUBMIT, "--help"])
    assert p.returncode == 0 and "--cpus-per-task N" in p.stdout and "--gres=gpu:1" in p.stdout
    assert p.stdout.rstrip().endswith("bad options exit 2.") and "#" not in p.stdout, p.stdout
    p = sh([LOCAL_CLUSTER, "--help"])
    assert p.returncode == 0 and "start DIR" in p.stdout
    assert p.stdout.rstrip().endswith("2 bad usage or missing programs.") and "set -e" not in p.stdout, p.stdout


def test_task_without_the_gpu_it_asks_for():
    """run_folds.sbatch takes the device from the allocation: --gpu without an allocated GPU is an error."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    p = sh(["bash", str(SLURM / "run_folds.sbatch"), "train", "synthetic", "--gpu", "0", "--models", "cnn"], env=env)
    assert p.returncode == 2
    assert p.stderr.strip() == ("run_folds.sbatch: the options ask for a GPU but Slurm allocated none "
                                "(submit with --gres=gpu:1)")
    p = sh([LOCAL_CLUSTER, "bogus"])
    assert p.returncode == 2 and p.stderr.strip() == "local_cluster.sh: unknown command 'bogus' (install, start or stop)"
