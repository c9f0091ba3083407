"""Experiment runner: the stages behind tools/run_folds.sh (paper section 4: 10-fold subject-independent CV).

    1 lmdb      per-fold paired LMDBs under <out>/<dataset>/lmdb (gcnet.data.lmdb_build, cached by its inputs)
    2 pretrain  per fold: `encdec` (reconstruction) and `cnn_id` (identity) on fold_K/pretrain, the training
                folds' faces (or, with --pretrain-data, WebFace faces: then trained once and shared by the folds)
    3 surgery   init.caffemodel of each expression model from the pretrained nets (gcnet.surgery)
    4 train     `caffe train --solver solver.prototxt --weights init.caffemodel` (resumes from the latest
                snapshots/*.solverstate after an interruption); trained.caffemodel
    5 bnstats   BatchNorm statistics re-estimated for the final weights (gcnet.bnstats) -> final.caffemodel
    6 test      the peak frames of the held-out fold through the deploy net (pycaffe, centre crop) and the
                diagnostics (gcnet.diagnostics) -> test.json
    7 summary   <out>/<dataset>/summary.{json,md}; then the figures (gcnet.figures) unless --no-figures

Every stage is skipped when its outputs exist and the hash of its inputs (prototxts, solver, data manifest,
weights it starts from) is unchanged (stage.json in each folder).  Results layout: docs/ARCHITECTURE.md.

Exit status: 0 all requested folds done, 1 some fold failed (the summary says which and why), 2 bad input,
130 interrupted (snapshots kept: rerun the same command to resume).
"""
import argparse
import concurrent.futures as cf
import datetime
import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from gcnet import config as C
from gcnet import diagnostics as D
from gcnet.layout import ResultsLayout
from gcnet.logparse import LogParser, last_lines
from gcnet.util import (UsageError, fmt_duration, fmt_num, now as _now, parse_folds, read_json, say,
                        sha256_file, sha_text, write_json, write_text)

REPO = Path(os.environ.get("GCNET_ROOT") or Path(__file__).resolve().parents[1])
DATASET_NAMES = tuple(C.DATASETS)

# --------------------------------------------------------------------------------------------- schedules
# The paper's schedule (section 4.1): 3e5 iterations, mini-batch 64, ten folds.  Pretraining iterations are not
# given in the paper; they default to --iters.
PAPER_SCHEDULE = dict(n_folds=10, folds="0-9", iters=300000, pretrain_iters=None, batch=64)

# `synthetic` without --iters: a CPU-sized profile (about 30 min on 2 cores, measured: README "Results").  100
# identities give about 39 labelled sequences (about 120 test images) per fold, so one sequence moves a fold's
# accuracy by under 3 points; two folds give a mean and a spread.
SYNTHETIC_PROFILE = dict(
    subjects=100,         # synthetic identities written by gcnet.data.synthetic.make_synthetic
    n_folds=10,           # the paper's protocol (subject-independent 10 folds) ...
    folds="0-1",          # ... of which these are run (their LMDBs only are built)
    iters=200,            # expression-model iterations
    pretrain_iters=200,   # encdec / cnn_id iterations
    batch=16,
    augment=2,            # augmented copies per training sample in the LMDB
    display=10,
    jobs=2,               # two trainings side by side, one BLAS thread each
    bn_samples=512,       # training samples of the BatchNorm re-estimation and of the training-set scores
)

# `--profile ablation`: the five models at equal budget on the synthetic set, five folds, 1000 iterations each (hours
# on 2 CPU cores, minutes on a GPU); README "Results" reports what it measured.
ABLATION_PROFILE = dict(SYNTHETIC_PROFILE, folds="0-4", iters=1000, pretrain_iters=1000, display=50, bn_samples=1024)
PROFILES = {"synthetic-cpu": SYNTHETIC_PROFILE, "ablation": ABLATION_PROFILE}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Interrupted(Exception):
    pass


# --------------------------------------------------------------------------------------------- small helpers
class FileLock:
    """fcntl.flock on <dir>/.lock: serialises stages between runners (threads, Slurm array tasks)."""

    def __init__(self, directory, name=".lock"):
        os.makedirs(str(directory), exist_ok=True)
        self.path = os.path.join(str(directory), name)
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            say("  waiting for another runner holding %s ..." % self.path)
            while True:
                if STOP.is_set():
                    os.close(self.fd)
                    raise Interrupted()
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def parse_models(text: str) -> List[str]:
    models = [m.strip() for m in str(text).split(",") if m.strip()]
    if not models:
        raise UsageError("--models selects no model")
    bad = [m for m in models if m not in C.EXPRESSION_MODELS]
    if bad:
        raise UsageError("unknown model(s) %s; choose from %s" % (", ".join(bad), ",".join(C.EXPRESSION_MODELS)))
    return list(dict.fromkeys(models))


def parse_gpus(text: str) -> Optional[List[int]]:
    if text is None or str(text).strip().lower() in ("", "cpu", "none"):
        return None
    try:
        ids = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError("bad --gpu %r: use cpu, 0 or 0,1,2,3" % text)
    if not ids or any(i < 0 for i in ids):
        raise UsageError("bad --gpu %r: use cpu, 0 or 0,1,2,3" % text)
    return ids


