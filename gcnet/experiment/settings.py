"""The settings of a run (tools/run_folds.sh): Settings, their resolution from the parsed command line (the schedule
of config.SCHEDULES, defaults, validation), the exit codes and the Slurm task selection.  The bottom of
gcnet.experiment: every other module of the runner may import it; it imports none of them but procs.

Exit status: 0 all requested folds done, 1 some fold failed (the summary says which and why), 2 bad input,
130 interrupted (snapshots kept: rerun the same command to resume).
"""
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from gcnet import config as C
from gcnet.experiment.procs import REPO, n_cores
from gcnet.layout import ResultsLayout
from gcnet.util import UsageError, given, parse_folds

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PRETRAIN_ON_FOLDS = "folds"      # --pretrain-data folds: pretrain on the training folds' own faces
PAPER = C.SCHEDULES["paper"]


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
    out: str                           # --out: the results root (the run writes <out>/<results_name>/)
    models: List[str]
    folds: List[int]
    n_folds: int
    schedule: C.Schedule               # iterations (--iters, --pretrain-iters, --generator-iters), intervals, lr
    fit_output_scale: bool             # the generator's output Scale fitted to its targets (encdec, generator stage)
    batch: int
    augment: Optional[int]
    margin: float
    contrastive_distance: str
    finetune_output_scale: str
    fused_unpool: bool                 # NetOptions.fused_unpool: each 5x5 unpooling inside its Deconvolution (0012)
    recalibrate_bn: bool
    bn_samples: int
    surgery_bn_stats: str
    gpus: Optional[List[int]]
    jobs: int
    threads: int
    seed: int
    pretrain_data: Optional[str]       # WebFace root of the shared pretraining; None: the training folds
    webface_identities: Optional[int]  # identities of the synthetic WebFace set made at pretrain_data (else None)
    landmarks: Optional[str]
    mmi_peaks: Optional[str]
    figures: bool
    summary: bool
    synthetic: bool
    synthetic_subjects: Optional[int]
    profile: str                       # a row of config.SCHEDULES, or "custom"
    stop_after: Optional[str]
    keep_snapshots: int
    models_explicit: bool = False
    lmdb_folds: List[int] = field(default_factory=list)   # folds whose LMDBs are built: --folds (not narrowed by
                                                          # --task-index, so that every array task agrees)

    @property
    def layout(self) -> ResultsLayout:
        """The results of this run: <out>/<results_name> (it names the dataset)."""
        return ResultsLayout(self.out, self.dataset, root=Path(self.out) / results_name(self.dataset, self.profile))

    @property
    def scaled_down(self) -> bool:
        return (self.schedule.iters < PAPER["iters"] or self.batch != PAPER["batch"]
                or self.n_folds != PAPER["n_folds"])


def default_synthetic_root(subjects: int, seed: int) -> Path:
    """Where `synthetic` without --data writes (and finds) its set: named by what it holds, so that a set made with
    other settings is never reused."""
    return REPO / "data" / "synthetic" / ("ck+_%dsubjects_seed%d" % (subjects, seed))


def default_webface_root(identities: int) -> Path:
    """The synthetic CASIA-WebFace stand-in of the synthetic profiles (other identities than the expression set)."""
    return REPO / "data" / "synthetic" / ("webface_%dids_seed%d" % (identities, C.SYNTHETIC_WEBFACE_SEED))


def results_name(dataset: str, profile: Optional[str]) -> str:
    """The results folder under --out: the dataset's name; a synthetic profile other than the default gets its
    own (`synthetic-ablation`), so that its larger set never replaces the main job's results."""
    return "%s-%s" % (dataset, profile) if profile in C.SYNTHETIC_PROFILES and profile != "synthetic-cpu" else dataset


def _check_range(flag: str, value, low, above: bool = False) -> None:
    """UsageError (exit 2, one line) unless value >= low (> low with `above`) and finite."""
    ok = math.isfinite(value) and (value > low if above else value >= low)
    if not ok:
        raise UsageError("%s must be %s %s, got %s" % (flag, ">" if above else ">=", low, value))


def _schedule(a, name: str) -> C.Schedule:
    """The resolved schedule of row `name` with the options given on the command line, range-checked."""
    sch = C.make_schedule(name, iters=a.iters, pretrain_iters=a.pretrain_iters, generator_iters=a.generator_iters,
                          display=a.display, snapshot=a.snapshot, test_interval=a.test_interval, base_lr=a.base_lr,
                          gamma=a.gamma, power=a.power, clip_gradients=a.clip_gradients,
                          pretrain_clip_gradients=a.pretrain_clip_gradients)
    _check_range("--iters", sch.iters, 1)
    _check_range("--pretrain-iters", sch.pretrain_iters, 1)
    _check_range("--generator-iters", sch.generator_iters, 0)
    return sch


