"""What a run does: its context, its jobs (pretraining nets per fold, models per fold), and for each job the net
and solver options and the generated train_val/deploy/solver prototxts."""
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional

from gcnet import config as C
from gcnet.experiment.procs import Supervisor
from gcnet.experiment.settings import Settings
from gcnet.layout import DEPLOY, DEPLOY_REF, SNAPSHOTS, SOLVER, TRAIN_VAL, ResultsLayout
from gcnet.util import UsageError, sha_text, write_text


@dataclass
class Context:
    """One run: its settings, results layout, supervisor and (after the LMDB stage) the LMDB manifest."""
    s: Settings
    layout: ResultsLayout
    sup: Supervisor
    man: dict = field(default_factory=dict)

    @property
    def shared_pretrain(self) -> bool:
        """Pretrained once on --pretrain-data (WebFace) and shared by the folds."""
        return bool(self.man.get("pretrain"))

    def pretrain_dir(self, k: int, net: str) -> Path:
        """Fold K's pretraining folder of `net`: the shared WebFace one (<out>/pretrain/webface-<data hash>, every
        dataset folder and profile under <out> uses it: the paper pretrains once) or pretrain/fold_K/<net>."""
        if self.shared_pretrain:
            return self.layout.shared_pretrain_dir(self.man["inputs"]["pretrain_hash"][:12], net)
        return self.layout.pretrain_dir(k, net)


@dataclass
class Job:
    kind: str                          # "pretrain" | "model"
    model: str
    fold: int                          # -1: shared (WebFace) pretraining
    dir: Path
    label: str
    pretrained: Dict[str, Path] = field(default_factory=dict)   # model jobs: net -> its pretraining folder
    gpu: Optional[int] = None          # set by the scheduler
    state: dict = field(default_factory=dict)                   # stage.json while the job runs
    texts: dict = field(default_factory=dict)                   # the generated prototxts and options
    fingerprint: str = ""              # data_fingerprint of what the job trains on
    status: str = "pending"            # done | cached | failed | interrupted | skipped
    action: str = ""                   # what was done: "trained", "resumed", "cached", "tested", ...
    error: str = ""
    log_tail: List[str] = field(default_factory=list)
    seconds: float = 0.0
    diverged: Optional[str] = None


def pretrain_jobs(ctx: Context) -> Dict[tuple, Job]:
    """{(fold, net): Job}; fold -1 when the pretraining is shared."""
    s, shared = ctx.s, ctx.shared_pretrain
    jobs = {}
    for k in ([-1] if shared else s.folds):
        for net in C.PRETRAIN_MODELS:
            lab = "[%s %s pretrain %s]" % (s.dataset, "webface" if shared else "fold %d" % k, net)
            jobs[(k, net)] = Job("pretrain", net, k, ctx.pretrain_dir(k, net), lab)
    return jobs


def starts_from_generator(model: str) -> bool:
    """Its surgery takes layers from the generator stage (config.MODELS sources)."""
    return "generator" in C.MODELS[model].source_nets


def uses_generator_stage(s: Settings) -> bool:
    """The paper's first step runs (--generator-iters > 0) and a selected model starts from it."""
    return s.schedule.generator_iters > 0 and any(starts_from_generator(m) for m in s.models)


def generator_jobs(ctx: Context) -> Dict[int, Job]:
    """{fold: Job} of the per-fold generator stage (X -> X_r from encdec), when it runs."""
    s = ctx.s
    if not uses_generator_stage(s):
        return {}
    return {k: Job("generator", "generator", k, ctx.layout.generator_dir(k), "[%s fold %d generator]" % (s.dataset, k),
                   pretrained={"encdec": ctx.pretrain_dir(k, "encdec")})
            for k in s.folds}


def model_jobs(ctx: Context) -> List[Job]:
    s = ctx.s
    jobs = []
    for k in s.folds:
        pre = {net: ctx.pretrain_dir(k, net) for net in C.PRETRAIN_MODELS}
        for m in s.models:
            src = dict(pre)
            if starts_from_generator(m) and uses_generator_stage(s):
                src["generator"] = ctx.layout.generator_dir(k)
            jobs.append(Job("model", m, k, ctx.layout.model_dir(m, k), "[%s fold %d %s]" % (s.dataset, k, m),
                            pretrained=src))
    return jobs


# ----------------------------------------------------------------------------------------------- data facts
def fold_info(man: dict, k: int) -> dict:
    info = (man.get("folds") or {}).get(str(k))
    if info is None:
        raise UsageError("fold %d is not in the LMDB manifest %s" % (k, "lmdb/manifest.json"))
    return info


