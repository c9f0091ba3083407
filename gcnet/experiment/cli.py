"""The command line of tools/run_folds.sh: argparse -> Settings (the schedules, validation), and main().

Exit status: 0 all requested folds done, 1 some fold failed (the summary says which and why), 2 bad input,
130 interrupted (snapshots kept: rerun the same command to resume).
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from gcnet import config as C
from gcnet.experiment.procs import REPO, Interrupted, Supervisor, n_cores
from gcnet.layout import ResultsLayout
from gcnet.util import NO_SPACE, UsageError, os_error_line, parse_folds, say

# The paper's schedule (section 4.1): 3e5 iterations, mini-batch 64, ten folds.  Pretraining iterations are not
# given in the paper; they default to --iters.
PAPER_SCHEDULE = dict(n_folds=10, folds="0-9", max_iter=300000, pretrain_max_iter=None, batch=64)

# `synthetic` without --iters: a CPU-sized profile that shows the paper's mechanism (README "Results"): 100
# identities give about 39 labelled sequences (about 120 test images) per fold; the encoder-decoder and En_2 are
# pretrained once on a synthetic WebFace set of 300 other identities (the paper's CASIA-WebFace step, cached for
# every later run), the generator is trained per fold on X -> X_r (the paper's first step), then the models.
SYNTHETIC_PROFILE = dict(
    subjects=100,         # synthetic identities written by gcnet.data.synthetic.make_synthetic
    n_folds=10,           # the paper's protocol (subject-independent 10 folds) ...
    folds="0-1",          # ... of which these are run (their LMDBs only are built)
    webface_identities=300,   # the synthetic WebFace set of the pretraining (other identities)
    pretrain_max_iter=3000,   # encdec / cnn_id iterations on it (once; cached)
    generator_max_iter=1000,  # the per-fold generator stage (X -> X_r)
    max_iter=200,         # expression-model iterations
    batch=16,
    augment=2,            # augmented copies per training sample in the LMDB
    display=20,
    jobs=2,               # two trainings side by side, one BLAS thread each
    bn_samples=512,       # training samples of the BatchNorm re-estimation and of the training-set scores
)

# `--profile ablation`: the six models at a larger equal budget on a larger synthetic set (about 600 test images
# over folds 0-1), for paired statistics with n >= 500 (README "Results").
ABLATION_PROFILE = dict(SYNTHETIC_PROFILE, subjects=250, generator_max_iter=2000, max_iter=1000, display=50,
                        bn_samples=1024)
PROFILES = {"synthetic-cpu": SYNTHETIC_PROFILE, "ablation": ABLATION_PROFILE}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PRETRAIN_ON_FOLDS = "folds"      # --pretrain-data folds: pretrain on the training folds' own faces


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


@dataclass
class Settings:
    dataset: str
    data_root: Optional[str]
    out: str                           # <out>/<dataset>
    models: List[str]
    folds: List[int]
    n_folds: int
    max_iter: int                      # --iters: iterations of each expression model
    pretrain_max_iter: int             # --pretrain-iters: iterations of encdec and cnn_id
    generator_max_iter: int            # --generator-iters: iterations of the per-fold generator stage (0: none)
    fit_output_scale: bool             # the generator's output Scale fitted to its targets (encdec, generator stage)
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
    pretrain_data: Optional[str]       # WebFace root of the shared pretraining; None: the training folds
    webface_identities: Optional[int]  # identities of the synthetic WebFace set made at pretrain_data (else None)
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
        return (self.max_iter < PAPER_SCHEDULE["max_iter"] or self.batch != PAPER_SCHEDULE["batch"]
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
               "without --iters uses a CPU-sized profile (gcnet/experiment/cli.py SYNTHETIC_PROFILE: %s) on "
               "data/synthetic/ck+_<N>subjects_seed<S>, generated on first use.\n\n"
               "Examples:\n"
               "  tools/run_folds.sh synthetic\n"
               "  tools/run_folds.sh ck+ --data /data/CK+ --gpu 0,1,2,3\n"
               "  tools/run_folds.sh mmi --data /data/MMI --mmi-peaks peaks.csv --models cnn,gcnet_s1r1 --folds 0-4\n"
               "  tools/run_folds.sh ck+ --collect          # rebuild the summary from what is on disk\n\n"
               "Exit status: 0 ok, 1 some fold failed (see the summary), 2 bad input, 130 interrupted "
               "(rerun to resume)." % ", ".join("%s=%s" % kv for kv in SYNTHETIC_PROFILE.items()))
    ap.add_argument("dataset", help="one of: %s" % ", ".join(C.DATASETS))
    g = ap.add_argument_group("data")
    g.add_argument("--data", metavar="ROOT", help="dataset root in its original layout (required except for "
                   "synthetic, whose default is data/synthetic/ck+_<N>subjects_seed<S>, generated when missing)")
    g.add_argument("--landmarks", metavar="DIR", help="landmark files mirroring the dataset tree (else the "
                   "dataset's own / the face detector)")
    g.add_argument("--mmi-peaks", metavar="CSV", help="MMI peak frames (session,peak_frame)")
    g.add_argument("--augment", type=int, metavar="K", help="augmented copies per training sample in the LMDB "
                   "(default: gcnet.data.lmdb_build's %s)" % _lmdb_default_augment())
    g.add_argument("--pretrain-data", metavar="ROOT", help="CASIA-WebFace root for pretraining (paper), or `folds` "
                   "for the training folds' faces with identity labels (fold_K/pretrain); default: `folds`, except "
                   "the synthetic profiles, which make a synthetic WebFace set of other identities")
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
    g.add_argument("--iters", dest="max_iter", type=int,
                   help="training iterations of each expression model (default 3e5)")
    g.add_argument("--pretrain-iters", dest="pretrain_max_iter", type=int,
                   help="iterations of encdec and cnn_id (default: --iters)")
    g.add_argument("--generator-iters", dest="generator_max_iter", type=int,
                   help="iterations of the per-fold generator stage, the first of the paper's two steps "
                        "(Generator(X) -> X_r from encdec; the GCNets start from it); 0 = none, the GCNets start "
                        "from encdec (default: --iters / 10)")
    g.add_argument("--no-fit-output-scale", dest="fit_output_scale", action="store_false",
                   help="keep the output Scale (gamma, beta of de1r_scale1) of encdec and of the generator stage as "
                        "training left it instead of fitting it to the targets (X, X_r) by least squares before "
                        "the GCNets freeze it (docs/choices.md)")
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
    g.add_argument("--stop-after", choices=("lmdb", "pretrain", "generator"), help="stop after this stage (Slurm prep jobs)")
    g.add_argument("--keep-snapshots", type=int, default=2, help="snapshots kept per training (default 2)")
    g = ap.add_argument_group("Slurm arrays (tools/slurm/)")
    g.add_argument("--task-index", type=int, metavar="I", help="run only task I of the selected models x folds "
                   "(I = fold position * number of models + model position); with --stop-after pretrain or generator, "
                   "task I = the I-th selected fold")
    g.add_argument("--count-tasks", action="store_true", help="print the number of tasks (models x folds, or "
                   "folds with --stop-after pretrain or generator) and exit")
    return ap


def _profile_text(p: dict) -> str:
    return "%d subjects, folds %s, %d iterations, batch %d" % (p["subjects"], p["folds"], p["max_iter"], p["batch"])


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


def _given(value, default):
    """The option's value when it was given (0 included), else the default: never `value or default`."""
    return default if value is None else value