def _data_root(a, synthetic: bool, subjects: Optional[int]) -> Optional[str]:
    if a.data is not None and not a.data.strip():
        raise UsageError("--data is empty: give the dataset root")
    data_root = a.data
    if getattr(a, "collect", False):
        return data_root and os.path.abspath(data_root)
    if synthetic:
        data_root = os.path.abspath(given(data_root, str(default_synthetic_root(subjects, a.seed))))
        if os.path.exists(data_root) and not os.path.isdir(data_root):
            raise UsageError("--data %s is a file: the synthetic set is read from, or generated in, a folder"
                             % data_root)
        return data_root
    if not data_root:
        raise UsageError("--data ROOT is required for %s (the dataset root in its original layout); only "
                         "`synthetic` has a default" % a.dataset)
    data_root = os.path.abspath(data_root)
    if not os.path.isdir(data_root):
        raise UsageError("data root %s does not exist or is not a folder" % data_root)
    return data_root


def resolve_settings(a) -> Settings:
    """Settings of the parsed command line `a` (gcnet.experiment.cli.build_parser); UsageError (exit 2) naming the
    option that is out of range or the path that is missing."""
    C.dataset_spec(a.dataset)
    synthetic = a.dataset == "synthetic"
    if a.profile and not synthetic:
        raise UsageError("--profile %s is a schedule for the synthetic set; %s runs the paper's schedule unless "
                         "--iters/--batch/--folds say otherwise" % (a.profile, a.dataset))
    profile_name = a.profile or ("synthetic-cpu" if synthetic and a.iters is None else None)
    prof = C.SCHEDULES[profile_name] if profile_name else {}
    n_folds = given(a.n_folds, prof.get("n_folds", PAPER["n_folds"]))
    _check_range("--n-folds", n_folds, 2)
    folds = parse_folds(given(a.folds, prof.get("folds", "0-%d" % (n_folds - 1))), n_folds)
    models = parse_models(a.models)
    schedule = _schedule(a, profile_name or "paper")
    batch = given(a.batch, prof.get("batch", PAPER["batch"]))
    _check_range("--batch", batch, 1)
    augment = given(a.augment, prof.get("augment"))
    if augment is not None:
        _check_range("--augment", augment, 0)
    gpus = parse_gpus(a.gpu)
    # CPU: one job per core, one BLAS thread each (a second OpenBLAS thread in one job was slower than two jobs even
    # on an idle machine: docs/choices.md "threads")
    jobs = given(a.jobs, len(gpus) if gpus else n_cores())
    _check_range("--jobs", jobs, 1)
    threads = given(a.threads, max(1, n_cores() // jobs))
    _check_range("--threads", threads, 1)
    _check_range("--display", schedule.display, 1)
    _check_range("--snapshot", schedule.snapshot, 1)
    _check_range("--test-interval", schedule.test_interval, 1)
    margin = given(a.margin, C.DEFAULT_MARGIN[a.contrastive_distance])
    _check_range("--margin", margin, 0, above=True)
    # the fused layer has no GPU kernel (GPU mode runs its CPU code): on for CPU runs only, unless asked
    fused_unpool = given(a.fused_unpool, not gpus)
    bn_samples = given(a.bn_samples, prof.get("bn_samples", 1024))
    _check_range("--bn-samples", bn_samples, 1)
    _check_range("--base-lr", schedule.base_lr, 0, above=True)
    for flag, value in (("--gamma", schedule.gamma), ("--power", schedule.power),
                        ("--clip-gradients", schedule.clip_gradients),
                        ("--pretrain-clip-gradients", schedule.pretrain_clip_gradients), ("--seed", a.seed)):
        _check_range(flag, value, 0)
    _check_range("--keep-snapshots", a.keep_snapshots, 1)
    synthetic_subjects = given(a.synthetic_subjects, prof.get("subjects", C.SCHEDULES["synthetic-cpu"]["subjects"])
                                if synthetic else None)
    if synthetic_subjects is not None:
        _check_range("--synthetic-subjects", synthetic_subjects, 1)
    data_root = _data_root(a, synthetic, synthetic_subjects)
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
    elif (schedule.iters, batch, n_folds) == (PAPER["iters"], PAPER["batch"], PAPER["n_folds"]):
        profile = "paper"
    else:
        profile = "custom"
    return Settings(
        dataset=a.dataset, data_root=data_root, out=os.path.abspath(a.out), models=models, folds=folds,
        n_folds=n_folds, schedule=schedule, fit_output_scale=a.fit_output_scale, batch=batch, augment=augment,
        margin=margin, contrastive_distance=a.contrastive_distance, finetune_output_scale=a.finetune_output_scale,
        fused_unpool=fused_unpool, recalibrate_bn=a.recalibrate_bn, bn_samples=bn_samples,
        surgery_bn_stats=a.surgery_bn_stats, gpus=gpus,
        jobs=jobs, threads=threads, seed=a.seed,
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
