"""run(): the stages of tools/run_folds.sh in order (paper section 4: 10-fold subject-independent CV);
collect(): the summary (+ figures) of what is on disk.  Every stage skips what is cached (gcnet.experiment.cache);
rerunning the same command resumes."""
import os
import shlex
import sys
import time
from typing import Dict, List

from gcnet import config as C
from gcnet.experiment import stages
from gcnet.experiment.plan import Context, Job, generator_jobs, model_jobs, pretrain_jobs, pretrain_source
from gcnet.experiment.procs import Supervisor, caffe_binary, python_layer_kernels
from gcnet.experiment.scheduler import run_jobs
from gcnet.experiment.settings import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Settings
from gcnet.experiment.summary import collect_summary, settings_record, summary_table, write_summary
from gcnet.experiment.verify import remove_leftovers
from gcnet.util import UsageError, fmt_duration, now, say, write_json


LEFTOVER_AGE = 600      # s: older temporary files in the shared results root are leftovers, not writes under way


def run(s: Settings, sup: Supervisor) -> int:
    ctx = _context(s, sup)
    caffe_binary()                      # fail early, before any work, when caffe is missing
    python_layer_kernels()              # ... or the Python layers' C kernels do not compile
    t_start, tag = time.time(), "[%s]" % s.dataset
    for d in (ctx.layout.root, ctx.layout.figures_dir):   # (job folders: under their locks, by their stages)
        remove_leftovers(d, tag, min_age=LEFTOVER_AGE)
    say("%s models %s, folds %s, %d iterations (pretraining %d), batch %d, %s, %d job(s); profile %s -> %s"
        % (tag, ",".join(s.models), ",".join(map(str, s.folds)), s.schedule.iters, s.schedule.pretrain_iters, s.batch,
           "GPU " + ",".join(map(str, s.gpus)) if s.gpus else "CPU", s.jobs, s.profile, ctx.layout.root))
    if s.synthetic:
        stages.ensure_synthetic(ctx)
    report = {"started": now(), "stages": {}}

    say("%s stage 1/8: LMDBs" % tag)
    t0 = time.time()
    stages.run_lmdb(ctx)
    report["stages"]["lmdb"] = {"cached": bool(ctx.man.get("cached")), "seconds": round(time.time() - t0, 1)}
    record = settings_record(s, ctx.man)
    write_json(ctx.layout.run_settings, {"settings": record, "models": s.models, "folds": s.folds})
    if s.stop_after == "lmdb":
        return EXIT_OK

    say("%s stage 2/8: pretraining (%s)" % (tag, pretrain_source(ctx.man)))
    pre = pretrain_jobs(ctx)
    _link_shared_pretraining(ctx)
    _run_stage(ctx, tag, "pretraining", list(pre.values()), stages.run_pretrain)
    report["stages"]["pretrain"] = {j.label: j.status for j in pre.values()}
    if sup.stop.is_set():
        return _interrupted(ctx, report)
    if s.stop_after == "pretrain":
        return _stopped_after(ctx, report, pre.values())

    gen = generator_jobs(ctx)
    if gen:
        say("%s stage 3/8: generator (the paper's first step: X -> X_r from encdec, %d iterations per fold)"
            % (tag, s.schedule.generator_iters))
        _run_stage(ctx, tag, "generator", _runnable(ctx, list(gen.values()), pre, {}), stages.run_generator)
        report["stages"]["generator"] = {j.label: j.status for j in gen.values()}
        if sup.stop.is_set():
            return _interrupted(ctx, report)
    if s.stop_after == "generator":
        return _stopped_after(ctx, report, gen.values())

    say("%s stages 4-7/8: surgery, training, BatchNorm statistics, test" % tag)
    jobs = model_jobs(ctx)
    _run_stage(ctx, tag, "models", _runnable(ctx, jobs, pre, gen), stages.run_model)
    report["stages"]["models"] = {j.label: {"status": j.status, "action": j.action, "seconds": round(j.seconds, 1),
                                            "error": j.error} for j in jobs}
    for k in s.folds:
        if sup.stop.is_set():
            break
        try:
            stages.run_removal(ctx, k, jobs)
        except Exception as e:                  # a diagnostic: reported, the results are not affected
            say("[%s fold %d] expression removal FAILED: %s" % (s.dataset, k, e))
    report.update(finished=now(), seconds=round(time.time() - t_start, 1))
    write_json(ctx.layout.run_report, report)
    if sup.stop.is_set():
        return _interrupted(ctx, report)

    if s.summary:
        say("%s stage 8/8: summary" % tag)
        _summarise(ctx, collect_summary(ctx.layout, s.models, s.folds, settings=record))
    return _finish(tag, jobs, t_start)