def n_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    dataset: str
    data_root: Optional[str]
    out: str                           # <out>/<dataset>
    models: List[str]
    folds: List[int]
    n_folds: int
    iters: int
    pretrain_iters: int
    batch: int
    augment: Optional[int]
    margin: float
    contrastive_distance: str
    finetune_output_scale: str
    clip_gradients: float
    pretrain_clip_gradients: float
    recalibrate_bn: bool
    bn_samples: int
    surgery_bn_stats: str
    gamma: float
    power: float
    base_lr: float
    gpus: Optional[List[int]]
    jobs: int
    threads: int
    display: int
    snapshot: int
    test_interval: int
    seed: int
    pretrain_data: Optional[str]
    landmarks: Optional[str]
    mmi_peaks: Optional[str]
    figures: bool
    summary: bool
    synthetic: bool
    synthetic_subjects: Optional[int]
    profile: str                       # "paper" | "synthetic-cpu" | "custom"
    stop_after: Optional[str]
    keep_snapshots: int
    models_explicit: bool = False
    lmdb_folds: List[int] = field(default_factory=list)   # folds whose LMDBs are built: --folds (not narrowed by
                                                          # --task-index, so that every array task agrees)

    @property
    def layout(self) -> ResultsLayout:
        return ResultsLayout.at(self.out, self.dataset)

    @property
    def scaled_down(self) -> bool:
        return (self.iters < PAPER_SCHEDULE["iters"] or self.batch != PAPER_SCHEDULE["batch"]
                or self.n_folds != PAPER_SCHEDULE["n_folds"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/run_folds.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the GCNet experiments of the paper (Kim et al., section 4) on one dataset:\n"
                    "  1 per-fold LMDBs  2 pretraining (encdec, cnn_id)  3 net surgery  4 caffe train of each model\n"
                    "  on each fold  5 test on the held-out fold  6 summary (+ figures).\n"
                    "Every stage is cached; rerunning the same command resumes where it stopped (Ctrl-C snapshots).",
        epilog="Defaults are the paper's: all five models, ten folds, 3e5 iterations, batch 64.  `synthetic` "
               "without --iters uses a CPU-sized profile (gcnet/runner.py SYNTHETIC_PROFILE: %s) on "
               "data/synthetic/ck+_<N>subjects_seed<S>, generated on first use.\n\n"
               "Examples:\n"
               "  tools/run_folds.sh synthetic\n"
               "  tools/run_folds.sh ck+ --data /data/CK+ --gpu 0,1,2,3\n"
               "  tools/run_folds.sh mmi --data /data/MMI --mmi-peaks peaks.csv --models cnn,gcnet_s1r1 --folds 0-4\n"
               "  tools/run_folds.sh ck+ --collect          # rebuild the summary from what is on disk\n\n"
               "Exit status: 0 ok, 1 some fold failed (see the summary), 2 bad input, 130 interrupted "
               "(rerun to resume)." % ", ".join("%s=%s" % kv for kv in SYNTHETIC_PROFILE.items()))
    ap.add_argument("dataset", help="one of: %s" % ", ".join(DATASET_NAMES))
    g = ap.add_argument_group("data")
    g.add_argument("--data", metavar="ROOT", help="dataset root in its original layout (required except for "
                   "synthetic, whose default is data/synthetic/ck+_<N>subjects_seed<S>, generated when missing)")
    g.add_argument("--landmarks", metavar="DIR", help="landmark files mirroring the dataset tree (else the "
                   "dataset's own / the face detector)")
    g.add_argument("--mmi-peaks", metavar="CSV", help="MMI peak frames (session,peak_frame)")
    g.add_argument("--augment", type=int, metavar="K", help="augmented copies per training sample in the LMDB "
                   "(default: gcnet.data.lmdb_build's %s)" % _lmdb_default_augment())
    g.add_argument("--pretrain-data", metavar="ROOT", help="CASIA-WebFace root for pretraining (paper); default: "
                   "the training folds' faces with identity labels (fold_K/pretrain)")
    g.add_argument("--synthetic-subjects", type=int, metavar="N",
                   help="identities when the synthetic set is generated (default %d)" % SYNTHETIC_PROFILE["subjects"])
    g = ap.add_argument_group("experiment")
    g.add_argument("--profile", choices=tuple(PROFILES), help="schedule of the synthetic set: synthetic-cpu (the "
                   "default without --iters: %s) or ablation (%s); explicit options override it" % (
                       _profile_text(SYNTHETIC_PROFILE), _profile_text(ABLATION_PROFILE)))
    g.add_argument("--models", default=",".join(C.EXPRESSION_MODELS),
                   help="comma-separated subset of %s (default all)" % ",".join(C.EXPRESSION_MODELS))
    g.add_argument("--folds", help="folds to run, e.g. 0-9, 3 or 0,2,5-7 (default all)")
    g.add_argument("--n-folds", type=int, help="number of cross-validation folds (default 10)")
    g.add_argument("--iters", type=int, help="training iterations of each expression model (default 3e5)")
    g.add_argument("--pretrain-iters", type=int, help="iterations of encdec and cnn_id (default: --iters)")
    g.add_argument("--batch", type=int, help="mini-batch size (default 64)")
    g.add_argument("--contrastive-distance", choices=C.CONTRASTIVE_DISTANCES, default=C.NetOptions.contrastive_distance,
                   help="S of Eq. 4-5: l2 = ||En_2(X) - En_2(X_r hat)|| (paper), rms = l2 / sqrt(feature size) "
                        "(default %(default)s; docs/choices.md)")
    g.add_argument("--margin", type=float, help="contrastive margin m (Eq. 4; default %s)" % ", ".join(
        "%g for %s" % (v, k) for k, v in C.DEFAULT_MARGIN.items()))
    g.add_argument("--finetune-output-scale", choices=C.FINETUNE_OUTPUT_SCALE, default=C.NetOptions.finetune_output_scale,
                   help="Scale of each decoder's 1-channel output block while fine-tuning: frozen at its pretrained "
                        "values, or trained at the decoder rate (paper; default %(default)s; docs/choices.md)")
    g.add_argument("--clip-gradients", type=float, default=C.SolverOptions.clip_gradients,
                   help="solver clip_gradients of the expression models, 0 = off (default %(default)g)")
    g.add_argument("--pretrain-clip-gradients", type=float, default=C.PRETRAIN_CLIP_GRADIENTS,
                   help="solver clip_gradients of encdec / cnn_id, 0 = off (default %(default)g; docs/choices.md)")
    g.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                   help="test with the BatchNorm running averages of training instead of statistics re-estimated "
                        "for the final weights on the training set (docs/choices.md)")
    g.add_argument("--bn-samples", type=int, help="training samples used to re-estimate the BatchNorm statistics "
                   "and to score the training set (default 1024)")
    g.add_argument("--surgery-bn-stats", choices=("zero", "copy"), default="zero",
                   help="BatchNorm statistics of init.caffemodel: zeroed (default) or copied from pretraining")
    g.add_argument("--gamma", type=float, default=C.SolverOptions.gamma, help="inv policy gamma")
    g.add_argument("--power", type=float, default=C.SolverOptions.power, help="inv policy power")
    g.add_argument("--base-lr", type=float, default=C.SolverOptions.base_lr, help="base learning rate")
    g.add_argument("--display", type=int, help="log/progress interval in iterations (default min(100, iters/20))")
    g.add_argument("--snapshot", type=int, help="snapshot interval (default min(10000, iters/4))")
    g.add_argument("--test-interval", type=int, help="in-training test interval (default min(1000, iters/5))")
    g.add_argument("--seed", type=int, default=0, help="seed of the LMDB shuffling/augmentation and of the "
                   "synthetic set")
    g = ap.add_argument_group("execution")
    g.add_argument("--gpu", default="cpu", metavar="ID[,ID..]|cpu", help="GPUs; each job gets its own "
                   "(default cpu)")
    g.add_argument("--jobs", type=int, help="fold trainings run at once (default: number of GPUs, 1 on CPU)")
    g.add_argument("--threads", type=int, help="BLAS/OpenMP threads per job (default: cores // jobs, so one "
                   "per job when the jobs fill the cores)")
    g.add_argument("--out", default=str(REPO / "results"), help="results root (default %(default)s); "
                   "everything goes to <out>/<dataset>/")
    g.add_argument("--no-figures", action="store_true", help="skip the figures step")
    g.add_argument("--no-summary", action="store_true", help="skip summary and figures (Slurm array tasks)")
    g.add_argument("--collect", action="store_true", help="only build summary (+figures) from what is on disk")
    g.add_argument("--stop-after", choices=("lmdb", "pretrain"), help="stop after this stage (Slurm prep jobs)")
    g.add_argument("--keep-snapshots", type=int, default=2, help="snapshots kept per training (default 2)")
    g = ap.add_argument_group("Slurm arrays (tools/slurm/)")
    g.add_argument("--task-index", type=int, metavar="I", help="run only task I of the selected models x folds "
                   "(I = fold position * number of models + model position); with --stop-after pretrain, "
                   "task I = the I-th selected fold")
    g.add_argument("--count-tasks", action="store_true", help="print the number of tasks (models x folds, or "
                   "folds with --stop-after pretrain) and exit")
    return ap


def _profile_text(p: dict) -> str:
    return "%d subjects, folds %s, %d iterations, batch %d" % (p["subjects"], p["folds"], p["iters"], p["batch"])


def _lmdb_default_augment():
    try:
        from gcnet.data.lmdb_build import DEFAULT_AUGMENT
        return DEFAULT_AUGMENT
    except Exception:
        return "?"


def default_synthetic_root(subjects: int, seed: int) -> Path:
    """Where `synthetic` without --data writes (and finds) its set: named by what it holds, so that a set made with
    other settings is never reused."""
    return REPO / "data" / "synthetic" / ("ck+_%dsubjects_seed%d" % (subjects, seed))