def _check_range(flag: str, value, low, above: bool = False) -> None:
    """UsageError (exit 2, one line) unless value >= low (> low with `above`) and finite."""
    ok = math.isfinite(value) and (value > low if above else value >= low)
    if not ok:
        raise UsageError("%s must be %s %s, got %s" % (flag, ">" if above else ">=", low, value))


def results_name(dataset: str, profile: Optional[str]) -> str:
    """The results folder under --out: the dataset's name; a synthetic profile other than the default gets its
    own (`synthetic-ablation`), so that its larger set never replaces the main job's results."""
    return "%s-%s" % (dataset, profile) if profile in PROFILES and profile != "synthetic-cpu" else dataset


def default_webface_root(identities: int) -> Path:
    """The synthetic CASIA-WebFace stand-in of the synthetic profiles (other identities than the expression set)."""
    return REPO / "data" / "synthetic" / ("webface_%dids_seed%d" % (identities, C.SYNTHETIC_WEBFACE_SEED))


def resolve_settings(a) -> Settings:
    C.dataset_spec(a.dataset)
    synthetic = a.dataset == "synthetic"
    if a.profile and not synthetic:
        raise UsageError("--profile %s is a schedule for the synthetic set; %s runs the paper's schedule unless "
                         "--iters/--batch/--folds say otherwise" % (a.profile, a.dataset))
    profile_name = a.profile or ("synthetic-cpu" if synthetic and a.max_iter is None else None)
    prof = PROFILES[profile_name] if profile_name else {}
    n_folds = _given(a.n_folds, prof.get("n_folds", PAPER_SCHEDULE["n_folds"]))
    _check_range("--n-folds", n_folds, 2)
    folds = parse_folds(_given(a.folds, prof.get("folds", "0-%d" % (n_folds - 1))), n_folds)
    models = parse_models(a.models)
    max_iter = _given(a.max_iter, prof.get("max_iter", PAPER_SCHEDULE["max_iter"]))
    _check_range("--iters", max_iter, 1)
    pretrain_max_iter = _given(a.pretrain_max_iter, prof.get("pretrain_max_iter", max_iter))
    _check_range("--pretrain-iters", pretrain_max_iter, 1)
    generator_max_iter = _given(a.generator_max_iter, prof.get("generator_max_iter", max_iter // 10))
    _check_range("--generator-iters", generator_max_iter, 0)
    batch = _given(a.batch, prof.get("batch", PAPER_SCHEDULE["batch"]))
    _check_range("--batch", batch, 1)
    augment = _given(a.augment, prof.get("augment"))
    if augment is not None:
        _check_range("--augment", augment, 0)
    gpus = parse_gpus(a.gpu)
    jobs = _given(a.jobs, len(gpus) if gpus else prof.get("jobs", 1))
    _check_range("--jobs", jobs, 1)
    threads = _given(a.threads, max(1, n_cores() // jobs))
    _check_range("--threads", threads, 1)
    display = _given(a.display, prof.get("display", min(100, max(1, max_iter // 20))))
    _check_range("--display", display, 1)
    snapshot = _given(a.snapshot, min(10000, max(display, max_iter // 4)))
    _check_range("--snapshot", snapshot, 1)
    test_interval = _given(a.test_interval, min(1000, max(display, max_iter // 5)))
    _check_range("--test-interval", test_interval, 1)
    margin = _given(a.margin, C.DEFAULT_MARGIN[a.contrastive_distance])
    _check_range("--margin", margin, 0, above=True)
    bn_samples = _given(a.bn_samples, prof.get("bn_samples", 1024))
    _check_range("--bn-samples", bn_samples, 1)
    _check_range("--base-lr", a.base_lr, 0, above=True)
    for flag, value in (("--gamma", a.gamma), ("--power", a.power), ("--clip-gradients", a.clip_gradients),
                        ("--pretrain-clip-gradients", a.pretrain_clip_gradients), ("--seed", a.seed)):
        _check_range(flag, value, 0)
    _check_range("--keep-snapshots", a.keep_snapshots, 1)
    synthetic_subjects = _given(a.synthetic_subjects, prof.get("subjects", SYNTHETIC_PROFILE["subjects"])
                                if synthetic else None)
    if synthetic_subjects is not None:
        _check_range("--synthetic-subjects", synthetic_subjects, 1)

    if a.data is not None and not a.data.strip():
        raise UsageError("--data is empty: give the dataset root")
    data_root = a.data
    if getattr(a, "collect", False):
        data_root = data_root and os.path.abspath(data_root)
    elif synthetic:
        data_root = os.path.abspath(_given(data_root, str(default_synthetic_root(synthetic_subjects, a.seed))))
        if os.path.exists(data_root) and not os.path.isdir(data_root):
            raise UsageError("--data %s is a file: the synthetic set is read from, or generated in, a folder"
                             % data_root)
    elif not data_root:
        raise UsageError("--data ROOT is required for %s (the dataset root in its original layout); only "
                         "`synthetic` has a default" % a.dataset)
    else:
        data_root = os.path.abspath(data_root)
        if not os.path.isdir(data_root):
            raise UsageError("data root %s does not exist or is not a folder" % data_root)
    pretrain_data, webface_identities = a.pretrain_data, None
    if pretrain_data == PRETRAIN_ON_FOLDS:
        pretrain_data = None
    elif pretrain_data is None and synthetic and prof.get("webface_identities"):
        # the paper pretrains on a separate face set (CASIA-WebFace): a synthetic one of other identities, made on
        # first use, with a fixed seed (like the real set, it does not change with --seed)
        webface_identities = prof["webface_identities"]
        pretrain_data = str(default_webface_root(webface_identities))
    for name, path in (("--pretrain-data", pretrain_data if webface_identities is None else None),
                       ("--landmarks", a.landmarks)):
        if path and not os.path.isdir(path):
            raise UsageError("%s %s does not exist or is not a folder" % (name, path))
    if a.mmi_peaks and not os.path.isfile(a.mmi_peaks):
        raise UsageError("--mmi-peaks %s does not exist" % a.mmi_peaks)
    if profile_name:
        profile = profile_name
    elif (max_iter, batch, n_folds) == tuple(PAPER_SCHEDULE[k] for k in ("max_iter", "batch", "n_folds")):
        profile = "paper"
    else:
        profile = "custom"
    return Settings(
        dataset=a.dataset, data_root=data_root, out=os.path.abspath(os.path.join(a.out, results_name(a.dataset, profile))),
        models=models, folds=folds, n_folds=n_folds, max_iter=max_iter, pretrain_max_iter=pretrain_max_iter,
        generator_max_iter=generator_max_iter, fit_output_scale=a.fit_output_scale, batch=batch,
        augment=augment, margin=margin, contrastive_distance=a.contrastive_distance,
        finetune_output_scale=a.finetune_output_scale, clip_gradients=a.clip_gradients,
        pretrain_clip_gradients=a.pretrain_clip_gradients, recalibrate_bn=a.recalibrate_bn, bn_samples=bn_samples,
        surgery_bn_stats=a.surgery_bn_stats, gamma=a.gamma, power=a.power, base_lr=a.base_lr, gpus=gpus, jobs=jobs,
        threads=threads, display=display, snapshot=snapshot, test_interval=test_interval, seed=a.seed,
        pretrain_data=pretrain_data and os.path.abspath(pretrain_data), webface_identities=webface_identities,
        landmarks=a.landmarks and os.path.abspath(a.landmarks),
        mmi_peaks=a.mmi_peaks and os.path.abspath(a.mmi_peaks),
        figures=not (a.no_figures or a.no_summary), summary=not a.no_summary, synthetic=synthetic,
        synthetic_subjects=synthetic_subjects,
        profile=profile, stop_after=a.stop_after, keep_snapshots=a.keep_snapshots,
        models_explicit=a.models != ",".join(C.EXPRESSION_MODELS), lmdb_folds=list(folds))


def select_task(s: Settings, index: int) -> None:
    """Narrow s to Slurm array task `index`: (fold, model), or the fold alone with --stop-after pretrain/generator."""
    tasks = array_tasks(s)
    if not 0 <= index < len(tasks):
        raise UsageError("--task-index %d out of range: %d task(s) (0-%d)" % (index, len(tasks), len(tasks) - 1))
    k, m = tasks[index]
    s.folds = [k]
    if m is not None:
        s.models = [m]


def array_tasks(s: Settings) -> list:
    if s.stop_after in ("pretrain", "generator"):
        return [(k, None) for k in s.folds]
    return [(k, m) for k in s.folds for m in s.models]


def main(argv=None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from gcnet.experiment.pipeline import collect, run      # (after --help, which works before tools/setup.sh)
    sup = Supervisor()
    sup.install_signal_handlers()
    try:
        s = resolve_settings(a)
        if a.count_tasks:
            print(len(array_tasks(s)))
            return EXIT_OK
        if a.task_index is not None:
            select_task(s, a.task_index)
        return collect(s) if a.collect else run(s, sup)
    except UsageError as e:                  # DataError (gcnet.data) too
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except FileExistsError as e:             # the synthetic generator refusing to overwrite a folder
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        print("error: %s" % os_error_line(e), file=sys.stderr)   # a full disk: one line, the finished work kept
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt):
        say("Interrupted; rerun the same command to resume.")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