def collect(s: Settings) -> int:
    """--collect: the summary (+ figures) of what is on disk."""
    ctx = _context(s, Supervisor())
    sm = collect_summary(ctx.layout, s.models if s.models_explicit else None, s.folds)
    if not sm["models"]:
        raise UsageError("nothing to collect in %s (no <model>/fold_K folders)" % ctx.layout.root)
    write_summary(ctx.layout, sm)
    say(summary_table(sm))
    say("summary: %s" % ctx.layout.summary_md)
    if s.figures:
        stages.run_figures(ctx)
    return EXIT_FAILED if sm["failures"] else EXIT_OK


# ----------------------------------------------------------------------------------------------- helpers
def _context(s: Settings, sup: Supervisor) -> Context:
    from gcnet.data.records import check_writable
    check_writable(s.layout.root)       # DataError (exit 2) naming the folder, before any work
    return Context(s, s.layout, sup)


def _run_stage(ctx: Context, tag: str, what: str, jobs: List[Job], fn) -> None:
    t0 = time.time()
    run_jobs(ctx, jobs, fn)
    say("%s %s: %s (%s)" % (tag, what, _status_counts(jobs), fmt_duration(time.time() - t0)))


def _link_shared_pretraining(ctx: Context) -> None:
    """pretrain/fold_K -> the shared WebFace pretraining (relative) for each fold when there is one."""
    if not ctx.shared_pretrain:
        return
    shared = ctx.pretrain_dir(-1, C.PRETRAIN_MODELS[0]).parent
    for k in ctx.s.folds:
        link = ctx.layout.pretrain_fold_link(k)
        target = os.path.relpath(shared, link.parent)
        if link.is_symlink() and os.readlink(link) != target:
            link.unlink()                       # another pretraining data set than the previous run's
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                link.symlink_to(target)
            except OSError:
                pass


def _runnable(ctx: Context, jobs: List[Job], pre: Dict[tuple, Job], gen: Dict[int, Job]) -> List[Job]:
    """The jobs whose pretraining nets (and generator stage) are there; the others fail naming the error."""
    out = []
    for job in jobs:
        k = -1 if ctx.shared_pretrain else job.fold
        bad = [pre[(k, n)] for n in C.PRETRAIN_MODELS if n in job.pretrained or job.kind == "model"]
        if "generator" in job.pretrained and job.fold in gen:
            bad.append(gen[job.fold])
        bad = [b for b in bad if b.status not in ("done", "cached")]
        if bad:
            job.status = "failed"
            job.error = "%s failed: %s" % ("pretraining" if bad[0].kind == "pretrain" else "generator stage",
                                           "; ".join("%s: %s" % (b.model, b.error or b.status) for b in bad))
            job.log_tail = bad[0].log_tail
        else:
            out.append(job)
    return out


def _summarise(ctx: Context, sm: dict) -> None:
    s = ctx.s
    write_summary(ctx.layout, sm)
    say("")
    say(summary_table(sm))
    if s.synthetic:
        say("NOTE: synthetic data -- not comparable to the paper.")
    if s.scaled_down:
        say("NOTE: scaled-down schedule (%d iterations, batch %d) -- not the paper's 3e5 / 64." % (s.schedule.iters,
                                                                                                   s.batch))
    say("summary: %s" % ctx.layout.summary_md)
    if s.figures:
        say("[%s] figures" % s.dataset)
        stages.run_figures(ctx)


def _stopped_after(ctx: Context, report: dict, jobs) -> int:
    """--stop-after: the run report written; exit 1 when a job of the last stage failed."""
    write_json(ctx.layout.run_report, report)
    return EXIT_FAILED if any(j.status == "failed" for j in jobs) else EXIT_OK


def _finish(tag: str, jobs: List[Job], t_start: float) -> int:
    failed = [j for j in jobs if j.status == "failed"]
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


def _interrupted(ctx: Context, report: dict) -> int:
    report["interrupted"] = now()
    try:
        write_json(ctx.layout.run_report, report)
    except OSError:
        pass
    say("Interrupted. Snapshots are kept; rerun the same command to resume:\n  %s"
        % " ".join(shlex.quote(a) for a in ["tools/run_folds.sh"] + sys.argv[1:]))
    return EXIT_INTERRUPTED