def resolve_settings(a) -> Settings:
    C.dataset_spec(a.dataset)
    synthetic = a.dataset == "synthetic"
    if a.profile and not synthetic:
        raise UsageError("--profile %s is a schedule for the synthetic set; %s runs the paper's schedule unless "
                         "--iters/--batch/--folds say otherwise" % (a.profile, a.dataset))
    profile_name = a.profile or ("synthetic-cpu" if synthetic and a.iters is None else None)
    prof = PROFILES[profile_name] if profile_name else {}
    n_folds = a.n_folds or prof.get("n_folds") or PAPER_SCHEDULE["n_folds"]
    if n_folds < 2:
        raise UsageError("--n-folds must be >= 2")
    folds_text = a.folds or prof.get("folds") or "0-%d" % (n_folds - 1)
    folds = parse_folds(folds_text, n_folds)
    models = parse_models(a.models)
    iters = a.iters if a.iters is not None else prof.get("iters", PAPER_SCHEDULE["iters"])
    if iters < 1:
        raise UsageError("--iters must be >= 1")
    pre_iters = a.pretrain_iters if a.pretrain_iters is not None else prof.get("pretrain_iters") or iters
    if pre_iters < 1:
        raise UsageError("--pretrain-iters must be >= 1")
    batch = a.batch or prof.get("batch") or PAPER_SCHEDULE["batch"]
    if batch < 1:
        raise UsageError("--batch must be >= 1")
    augment = a.augment if a.augment is not None else prof.get("augment")
    if augment is not None and augment < 0:
        raise UsageError("--augment must be >= 0")
    gpus = parse_gpus(a.gpu)
    jobs = a.jobs or (len(gpus) if gpus else prof.get("jobs", 1))
    if jobs < 1:
        raise UsageError("--jobs must be >= 1")
    threads = a.threads if a.threads is not None else max(1, n_cores() // jobs)
    if threads < 1:
        raise UsageError("--threads must be >= 1")
    display = a.display or prof.get("display") or min(100, max(1, iters // 20))
    snapshot = a.snapshot or min(10000, max(display, iters // 4))
    test_interval = a.test_interval or min(1000, max(display, iters // 5))
    margin = a.margin if a.margin is not None else C.DEFAULT_MARGIN[a.contrastive_distance]
    if margin <= 0:
        raise UsageError("--margin must be > 0")
    bn_samples = a.bn_samples if a.bn_samples is not None else prof.get("bn_samples", 1024)
    if bn_samples < 1:
        raise UsageError("--bn-samples must be >= 1")

    data_root = a.data
    if getattr(a, "collect", False):
        data_root = data_root and os.path.abspath(data_root)
    elif synthetic:
        data_root = os.path.abspath(data_root or str(default_synthetic_root(
            a.synthetic_subjects or prof.get("subjects", SYNTHETIC_PROFILE["subjects"]), a.seed)))
    elif not data_root:
        raise UsageError("--data ROOT is required for %s (the dataset root in its original layout); only "
                         "`synthetic` has a default" % a.dataset)
    else:
        data_root = os.path.abspath(data_root)
        if not os.path.isdir(data_root):
            raise UsageError("data root %s does not exist or is not a folder" % data_root)
    for name, path in (("--pretrain-data", a.pretrain_data), ("--landmarks", a.landmarks)):
        if path and not os.path.isdir(path):
            raise UsageError("%s %s does not exist or is not a folder" % (name, path))
    if a.mmi_peaks and not os.path.isfile(a.mmi_peaks):
        raise UsageError("--mmi-peaks %s does not exist" % a.mmi_peaks)
    if profile_name:
        profile = profile_name
    elif (iters, batch, n_folds) == (PAPER_SCHEDULE["iters"], PAPER_SCHEDULE["batch"], PAPER_SCHEDULE["n_folds"]):
        profile = "paper"
    else:
        profile = "custom"
    return Settings(
        dataset=a.dataset, data_root=data_root, out=os.path.abspath(os.path.join(a.out, a.dataset)),
        models=models, folds=folds, n_folds=n_folds, iters=iters, pretrain_iters=pre_iters, batch=batch,
        augment=augment, margin=margin, contrastive_distance=a.contrastive_distance,
        finetune_output_scale=a.finetune_output_scale, clip_gradients=a.clip_gradients,
        pretrain_clip_gradients=a.pretrain_clip_gradients, recalibrate_bn=a.recalibrate_bn, bn_samples=bn_samples,
        surgery_bn_stats=a.surgery_bn_stats, gamma=a.gamma, power=a.power, base_lr=a.base_lr, gpus=gpus, jobs=jobs,
        threads=threads, display=display, snapshot=snapshot, test_interval=test_interval, seed=a.seed,
        pretrain_data=a.pretrain_data and os.path.abspath(a.pretrain_data),
        landmarks=a.landmarks and os.path.abspath(a.landmarks),
        mmi_peaks=a.mmi_peaks and os.path.abspath(a.mmi_peaks),
        figures=not (a.no_figures or a.no_summary), summary=not a.no_summary, synthetic=synthetic,
        synthetic_subjects=a.synthetic_subjects or (prof.get("subjects", SYNTHETIC_PROFILE["subjects"])
                                                    if synthetic else None),
        profile=profile, stop_after=a.stop_after, keep_snapshots=max(1, a.keep_snapshots),
        models_explicit=a.models != ",".join(C.EXPRESSION_MODELS), lmdb_folds=list(folds))


# --------------------------------------------------------------------------------------------- processes
STOP = threading.Event()
_children_lock = threading.Lock()
_children: Dict[int, subprocess.Popen] = {}
_signal_count = [0]


def _register(p: subprocess.Popen):
    with _children_lock:
        _children[p.pid] = p


def _unregister(p: subprocess.Popen):
    with _children_lock:
        _children.pop(p.pid, None)


_IN_JOBS = threading.Event()      # set while jobs (caffe, surgery, test subprocesses) run


def _on_signal(signum, frame):
    _signal_count[0] += 1
    STOP.set()
    if not _IN_JOBS.is_set():
        raise KeyboardInterrupt()    # data generation / LMDB build (atomic: an interrupted build is redone)
    with _children_lock:
        kids = list(_children.values())
    if _signal_count[0] == 1:
        say("\n%s: asking caffe to snapshot and stop (send it again twice to kill at once) ..."
            % signal.Signals(signum).name)
        for p in kids:
            try:
                p.send_signal(signal.SIGINT)       # caffe train: -sigint_effect stop = snapshot, then exit
            except OSError:
                pass
    elif _signal_count[0] >= 3:
        say("killing %d child process(es)" % len(kids))
        for p in kids:
            try:
                p.kill()
            except OSError:
                pass


def install_signal_handlers():
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


def child_env(s: Settings, gpu: Optional[int] = None, quiet_glog=False) -> dict:
    env = dict(os.environ)
    t = str(s.threads)
    env.update(OPENBLAS_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, GLOG_logtostderr="1",
               PYTHONUNBUFFERED="1")
    env["GLOG_minloglevel"] = "1" if quiet_glog else "0"
    pp = [str(REPO), str(REPO / "python_layers")]
    env["PYTHONPATH"] = os.pathsep.join(pp + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


def run_logged(cmd: List[str], cwd, log_path, env, on_line=None) -> int:
    """Run cmd with stdout+stderr appended to log_path (and fed line by line to on_line).  In its own session,
    so that a terminal Ctrl-C reaches only the runner, which forwards SIGINT (see _on_signal)."""
    with open(str(log_path), "a") as log:
        log.write("=== gcnet runner %s: %s (cwd %s)\n"
                  % (datetime.datetime.now().isoformat(timespec="seconds"), " ".join(shlex.quote(c) for c in cmd),
                     cwd))
        log.flush()
        if STOP.is_set():
            raise Interrupted()
        p = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, bufsize=1, universal_newlines=True,
                             errors="replace")
        _register(p)
        try:
            if STOP.is_set():                      # a signal between the check and the registration
                p.send_signal(signal.SIGINT)
            for line in p.stdout:
                log.write(line)
                log.flush()
                if on_line is not None:
                    try:
                        on_line(line)
                    except Exception as e:  # a progress bug must never kill a training
                        log.write("=== gcnet runner: progress error %r\n" % e)
            return p.wait()
        finally:
            _unregister(p)
            if p.poll() is None:
                p.kill()
                p.wait()


_caffe_cache = {}


def caffe_binary() -> str:
    exe = shutil.which("caffe")
    if not exe:
        raise UsageError("`caffe` is not on PATH: run `source tools/env.sh` (build Caffe first with tools/setup.sh)")
    return exe


def caffe_version() -> str:
    if "v" not in _caffe_cache:
        try:
            out = subprocess.run([caffe_binary(), "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 universal_newlines=True, timeout=60).stdout
            _caffe_cache["v"] = out.strip().splitlines()[0] if out.strip() else "unknown"
        except Exception as e:
            _caffe_cache["v"] = "unknown (%s)" % e
    return _caffe_cache["v"]


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=30).stdout.strip()
        if not rev:
            return "unknown (no commit)"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                               timeout=30).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------------------------- stage 0/1: data
def ensure_synthetic(s: Settings) -> None:
    root = s.data_root
    if os.path.isdir(root) and os.listdir(root):
        return
    from gcnet.data.synthetic import make_synthetic
    say("[%s] generating the synthetic set (%d subjects, seed %d) in %s" % (s.dataset, s.synthetic_subjects,
                                                                         s.seed, root))
    t0 = time.time()

    def prog(done, total, frames, elapsed):
        if done == total or done % max(1, total // 5) == 0:
            say("  synthetic: %d/%d subjects, %d frames, %s" % (done, total, frames, fmt_duration(elapsed)))
    with FileLock(os.path.dirname(root), ".synthetic.lock"):
        if os.path.isdir(root) and os.listdir(root):
            return
        make_synthetic("ck+", root, subjects=s.synthetic_subjects, seed=s.seed, progress=prog)
    say("  synthetic set written in %s" % fmt_duration(time.time() - t0))


def stage_lmdb(s: Settings) -> dict:
    from gcnet.data.lmdb_build import build_lmdbs
    kw = dict(n_folds=s.n_folds, seed=s.seed, landmarks_root=s.landmarks,
              pretrain_root=s.pretrain_data, mmi_peaks=s.mmi_peaks, progress=lambda m: say("  " + m))
    if s.augment is not None:
        kw["augment_copies"] = s.augment
    with FileLock(s.out, ".lmdb.lock"):
        # the folds of --folds only: each Slurm array task names the same set
        man = build_lmdbs(s.dataset, s.data_root, str(s.layout.lmdb_root), **dict(kw, folds=s.lmdb_folds or s.folds))
    return man


def fold_info(man: dict, k: int) -> dict:
    info = (man.get("folds") or {}).get(str(k))
    if info is None:
        raise UsageError("fold %d is not in the LMDB manifest %s" % (k, "lmdb/manifest.json"))
    return info


def data_fingerprint(man: dict, k: int, what: str) -> str:
    info = fold_info(man, k)
    keys = {"train": ("n_train", "n_train_unique", "augment_copies", "n_test", "train_per_class", "test_per_class",
                      "test_subjects"),
            "pretrain": ("n_pretrain", "n_identities", "pretrain_source")}[what]
    src = man.get("inputs", {}).get("pretrain_hash") if (what == "pretrain" and man.get("pretrain")) else \
        man.get("inputs", {}).get("hash")
    return sha_text(src, k, {x: info.get(x) for x in keys})


# --------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    kind: str                          # "pretrain" | "model"
    model: str
    fold: int                          # -1: shared (WebFace) pretraining
    dir: Path
    label: str
    status: str = "pending"            # done | cached | failed | interrupted | skipped
    action: str = ""                   # what was done: "trained", "resumed", "cached", "tested", ...
    error: str = ""
    log_tail: List[str] = field(default_factory=list)
    seconds: float = 0.0
    diverged: Optional[str] = None


def net_options(s: Settings, man: dict, k: int, model: str):
    info = fold_info(man, k)
    spec = C.DATASETS[s.dataset]
    lay = s.layout
    opts = C.NetOptions(n_classes=len(spec.class_names), neutral_label=spec.neutral_label, batch_size=s.batch,
                        margin=s.margin, contrastive_distance=s.contrastive_distance,
                        finetune_output_scale=s.finetune_output_scale)
    if model in C.PRETRAIN_MODELS:
        # the shared WebFace LMDB by its own path, so that the shared pretraining does not depend on --folds
        src = str(lay.webface_lmdb(man)) if man.get("pretrain") else str(lay.lmdb(k, "pretrain"))
        opts = replace(opts, n_identities=int(info["n_identities"]), train_source=src, test_source=src,
                       test_batch_size=min(s.batch, 64))
    else:
        n_test = max(1, int(info["n_test"]))
        opts = replace(opts, n_identities=int(info["n_identities"]), train_source=str(lay.lmdb(k, "train")),
                       test_source=str(lay.lmdb(k, "test")), test_batch_size=min(64, n_test))
    return opts


def solver_options(s: Settings, model: str, opts) -> "C.SolverOptions":
    iters = s.pretrain_iters if model in C.PRETRAIN_MODELS else s.iters
    display = min(s.display, max(1, iters))
    so = C.SolverOptions(base_lr=s.base_lr, gamma=s.gamma, power=s.power, max_iter=iters, display=display,
                         snapshot=min(s.snapshot, iters), test_interval=min(s.test_interval, iters),
                         solver_mode="GPU" if s.gpus else "CPU",
                         clip_gradients=s.pretrain_clip_gradients if model in C.PRETRAIN_MODELS else s.clip_gradients)
    return so


def _portable(text: str, s: Settings) -> str:
    """Text with the results folder replaced, so that moving <out> does not invalidate the caches."""
    return text.replace(s.out, "$OUT")


def write_prototxts(s: Settings, man: dict, job: Job) -> dict:
    """train_val/deploy/solver prototxt of a job; returns their texts (for the input hash)."""
    from gcnet.nets import build_net, net_text
    from gcnet.solver import make_solver
    opts = net_options(s, man, job.fold if job.fold >= 0 else s.folds[0], job.model)
    so = solver_options(s, job.model, opts)
    if job.kind == "model":
        info = fold_info(man, job.fold)
        so.test_iter = max(1, math.ceil(int(info["n_test"]) / opts.test_batch_size))
    header = "# Generated by gcnet/runner.py from gcnet/nets.py (%s, %s)\n" % (s.dataset, job.label.strip("[]"))
    tv = header + net_text(build_net(job.model, opts, "train_val"))
    dp = header + net_text(build_net(job.model, opts, "deploy"))
    sv = make_solver("train_val.prototxt", so, "snapshots/%s" % job.model, with_test=(job.kind == "model"))
    job.dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("train_val.prototxt", tv), ("deploy.prototxt", dp), ("solver.prototxt", sv)):
        p = job.dir / name
        if not p.exists() or p.read_text() != text:
            write_text(p, text)
    return {"train_val": tv, "deploy": dp, "solver": sv, "opts": asdict(opts), "solver_opts": asdict(so)}


def clean_outputs(d: Path, keep=("train_val.prototxt", "deploy.prototxt", "solver.prototxt", ".lock")):
    for p in d.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(str(p))
        else:
            p.unlink()


_SNAP_RE = re.compile(r"_iter_(\d+)\.solverstate$")


def snapshots(d: Path) -> List[Tuple[int, Path, Path]]:
    """[(iter, solverstate, caffemodel)] of complete snapshot pairs, by iteration."""
    out = []
    for st in glob.glob(str(d / "snapshots" / "*_iter_*.solverstate")):
        m = _SNAP_RE.search(st)
        cm = st[: -len(".solverstate")] + ".caffemodel"
        if m and os.path.exists(cm) and os.path.getsize(st) > 0:
            out.append((int(m.group(1)), Path(st), Path(cm)))
    return sorted(out)


def prune_snapshots(d: Path, keep: int) -> None:
    snaps = snapshots(d)
    for it, st, cm in snaps[:-keep] if keep > 0 else []:
        for p in (st, cm):
            try:
                p.unlink()
            except OSError:
                pass


class Progress:
    """Live progress of one training: one line per display interval."""

    def __init__(self, label: str, max_iter: int):
        self.label = label
        self.max_iter = max_iter
        self.parser = LogParser()
        self.t0 = None
        self.it0 = None
        self.last_acc = None
        self.fatal: List[str] = []

    def __call__(self, line: str):
        for ev in self.parser.feed(line):
            k = ev["kind"]
            if k == "train" and ev.get("lr") is not None:
                self._print(ev)
            elif k == "test":
                acc = ev["outputs"].get("accuracy")
                if acc is not None:
                    self.last_acc = (ev["iter"], acc)
            elif k == "fatal":
                self.fatal.append(ev["message"])

    def _print(self, ev):
        now = time.time()
        it = ev["iter"]
        if self.t0 is None:
            self.t0, self.it0 = now, it
        rate = (it - self.it0) / (now - self.t0) if now > self.t0 and it > self.it0 else None
        # (Caffe's own iter/s of the first display of a run is meaningless: measured here instead)
        eta = (self.max_iter - it) / rate if rate and rate > 0 else None
        parts = ["%s iter %d/%d" % (self.label, it, self.max_iter), "loss %s" % fmt_num(ev.get("loss"))]
        parts += ["%s %s" % (n, fmt_num(v)) for n, v in ev["outputs"].items()]
        parts.append("lr %.3g" % ev["lr"])
        if self.last_acc is not None:
            parts.append("val_acc %.3f" % self.last_acc[1])
        say(" ".join(parts) + ("  %.2f it/s  ETA %s" % (rate, fmt_duration(eta)) if eta is not None else "  ETA ?"))

    def divergence(self) -> Optional[str]:
        """"loss_gen_r = inf at iteration 8" when the last training record has a non-finite loss."""
        for r in reversed(self.parser.train):
            vals = dict(r["outputs"])
            if r.get("loss") is not None:
                vals = dict(vals, loss=r["loss"])
            if not vals:
                continue
            bad = [(n, v) for n, v in vals.items() if v is not None and not math.isfinite(v)]
            if bad:
                return "%s = %s at iteration %d" % (bad[0][0], bad[0][1], r["iter"])
            return None
        return None


def train_with_caffe(s: Settings, job: Job, max_iter: int, weights: Optional[str], gpu: Optional[int],
                     final_name: str = "final.caffemodel") -> str:
    """caffe train in job.dir (resuming from the latest snapshot), the last weights copied to `final_name`; returns
    "trained" | "resumed" | "finalized"; raises on error."""
    d = job.dir
    (d / "snapshots").mkdir(exist_ok=True)
    final = d / final_name
    snaps = snapshots(d)
    action = "trained"
    cmd = [caffe_binary(), "train", "--solver=solver.prototxt", "--sigint_effect=stop", "--sighup_effect=snapshot"]
    if gpu is not None:
        cmd.append("--gpu=%d" % gpu)
    if snaps and snaps[-1][0] >= max_iter:
        say("%s training already complete (snapshot at iteration %d)" % (job.label, snaps[-1][0]))
        _finalize(d, snaps[-1][2], final, s.keep_snapshots)
        return "finalized"
    if snaps:
        it, st, _ = snaps[-1]
        say("%s resuming from %s (iteration %d of %d)" % (job.label, st.relative_to(d), it, max_iter))
        cmd.append("--snapshot=%s" % st.relative_to(d))
        action = "resumed"
    elif weights:
        cmd.append("--weights=%s" % weights)
    prog = Progress(job.label, max_iter)

    def on_line(line):
        prog(line)
        if "Snapshotting solver state" in line:
            prune_snapshots(d, s.keep_snapshots + 1)   # +1: the one being written is not complete yet

    rc = run_logged(cmd, d, d / "train.log", child_env(s, gpu), on_line)
    res = prog.parser.result()
    snaps = snapshots(d)
    job.diverged = prog.divergence()
    if rc != 0:
        why = prog.fatal[0] if prog.fatal else (res["errors"][0] if res["errors"] else "")
        if job.diverged:
            why = (why + "; " if why else "") + "training diverged: " + job.diverged
        raise JobError("caffe train exited with status %d%s" % (rc, (": " + why) if why else ""))
    if not snaps or snaps[-1][0] < max_iter or res["stopped_early"]:
        if STOP.is_set() or res["stopped_early"]:
            raise Interrupted()
        raise JobError("caffe train ended without a snapshot at iteration %d" % max_iter)
    _finalize(d, snaps[-1][2], final, s.keep_snapshots)
    return action


def _finalize(d: Path, model: Path, final: Path, keep: int):
    tmp = str(final) + ".tmp"
    shutil.copyfile(str(model), tmp)
    os.replace(tmp, str(final))
    prune_snapshots(d, keep)


class JobError(Exception):
    pass


def _stage_state(d: Path) -> dict:
    return read_json(d / "stage.json", {}) or {}


def run_pretrain_job(s: Settings, man: dict, job: Job, gpu: Optional[int]) -> None:
    with FileLock(job.dir):
        texts = write_prototxts(s, man, job)
        fp = data_fingerprint(man, job.fold if job.fold >= 0 else s.folds[0], "pretrain")
        h = sha_text("pretrain-v1", _portable(texts["train_val"], s), texts["solver"], fp)
        st = _stage_state(job.dir)
        final = job.dir / "final.caffemodel"
        if st.get("hash") == h and st.get("status") == "done" and final.exists():
            job.status, job.action = "cached", "cached"
            return
        if st.get("hash") != h:
            clean_outputs(job.dir)
        state = {"hash": h, "status": "running", "kind": "pretrain", "model": job.model, "fold": job.fold,
                 "iters": s.pretrain_iters, "started": _now(), "host": os.uname().nodename}
        write_json(job.dir / "stage.json", state)
        t0 = time.time()
        try:
            job.action = train_with_caffe(s, job, s.pretrain_iters, None, gpu)
        except Interrupted:
            write_json(job.dir / "stage.json", dict(state, status="interrupted"))
            raise
        except Exception as e:
            write_json(job.dir / "stage.json", dict(state, status="failed", error=str(e),
                                                    log_tail=last_lines(str(job.dir / "train.log"), 15)))
            raise
        state.update(status="done", finished=_now(), seconds=round(time.time() - t0, 1),
                     weights_sha256=sha256_file(final), pretrain_source=man_pretrain_source(man),
                     n_identities=texts["opts"]["n_identities"], diverged=job.diverged)
        write_json(job.dir / "stage.json", state)
        if job.diverged:
            say("%s WARNING: pretraining diverged (%s)" % (job.label, job.diverged))
        job.status = "done"


def man_pretrain_source(man: dict) -> str:
    if man.get("pretrain"):
        return "webface:%s" % man.get("options", {}).get("pretrain_root")
    return "training folds (fold_K/pretrain: faces of the training subjects, identity labels)"


def run_model_job(s: Settings, man: dict, job: Job, pre: Dict[str, Path], gpu: Optional[int]) -> None:
    """Stages 3-5 of one model and fold: surgery -> init.caffemodel, caffe train -> trained.caffemodel, BatchNorm
    re-estimation (gcnet.bnstats) -> final.caffemodel, test -> test.json.  Each step is skipped when its inputs
    are unchanged (stage.json)."""
    d = job.dir
    with FileLock(d):
        texts = write_prototxts(s, man, job)
        init_src = {net: str(pre[net] / "final.caffemodel") for net in C.PRETRAIN_MODELS}
        src_sha = {net: (_stage_state(pre[net]).get("weights_sha256") or sha256_file(p))
                   for net, p in init_src.items()}
        fp = data_fingerprint(man, job.fold, "train")
        h_train = sha_text("model-v2", _portable(texts["train_val"], s), texts["solver"], fp, src_sha,
                           s.surgery_bn_stats)
        st = _stage_state(d)
        trained_w, final, test_json = d / "trained.caffemodel", d / "final.caffemodel", d / "test.json"
        lay, k = s.layout, job.fold
        trained = st.get("hash") == h_train and "train" in (st.get("stages") or {}) and trained_w.exists()

        def bn_key():
            return sha_text("bnstats-v1", sha256_file(trained_w), s.recalibrate_bn, s.bn_samples, s.batch, fp)

        def test_key():
            return sha_text("test-v2", _portable(texts["deploy"], s), _portable(texts["train_val"], s),
                            sha256_file(final), fp, s.bn_samples, s.batch)

        if trained and final.exists() and (st.get("bnstats") or {}).get("hash") == bn_key() \
                and st.get("status") == "done" and read_json(test_json, {}).get("inputs_hash") == test_key():
            job.status, job.action = "cached", "cached"
            return
        if st.get("hash") != h_train:
            clean_outputs(d)
            st = {}
        state = {"hash": h_train, "status": "running", "kind": "model", "model": job.model, "fold": job.fold,
                 "iters": s.iters, "started": st.get("started") or _now(), "host": os.uname().nodename,
                 "init": st.get("init"), "stages": st.get("stages", {}), "bnstats": st.get("bnstats"),
                 "train_seconds": st.get("train_seconds"), "diverged": st.get("diverged")}
        write_json(d / "stage.json", state)
        t0 = time.time()
        stage = "surgery"
        try:
            # 3: surgery
            init = d / "init.caffemodel"
            if not init.exists() or not (d / "surgery.json").exists():
                say("%s net surgery -> init.caffemodel" % job.label)
                cmd = [sys.executable, "-m", "gcnet.surgery", job.model, "train_val.prototxt", "init.caffemodel",
                       "--encdec", init_src["encdec"], "--cnn-id", init_src["cnn_id"], "--report", "surgery.json",
                       "--bn-stats", s.surgery_bn_stats]
                _run_step(cmd, d, "surgery", "net surgery", child_env(s, quiet_glog=True))
                rep = read_json(d / "surgery.json", {})
                state["init"] = {"copied": len(rep.get("copied", [])), "random": [r["layer"] for r in
                                                                                 rep.get("random", [])],
                                 "bn_stats": rep.get("bn_stats")}
                state["stages"]["surgery"] = _now()
                write_json(d / "stage.json", state)
            # 4: train
            stage = "train"
            if not trained:
                job.action = train_with_caffe(s, job, s.iters, "init.caffemodel", gpu, final_name=trained_w.name)
                state.update(status="trained", train_seconds=round(time.time() - t0, 1), diverged=job.diverged)
                if job.diverged:
                    say("%s WARNING: training diverged (%s)" % (job.label, job.diverged))
                state["stages"]["train"] = _now()
                write_json(d / "stage.json", state)
            write_json(d / "meta.json", make_meta(s, man, job, texts, state))
            # 4b: BatchNorm statistics for the final weights
            stage = "bnstats"
            key = bn_key()
            if (state.get("bnstats") or {}).get("hash") != key or not final.exists():
                if s.recalibrate_bn:
                    say("%s re-estimating BatchNorm statistics on up to %d training samples" % (job.label,
                                                                                            s.bn_samples))
                    cmd = [sys.executable, "-m", "gcnet.bnstats", str(d), "--weights", str(trained_w), "--out",
                           str(final), "--train-lmdb", str(lay.lmdb(k, "train")), "--samples", str(s.bn_samples),
                           "--batch", str(s.batch), "--report", "bn_stats.json"] + (
                        ["--gpu", str(gpu)] if gpu is not None else [])
                    _run_step(cmd, d, "bnstats", "BatchNorm re-estimation", child_env(s, gpu, quiet_glog=True))
                    rep = read_json(d / "bn_stats.json", {})
                else:
                    _finalize(d, trained_w, final, s.keep_snapshots)
                    rep = {"skipped": "--no-recalibrate-bn: the running averages of training are used"}
                state["bnstats"] = dict(rep, hash=key, recalibrated=s.recalibrate_bn)
                state["stages"]["bnstats"] = _now()
                write_json(d / "stage.json", state)
            # 5: test
            stage = "test"
            info = fold_info(man, job.fold)
            cmd = [sys.executable, "-m", "gcnet.runner", "_evaluate", "--dir", str(d),
                   "--lmdb", str(lay.lmdb(k, "test")), "--index", str(lay.test_index(k)), "--n-classes", str(texts["opts"]["n_classes"]),
                   "--n-train", str(info["n_train"]), "--hash", test_key(), "--train-lmdb", str(lay.lmdb(k, "train")),
                   "--bn-samples", str(s.bn_samples), "--batch", str(s.batch)]
            if gpu is not None:
                cmd += ["--gpu", str(gpu)]
            _run_step(cmd, d, "test", "test", child_env(s, gpu, quiet_glog=True))
            tj = read_json(test_json, {})
            state.update(status="done", finished=_now(), accuracy=tj.get("accuracy"))
            state["stages"]["test"] = _now()
            write_json(d / "stage.json", state)
            job.status = "done"
            job.action = job.action or "tested"
            say("%s %s" % (job.label, result_line(tj)))
        except Interrupted:
            write_json(d / "stage.json", dict(state, status="interrupted"))
            raise
        except Exception as e:
            write_json(d / "stage.json", dict(state, status="failed", failed_stage=stage, error=str(e),
                                              log_tail=last_lines(str(d / (stage + ".log")), 15)))
            raise


def _run_step(cmd: List[str], d: Path, log_name: str, what: str, env: dict) -> None:
    """Run one step of a job as a subprocess logging to <d>/<log_name>.log; JobError (its last error line) on
    failure, Interrupted when the runner is stopping."""
    rc = run_logged(cmd, d, d / (log_name + ".log"), env)
    if rc != 0:
        if STOP.is_set():
            raise Interrupted()
        tail = [l for l in last_lines(str(d / (log_name + ".log")), 40) if l.strip()]
        err = next((l for l in reversed(tail) if l.startswith("error:")), None)
        raise JobError("%s failed (status %d): %s" % (what, rc, err or (tail[-1] if tail else "?")))


def result_line(tj: dict) -> str:
    """One line of a test.json: accuracy with n and interval, the training set in TEST phase and with batch
    statistics, and the generator against its baselines."""
    n = tj.get("n_test") or 0
    k = int(round(tj["accuracy"] * n))
    ci = tj.get("ci95") or [None, None]
    parts = ["accuracy %.4f (%d/%d, 95%% CI %s)" % (tj["accuracy"], k, n, _fmt_ci(ci))]
    tr = tj.get("train") or {}
    if tr.get("accuracy_test_phase") is not None:
        parts.append("train %.3f TEST phase / %s batch stats (n %d)" % (
            tr["accuracy_test_phase"], "-" if tr.get("accuracy_batch_stats") is None else
            "%.3f" % tr["accuracy_batch_stats"], tr.get("n", 0)))
    g = tj.get("generator")
    if g:
        parts.append("L_Gen,r %.2f (mean ref %.2f, copy X %.2f)%s" % (
            g["l_gen_r"], g["baseline_mean_reference"], g["baseline_copy_x"],
            " DEAD GENERATOR" if g["dead"] else ("" if g["beats_mean_reference"] else " (no better than the mean)")))
    return "; ".join(parts)


def _fmt_ci(ci) -> str:
    return "-" if ci is None or ci[0] is None else "%.3f-%.3f" % tuple(ci)


def make_meta(s: Settings, man: dict, job: Job, texts: dict, state: dict) -> dict:
    spec = C.DATASETS[s.dataset]
    info = fold_info(man, job.fold)
    so = texts["solver_opts"]
    return {"dataset": s.dataset, "model": job.model, "fold": job.fold, "class_names": list(spec.class_names),
            "neutral_label": spec.neutral_label, "n_classes": len(spec.class_names), "iters": s.iters,
            "batch": s.batch, "base_lr": so["base_lr"], "lr_policy": so["lr_policy"], "gamma": so["gamma"],
            "power": so["power"], "momentum": so["momentum"], "weight_decay": so["weight_decay"],
            "margin": s.margin, "n_train": info["n_train"], "n_train_unique": info.get("n_train_unique"),
            "n_test": info["n_test"], "n_identities": info.get("n_identities"),
            "train_source": texts["opts"]["train_source"], "test_source": texts["opts"]["test_source"],
            "test_lmdb": texts["opts"]["test_source"],
            "pretrain_source": man_pretrain_source(man), "pretrain_iters": s.pretrain_iters,
            "init": state.get("init"), "synthetic": s.synthetic, "caffe_build": os.environ.get("CAFFE_BUILD", ""),
            "train_seconds": state.get("train_seconds"), "finished": _now()}


# --------------------------------------------------------------------------------------------- stage 5: evaluate
def evaluate(model_dir: str, lmdb_path: str, index_path: Optional[str], n_classes: int, gpu: Optional[int] = None,
             batch: int = 64, train_lmdb: Optional[str] = None, bn_samples: int = 1024, train_batch: int = 16,
             train_acc_batch_stats: Optional[float] = None) -> dict:
    """Every sample of the test LMDB, X channel only, centre crop, through deploy.prototxt + final.caffemodel
    (gcnet.inference: the same preprocessing as tools/predict.py); with `train_lmdb`, the diagnostics of
    gcnet.diagnostics on the first `bn_samples` training samples (those of the BatchNorm re-estimation)."""
    import numpy as np
    from gcnet import diagnostics as D
    from gcnet.caffe_io import read_lmdb
    from gcnet.inference import DeployModel
    items = read_lmdb(lmdb_path)
    labels = [label for _, _, label in items]
    n = len(items)
    model = DeployModel(model_dir, gpu=gpu)
    pairs = np.stack([a for _, a, _ in items]) if n else np.zeros((0, 2, 66, 66), np.uint8)
    probs = np.zeros((n, n_classes), np.float32)
    gen = None
    if n:
        out = model.forward(pairs, ("prob", "gen_r"), batch)
        probs[:] = out["prob"].reshape(n, -1)[:, :n_classes]
        gen = out.get("gen_r")
    pred = probs.argmax(1).tolist() if n else []
    conf = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(labels, pred):
        conf[t][p] += 1
    index = read_json(index_path, []) if index_path else []
    frames = [e.get("frame") if isinstance(e, dict) else e for e in index] if len(index) == n else []
    correct = sum(int(t == p) for t, p in zip(labels, pred))
    res = {"accuracy": correct / n if n else 0.0, "n_test": n, "ci95": D.wilson_interval(correct, n),
           "confusion": conf, "labels": labels, "predictions": pred, "frames": frames,
           "probs": probs.round(6).tolist(), "crop": model.crop, "scale": model.scale}
    if train_lmdb:
        from gcnet.bnstats import training_samples
        tx, ty = training_samples(train_lmdb, bn_samples, train_batch)
        tb = min(train_batch, len(tx))
        acc_test = float(np.mean(model.predict(tx).argmax(1) == ty))
        if train_acc_batch_stats is None:
            bs = DeployModel(model_dir, gpu=gpu, batch_stats=True)
            train_acc_batch_stats = float(np.mean(bs.forward(tx, ("prob",), tb)["prob"].reshape(len(tx), -1)
                                                  .argmax(1) == ty))
        res["train"] = {"accuracy_test_phase": acc_test, "accuracy_batch_stats": train_acc_batch_stats,
                        "n": int(len(tx)), "batch": tb}
        if gen is not None and n:
            res["generator"] = D.generator_diagnostics(pairs, gen, tx, model.crop, model.scale)
    return res


def _evaluate_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.runner _evaluate")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--lmdb", required=True)
    ap.add_argument("--index")
    ap.add_argument("--n-classes", type=int, required=True)
    ap.add_argument("--n-train", type=int, default=0)
    ap.add_argument("--hash", default="")
    ap.add_argument("--gpu", type=int)
    ap.add_argument("--train-lmdb")
    ap.add_argument("--bn-samples", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="training batch size (batch statistics)")
    a = ap.parse_args(argv)
    t0 = time.time()
    st = _stage_state(Path(a.dir))
    bn = st.get("bnstats") or {}
    # batch statistics do not depend on the stored ones: the re-estimation pass already scored these samples
    known = bn.get("train_accuracy_batch_stats") if bn.get("n_samples") and bn.get("batch") == min(
        a.batch, bn.get("n_samples")) else None
    res = evaluate(a.dir, a.lmdb, a.index, a.n_classes, a.gpu, train_lmdb=a.train_lmdb, bn_samples=a.bn_samples,
                   train_batch=a.batch, train_acc_batch_stats=known)
    meta = read_json(Path(a.dir) / "meta.json", {}) or {}
    res.update(n_train=a.n_train, inputs_hash=a.hash, seconds=round(time.time() - t0, 2))
    res["class_names"] = meta.get("class_names")
    order = ["accuracy", "n_train", "n_test", "confusion", "labels", "predictions", "frames", "probs"]
    write_json(Path(a.dir) / "test.json", {k: res[k] for k in order + [k for k in res if k not in order]})
    print("accuracy %.4f on %d test images" % (res["accuracy"], res["n_test"]))
    return 0


# --------------------------------------------------------------------------------------------- scheduling
def run_jobs(s: Settings, jobs: List[Job], fn) -> None:
    """Run fn(job, gpu) for each job on a pool of s.jobs threads; each job gets a GPU (round robin) or None."""
    gq: "queue.Queue" = queue.Queue()
    if s.gpus:
        for i in range(s.jobs):
            gq.put(s.gpus[i % len(s.gpus)])

    def work(job: Job):
        if STOP.is_set():
            job.status = "skipped"
            return
        gpu = gq.get() if s.gpus else None
        t0 = time.time()
        try:
            fn(job, gpu)
        except Interrupted:
            job.status = "interrupted"
        except (JobError, UsageError) as e:
            job.status, job.error = "failed", str(e)
        except Exception as e:  # anything else: report, keep the other folds going
            job.status, job.error = "failed", "%s: %s" % (type(e).__name__, e)
        finally:
            job.seconds = time.time() - t0
            if s.gpus:
                gq.put(gpu)
        if job.status == "failed":
            job.log_tail = last_lines(str(job.dir / "train.log"), 10)
            st = _stage_state(job.dir)
            if st.get("log_tail"):
                job.log_tail = st["log_tail"]
            say("%s FAILED: %s" % (job.label, job.error))
            for l in job.log_tail[-5:]:
                say("    | " + l)
        elif job.status == "interrupted":
            say("%s interrupted" % job.label)

    _IN_JOBS.set()
    try:
        with cf.ThreadPoolExecutor(max_workers=s.jobs) as ex:
            futs = [ex.submit(work, j) for j in jobs]
            pending = set(futs)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5)
                for f in done:
                    f.result()
    finally:
        _IN_JOBS.clear()


# --------------------------------------------------------------------------------------------- summary
def paper_numbers(dataset: str) -> dict:
    spec = C.DATASETS[dataset]
    res = C.PAPER_RESULTS.get(dataset)
    if not res:
        return {"table": None, "note": "the paper has no numbers for %s data" % dataset}
    models = {m: res[m] / 100.0 for m in C.EXPRESSION_MODELS if m in res}
    prior = {k: v / 100.0 for k, v in res.items() if k not in C.EXPRESSION_MODELS}
    best = max(prior.items(), key=lambda kv: kv[1]) if prior else (None, None)
    return {"table": spec.table, "models": models, "cnn_baseline": models.get("cnn"), "prior": prior,
            "best_prior": {"method": best[0], "accuracy": best[1]}}


def fold_entry(tj: dict, st: dict, d: Path) -> dict:
    """The summary's record of one model and fold: test accuracy (n, 95% interval), the diagnostics of
    gcnet.diagnostics and the BatchNorm re-estimation."""
    from gcnet.logparse import parse_log
    n = tj.get("n_test")
    fe = {"accuracy": tj["accuracy"], "n_test": n, "ci95": tj.get("ci95") or (
        D.wilson_interval(int(round(tj["accuracy"] * n)), n) if n else None), "n_train": tj.get("n_train"),
        "confusion": tj.get("confusion"), "train": tj.get("train"),
        "final_losses": D.final_losses(parse_log(d / "train.log")["train"]) if (d / "train.log").exists() else {}}
    if tj.get("generator"):
        fe["generator"] = tj["generator"]
    bn = st.get("bnstats") or {}
    fe["bn_recalibrated"] = bool(bn.get("recalibrated"))
    if bn.get("stale_mean_shift"):
        fe["bn_stale_mean_shift_max"] = max(bn["stale_mean_shift"].values())
    if st.get("diverged"):
        fe["diverged"] = st["diverged"]
    return fe


def collect_summary(out: Path, dataset: str, models: Optional[Sequence[str]] = None,
                    folds: Optional[Sequence[int]] = None, settings: Optional[dict] = None) -> dict:
    """summary dict from what is on disk under out (= <out>/<dataset>)."""
    import statistics
    lay = ResultsLayout.at(out, dataset)
    found = lay.trained_models()
    run = read_json(lay.run_settings, {}) or {}
    settings = dict(settings or run.get("settings") or {})
    models = list(models or [m for m in C.EXPRESSION_MODELS if m in found])
    folds = list(folds if folds is not None else sorted({k for m in found.values() for k in m}))
    summary = {"dataset": dataset, "settings": settings, "models": {}, "paper": paper_numbers(dataset),
               "failures": [], "folds_requested": folds, "generated": _now()}
    for m in models:
        entry = {"folds": {}, "mean": None, "std": None, "n_folds_done": 0, "missing_folds": []}
        accs, correct, n_all = [], 0, 0
        for k in folds:
            d = found.get(m, {}).get(k)
            tj = read_json(d / "test.json") if d else None
            st = _stage_state(d) if d else {}
            if tj and st.get("status") == "done":
                fe = fold_entry(tj, st, d)
                entry["folds"][str(k)] = fe
                if st.get("diverged"):
                    summary.setdefault("diverged", []).append({"model": m, "fold": k, "what": st["diverged"]})
                if (fe.get("generator") or {}).get("dead"):
                    summary.setdefault("dead_generators", []).append({"model": m, "fold": k, "what": D.DEAD_NOTE})
                accs.append(tj["accuracy"])
                n_all += fe["n_test"] or 0
                correct += int(round(tj["accuracy"] * (fe["n_test"] or 0)))
            else:
                entry["missing_folds"].append(k)
                if st.get("status") in ("failed", "interrupted", "running"):
                    summary["failures"].append({
                        "model": m, "fold": k, "status": st.get("status"), "stage": st.get("failed_stage", "train"),
                        "error": st.get("error", "interrupted" if st.get("status") != "failed" else ""),
                        "log_tail": st.get("log_tail") or last_lines(str(d / "train.log"), 10)})
        entry["n_folds_done"] = len(accs)
        if accs:
            entry["mean"] = sum(accs) / len(accs)
            entry["std"] = statistics.pstdev(accs) if len(accs) > 1 else 0.0
            entry["pooled"] = D.accuracy_entry(correct, n_all)     # all test images of the done folds together
            entry["not_a_gcnet_result"] = any((f.get("generator") or {}).get("dead") for f in entry["folds"].values())
        summary["models"][m] = entry
    # pretraining failures
    for st_path in lay.pretrain_stage_files():
        st = read_json(st_path, {}) or {}
        if st.get("status") in ("failed", "interrupted"):
            summary["failures"].append({"model": st.get("model"), "fold": st.get("fold"), "status": st.get("status"),
                                        "stage": "pretrain", "error": st.get("error", ""),
                                        "log_tail": st.get("log_tail", [])})
    return summary


def summary_markdown(sm: dict) -> str:
    st = sm.get("settings", {})
    paper = sm.get("paper", {})
    lines = ["# GCNet results: %s" % sm["dataset"], ""]
    if st.get("synthetic"):
        lines += ["> **SYNTHETIC DATA: these numbers are not comparable to the paper.** They only show that the "
                  "pipeline runs end to end.", ""]
    if st.get("scaled_down"):
        lines += ["> **Scaled-down schedule** (%s iterations, batch %s, %s folds of %s): not the paper's "
                  "3e5 iterations, batch 64, 10 folds." % (st.get("iterations"), st.get("batch"),
                                                           len(sm.get("folds_requested", [])), st.get("n_folds")),
                  ""]
    lines += ["| model | folds done | mean ± std over folds | all test images (n, 95% CI) | paper |",
              "|---|---|---|---|---|"]
    pm = paper.get("models", {}) if paper.get("table") else {}
    for m, e in sm["models"].items():
        ms = "%.2f%% ± %.2f" % (100 * e["mean"], 100 * e["std"]) if e["mean"] is not None else "-"
        pp = "%.2f%%" % (100 * pm[m]) if m in pm else "-"
        lines.append("| %s%s | %d/%d | %s | %s | %s |" % (
            m, " (NOT a GCNet result: dead generator)" if e.get("not_a_gcnet_result") else "", e["n_folds_done"],
            len(sm.get("folds_requested", [])), ms, _fmt_pooled(e.get("pooled")), pp))
    lines.append("")
    if paper.get("table"):
        bp = paper.get("best_prior", {})
        lines.append("Paper (%s): CNN baseline %.2f%%; best prior method %s %.2f%%." % (
            paper["table"], 100 * (paper.get("cnn_baseline") or 0), bp.get("method"), 100 * (bp.get("accuracy") or 0)))
    else:
        lines.append("Paper: %s." % paper.get("note", "no numbers"))
    lines.append("")
    lines += ["## Per fold", "", "| model | " + " | ".join("fold %d" % k for k in sm.get("folds_requested", [])) + " |",
              "|---|" + "---|" * len(sm.get("folds_requested", []))]
    for m, e in sm["models"].items():
        cells = []
        for k in sm.get("folds_requested", []):
            f = e["folds"].get(str(k))
            cells.append("%.2f%% (n %s)" % (100 * f["accuracy"], f.get("n_test")) if f else "-")
        lines.append("| %s | %s |" % (m, " | ".join(cells)))
    lines.append("")
    lines += diagnostics_markdown(sm)
    if sm.get("diverged"):
        lines += ["## Diverged trainings (non-finite loss at the end; their accuracy is not meaningful)", ""]
        lines += ["* %s fold %s: %s" % (d["model"], d["fold"], d["what"]) for d in sm["diverged"]]
        lines.append("")
    if sm.get("failures"):
        lines += ["## Failed / unfinished", ""]
        for f in sm["failures"]:
            lines.append("* %s fold %s (%s, %s): %s" % (f["model"], f["fold"], f["stage"], f["status"], f["error"]))
            for l in (f.get("log_tail") or [])[-5:]:
                lines.append("    " + l)
        lines.append("")
    lines += ["## Settings", "", "```", json.dumps(st, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def summary_table(sm: dict) -> str:
    pm = sm.get("paper", {}).get("models", {}) if sm.get("paper", {}).get("table") else {}
    rows = [("model", "folds", "accuracy (mean ± std)", "all test images (n, 95% CI)", "paper")]
    for m, e in sm["models"].items():
        rows.append((m + (" (dead generator)" if e.get("not_a_gcnet_result") else ""),
                     "%d/%d" % (e["n_folds_done"], len(sm.get("folds_requested", []))),
                     "%.2f%% ± %.2f" % (100 * e["mean"], 100 * e["std"]) if e["mean"] is not None else "-",
                     _fmt_pooled(e.get("pooled")), "%.2f%%" % (100 * pm[m]) if m in pm else "-"))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    out = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    out.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(out)


def _fmt_pooled(p: Optional[dict]) -> str:
    if not p or p.get("accuracy") is None:
        return "-"
    return "%.2f%% (n %d, %.1f-%.1f%%)" % (100 * p["accuracy"], p["n"], 100 * p["ci95"][0], 100 * p["ci95"][1])


def diagnostics_markdown(sm: dict) -> List[str]:
    """The summary's diagnostics section: per model and fold, the training set in the TEST phase and with batch
    statistics, the generator against its baselines, and the final loss terms."""
    lines = ["## Diagnostics", "",
             "Training set (the samples of the BatchNorm re-estimation) scored in the TEST phase and with batch "
             "statistics: a gap over 10 points means the stored statistics do not fit the weights. L_Gen,r: "
             "per-image ||X_r - Generator(X)||^2 / 2 on the test set, beside the mean training reference and "
             "copy X.", "",
             "| model | fold | test (n, 95% CI) | train TEST phase | train batch stats | L_Gen,r | mean ref | copy X "
             "| final losses |", "|---|---|---|---|---|---|---|---|---|"]
    for m, e in sm["models"].items():
        for k, f in sorted(e["folds"].items(), key=lambda kv: int(kv[0])):
            tr, g = f.get("train") or {}, f.get("generator") or {}
            ci = f.get("ci95") or [None, None]
            gen = ["-", "-", "-"]
            if g:
                flag = " **dead**" if g.get("dead") else ("" if g.get("beats_mean_reference") else " (not better)")
                gen = ["%.2f%s" % (g["l_gen_r"], flag), "%.2f" % g["baseline_mean_reference"],
                       "%.2f" % g["baseline_copy_x"]]
            lines.append("| %s | %s | %.1f%% (n %s, %s) | %s | %s | %s | %s |" % (
                m, k, 100 * f["accuracy"], f.get("n_test"),
                "-" if ci[0] is None else "%.1f-%.1f%%" % (100 * ci[0], 100 * ci[1]),
                _fmt_frac(tr.get("accuracy_test_phase")), _fmt_frac(tr.get("accuracy_batch_stats")),
                " | ".join(gen), ", ".join("%s %s" % (n, fmt_num(v)) for n, v in (f.get("final_losses") or {}).items())))
    lines.append("")
    if sm.get("dead_generators"):
        lines += ["**Dead generators** (%s):" % D.DEAD_NOTE, ""]
        lines += ["* %s fold %s" % (d["model"], d["fold"]) for d in sm["dead_generators"]]
        lines.append("")
    return lines


def _fmt_frac(v) -> str:
    return "-" if v is None else "%.1f%%" % (100 * v)


def write_summary(out: Path, sm: dict) -> None:
    lay = ResultsLayout.at(out, sm["dataset"])
    write_json(lay.summary_json, sm)
    write_text(lay.summary_md, summary_markdown(sm))


def settings_record(s: Settings, man: Optional[dict]) -> dict:
    return {
        "iterations": s.iters, "pretrain_iterations": s.pretrain_iters,
        "pretrain_source": man_pretrain_source(man) if man else (
            "webface:%s" % s.pretrain_data if s.pretrain_data else "training folds"),
        "batch": s.batch, "margin": s.margin, "contrastive_distance": s.contrastive_distance,
        "finetune_output_scale": s.finetune_output_scale, "clip_gradients": s.clip_gradients,
        "pretrain_clip_gradients": s.pretrain_clip_gradients, "recalibrate_bn": s.recalibrate_bn,
        "bn_samples": s.bn_samples, "surgery_bn_stats": s.surgery_bn_stats,
        "gamma": s.gamma, "power": s.power, "base_lr": s.base_lr,
        "lr_policy": "inv", "solver": "Nesterov", "momentum": C.SolverOptions.momentum,
        "weight_decay": C.SolverOptions.weight_decay, "n_folds": s.n_folds, "augment_copies":
            (man.get("options", {}).get("augment_copies") if man else s.augment),
        "data_root": s.data_root, "data_hash": (man or {}).get("inputs", {}).get("hash"),
        "n_samples": (man or {}).get("n_samples"), "n_subjects": (man or {}).get("n_subjects"),
        "caffe_build": os.environ.get("CAFFE_BUILD", "unknown"), "caffe_version": caffe_version(),
        "git_commit": git_commit(), "synthetic": s.synthetic, "scaled_down": s.scaled_down, "profile": s.profile,
        "device": "GPU %s" % ",".join(map(str, s.gpus)) if s.gpus else "CPU (%d threads per job)" % s.threads,
        "jobs": s.jobs, "threads": s.threads, "display": s.display, "snapshot": s.snapshot, "test_interval": s.test_interval,
        "seed": s.seed,
    }


def figure_inputs_hash(out: Path) -> str:
    """Fingerprint of what the figures are made from: logs, weights and test results (size + mtime), and the
    figure code itself."""
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.name in ("test.json", "train.log", "final.caffemodel", "meta.json") and "figures" not in p.parts:
            st = p.stat()
            h.update(("%s %d %d\n" % (p.relative_to(out), st.st_size, st.st_mtime_ns)).encode())
    h.update(Path(__file__).with_name("figures.py").read_bytes())
    return h.hexdigest()


def make_figures(out: Path) -> None:
    try:
        from gcnet.figures import make_all_figures
    except Exception as e:
        say("[figures] skipped: gcnet.figures cannot be imported (%s)" % e)
        return
    stamp = ResultsLayout.at(out).figures_stamp
    key = figure_inputs_hash(out)
    done = read_json(stamp, {})
    if done.get("hash") == key and done.get("files") and all(os.path.exists(f) for f in done["files"]):
        say("[figures] up to date (inputs unchanged): %d files in %s" % (len(done["files"]), out / "figures"))
        return
    try:
        files = make_all_figures(str(out), log=lambda m: say("  " + str(m)))
        say("[figures] %d files in %s" % (len(files or []), out / "figures"))
        if files:
            write_json(stamp, {"hash": key, "files": [str(f) for f in files]})
    except Exception as e:
        say("[figures] FAILED (the results are not affected): %s: %s" % (type(e).__name__, e))


# --------------------------------------------------------------------------------------------- main flow
def run(s: Settings, collect_only: bool = False) -> int:
    from gcnet.data.records import check_writable
    out = Path(check_writable(s.out))    # DataError (exit 2) naming the folder, before any work
    t_start = time.time()
    if collect_only:
        models = s.models if s.models_explicit else None
        sm = collect_summary(out, s.dataset, models, s.folds, settings=None)
        if not sm["models"]:
            raise UsageError("nothing to collect in %s (no <model>/fold_K folders)" % out)
        write_summary(out, sm)
        say(summary_table(sm))
        say("summary: %s" % (out / "summary.md"))
        if s.figures:
            make_figures(out)
        return EXIT_FAILED if sm["failures"] else EXIT_OK

    caffe_binary()                      # fail early, before any work, when caffe is missing
    tag = "[%s]" % s.dataset
    say("%s models %s, folds %s, %d iterations (pretraining %d), batch %d, %s, %d job(s); profile %s -> %s"
        % (tag, ",".join(s.models), ",".join(map(str, s.folds)), s.iters, s.pretrain_iters, s.batch,
           "GPU " + ",".join(map(str, s.gpus)) if s.gpus else "CPU", s.jobs, s.profile, out))
    if s.synthetic:
        ensure_synthetic(s)
    report = {"started": _now(), "stages": {}}

    # 1 LMDB
    t0 = time.time()
    say("%s stage 1/7: LMDBs" % tag)
    man = stage_lmdb(s)
    report["stages"]["lmdb"] = {"cached": bool(man.get("cached")), "seconds": round(time.time() - t0, 1)}
    run_settings = {"settings": settings_record(s, man), "models": s.models, "folds": s.folds}
    write_json(s.layout.run_settings, run_settings)
    if s.stop_after == "lmdb":
        return EXIT_OK

    # 2 pretraining
    say("%s stage 2/7: pretraining (%s)" % (tag, man_pretrain_source(man)))
    pre_jobs: Dict[Tuple[int, str], Job] = {}
    shared = bool(man.get("pretrain"))
    for k in ([-1] if shared else s.folds):
        for net in C.PRETRAIN_MODELS:
            d = s.layout.pretrain_dir(k, net)
            lab = "[%s %s pretrain %s]" % (s.dataset, "webface" if shared else "fold %d" % k, net)
            pre_jobs[(k, net)] = Job("pretrain", net, k, d, lab)
    if shared:
        for k in s.folds:                 # layout: pretrain/fold_K -> webface
            link = s.layout.pretrain_fold_link(k)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    link.symlink_to("webface")
                except OSError:
                    pass
    t0 = time.time()
    run_jobs(s, list(pre_jobs.values()), lambda j, g: run_pretrain_job(s, man, j, g))
    report["stages"]["pretrain"] = {j.label: j.status for j in pre_jobs.values()}
    say("%s pretraining: %s (%s)" % (tag, _status_counts(pre_jobs.values()), fmt_duration(time.time() - t0)))
    if STOP.is_set():
        return _interrupted(s, report)
    if s.stop_after == "pretrain":
        write_json(s.layout.run_report, report)
        return EXIT_FAILED if any(j.status == "failed" for j in pre_jobs.values()) else EXIT_OK

    # 3-5 surgery, training, test
    say("%s stages 3-6/7: surgery, training, BatchNorm statistics, test" % tag)
    model_jobs: List[Job] = []
    for k in s.folds:
        for m in s.models:
            job = Job("model", m, k, s.layout.model_dir(m, k), "[%s fold %d %s]" % (s.dataset, k, m))
            model_jobs.append(job)
    runnable = []
    for job in model_jobs:
        kk = -1 if shared else job.fold
        bad = [pre_jobs[(kk, n)] for n in C.PRETRAIN_MODELS if pre_jobs[(kk, n)].status not in ("done", "cached")]
        if bad:
            job.status = "failed"
            job.error = "pretraining failed: %s" % "; ".join("%s: %s" % (b.model, b.error or b.status) for b in bad)
            job.log_tail = bad[0].log_tail
        else:
            runnable.append(job)
    t0 = time.time()
    run_jobs(s, runnable, lambda j, g: run_model_job(
        s, man, j, {n: pre_jobs[(-1 if shared else j.fold, n)].dir for n in C.PRETRAIN_MODELS}, g))
    report["stages"]["models"] = {j.label: {"status": j.status, "action": j.action, "seconds": round(j.seconds, 1),
                                            "error": j.error} for j in model_jobs}
    report["finished"] = _now()
    report["seconds"] = round(time.time() - t_start, 1)
    write_json(s.layout.run_report, report)
    say("%s models: %s (%s)" % (tag, _status_counts(model_jobs), fmt_duration(time.time() - t0)))
    if STOP.is_set():
        return _interrupted(s, report)

    # 6 summary + figures
    failed = [j for j in model_jobs if j.status == "failed"]
    if s.summary:
        say("%s stage 7/7: summary" % tag)
        sm = collect_summary(out, s.dataset, s.models, s.folds, settings=run_settings["settings"])
        write_summary(out, sm)
        say("")
        say(summary_table(sm))
        if s.synthetic:
            say("NOTE: synthetic data -- not comparable to the paper.")
        if s.scaled_down:
            say("NOTE: scaled-down schedule (%d iterations, batch %d) -- not the paper's 3e5 / 64." % (s.iters,
                                                                                                       s.batch))
        say("summary: %s" % (out / "summary.md"))
        if s.figures:
            say("%s figures" % tag)
            make_figures(out)
    if failed:
        say("%d fold run(s) FAILED:" % len(failed))
        for j in failed:
            say("  %s %s" % (j.label, j.error))
        return EXIT_FAILED
    say("%s done in %s" % (tag, fmt_duration(time.time() - t_start)))
    return EXIT_OK


def _status_counts(jobs) -> str:
    c: Dict[str, int] = {}
    for j in jobs:
        c[j.status] = c.get(j.status, 0) + 1
    return ", ".join("%d %s" % (v, k) for k, v in sorted(c.items())) or "nothing"


def _interrupted(s: Settings, report: dict) -> int:
    report["interrupted"] = _now()
    try:
        write_json(s.layout.run_report, report)
    except OSError:
        pass
    say("Interrupted. Snapshots are kept; rerun the same command to resume:\n  %s"
        % " ".join(shlex.quote(a) for a in ["tools/run_folds.sh"] + sys.argv[1:]))
    return EXIT_INTERRUPTED


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_evaluate":
        return _evaluate_main(argv[1:])
    ap = build_parser()
    a = ap.parse_args(argv)
    install_signal_handlers()
    try:
        s = resolve_settings(a)
        tasks = [(k, None) for k in s.folds] if s.stop_after == "pretrain" else \
            [(k, m) for k in s.folds for m in s.models]
        if a.count_tasks:
            print(len(tasks))
            return EXIT_OK
        if a.task_index is not None:
            if not 0 <= a.task_index < len(tasks):
                raise UsageError("--task-index %d out of range: %d task(s) (0-%d)"
                                 % (a.task_index, len(tasks), len(tasks) - 1))
            k, m = tasks[a.task_index]
            s.folds = [k]
            if m is not None:
                s.models = [m]
        return run(s, collect_only=a.collect)
    except UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except Interrupted:
        say("Interrupted; rerun the same command to resume.")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        say("Interrupted; rerun the same command to resume.")
        return EXIT_INTERRUPTED
    except Exception as e:
        # the synthetic generator refusing to overwrite a folder: one line, exit 2
        if isinstance(e, FileExistsError):
            print("error: %s" % e, file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