def data_fingerprint(man: dict, k: int, what: str) -> str:
    """Hash of the data a job trains on ("train": the fold's LMDBs, "pretrain": its pretraining LMDB)."""
    info = fold_info(man, k)
    keys = {"train": ("n_train", "n_train_unique", "augment_copies", "n_test", "train_per_class", "test_per_class",
                      "test_subjects"),
            "pretrain": ("n_pretrain", "n_identities", "pretrain_source")}[what]
    shared = what == "pretrain" and man.get("pretrain")      # the WebFace pretraining: the same for every fold
    src = man.get("inputs", {}).get("pretrain_hash") if shared else man.get("inputs", {}).get("hash")
    return sha_text(src, -1 if shared else k, {x: info.get(x) for x in keys})


def pretrain_source(man: Optional[dict]) -> str:
    if man and man.get("pretrain"):
        return "webface:%s" % man.get("options", {}).get("pretrain_root")
    return "training folds (fold_K/pretrain: faces of the training subjects, identity labels)"


# ----------------------------------------------------------------------------------------------- nets, solver
def net_options(ctx: Context, k: int, model: str) -> C.NetOptions:
    s, lay, info = ctx.s, ctx.layout, fold_info(ctx.man, k)
    spec = C.DATASETS[s.dataset]
    opts = C.NetOptions(n_classes=len(spec.class_names), neutral_label=spec.neutral_label, batch_size=s.batch,
                        margin=s.margin, contrastive_distance=s.contrastive_distance,
                        finetune_output_scale=s.finetune_output_scale, fused_unpool=s.fused_unpool)
    if model in C.PRETRAIN_MODELS:
        # the shared WebFace LMDB by its own path, so that the shared pretraining does not depend on --folds
        src = str(lay.webface_lmdb(ctx.man)) if ctx.shared_pretrain else str(lay.lmdb(k, "pretrain"))
        return replace(opts, n_identities=int(info["n_identities"]), train_source=src, test_source=src,
                       test_batch_size=min(s.batch, 64))
    n_test = max(1, int(info["n_test"]))
    return replace(opts, n_identities=int(info["n_identities"]), train_source=str(lay.lmdb(k, "train")),
                   test_source=str(lay.lmdb(k, "test")), test_batch_size=min(64, n_test))


def portable(text: str, ctx: Context) -> str:
    """Text with the results folder replaced, so that moving <out> does not invalidate the caches."""
    return text.replace(str(ctx.layout.root), "$OUT")


def solver_iters(job: Job) -> int:
    """The iterations of a job: those of the solver options its solver.prototxt was written with."""
    return job.texts["solver_opts"]["max_iter"]


def write_prototxts(ctx: Context, job: Job) -> dict:
    """train_val/deploy/solver prototxt of a job (rewritten only when changed); their texts and options."""
    from gcnet.prototxts import model_files
    s = ctx.s
    opts = net_options(ctx, job.fold if job.fold >= 0 else s.folds[0], job.model)
    test_iter = C.SolverOptions.test_iter
    if job.kind == "model":
        test_iter = max(1, math.ceil(int(fold_info(ctx.man, job.fold)["n_test"]) / opts.test_batch_size))
    so = C.solver_options(s.schedule, job.model, gpu=bool(s.gpus), test_iter=test_iter)
    # (the header is hashed into the stage keys: kept as the removed gcnet/runner.py wrote it, so that the results
    # of earlier runs stay valid)
    header = "# Generated by gcnet/runner.py from gcnet/nets.py (%s, %s)\n" % (s.dataset, job.label.strip("[]"))
    files = model_files(job.model, opts, so, header, "%s/%s" % (SNAPSHOTS, job.model), with_test=job.kind == "model")
    job.dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        p = job.dir / name
        if not p.exists() or p.read_text() != text:
            write_text(p, text)
    job.texts = {"train_val": files[TRAIN_VAL], "deploy": files[DEPLOY], "solver": files[SOLVER],
                 "opts": asdict(opts), "solver_opts": asdict(so)}
    if DEPLOY_REF in files:
        job.texts["deploy_ref"] = files[DEPLOY_REF]
    return job.texts


def clean_outputs(d: Path, keep=(TRAIN_VAL, DEPLOY, DEPLOY_REF, SOLVER, ".lock")) -> None:
    """Remove everything of a job folder but its prototxts and lock (its inputs changed)."""
    for p in d.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(str(p))
        else:
            p.unlink()
