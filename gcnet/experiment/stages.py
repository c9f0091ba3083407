"""The stages of a run.  Each run_<stage>(ctx, job) does one thing for one job and records it in job.state
(stage.json); the cache keys are in gcnet.experiment.cache.

    lmdb       per-fold paired LMDBs (gcnet.data.lmdb_build; cached by its inputs)
    pretrain   encdec and cnn_id per fold (or once on --pretrain-data) -> final.caffemodel
    generator  the per-fold generator X -> X_r from encdec (the paper's first step) -> final.caffemodel, test.json
    surgery    init.caffemodel from the pretrained nets (gcnet.surgery, in a subprocess)
    train      caffe train -> trained.caffemodel, meta.json
    recalibrate  BatchNorm statistics for the final weights (gcnet.bnstats, in a subprocess) -> final.caffemodel
    test       gcnet.experiment.evaluate in a subprocess -> test.json
"""
import contextlib
import os
import sys
import time

from gcnet import config as C
from gcnet.experiment import cache, verify
from gcnet.experiment.evaluate import generator_line, result_line
from gcnet.experiment.plan import (Context, Job, clean_outputs, data_fingerprint, fold_info,
                                   pretrain_source, solver_iters, write_prototxts)
from gcnet.experiment.procs import FileLock, Interrupted, child_env
from gcnet.experiment.train import finalize, train_with_caffe
from gcnet.layout import (BN_REPORT, DEPLOY, FINAL, INIT, META, REMOVAL, SOLVER, STAGE, SURGERY_REPORT, TEST,
                          TRAIN_LOG, TRAIN_VAL, TRAINED)
from gcnet.logparse import last_lines
from gcnet.util import fmt_duration, now, read_json, say, sha256_file, write_json

FITTED_INIT = "init_fitted.caffemodel"      # the generator stage's init with its output Scale fitted to X_r


# ----------------------------------------------------------------------------------------------- data
def ensure_synthetic(ctx: Context) -> None:
    """Generate the synthetic set at s.data_root (and the synthetic WebFace set of the profile) unless there."""
    s = ctx.s
    _make_synthetic(ctx, "ck+", s.data_root, s.synthetic_subjects, s.seed)
    if s.webface_identities:
        _make_synthetic(ctx, "webface", s.pretrain_data, s.webface_identities, C.SYNTHETIC_WEBFACE_SEED)


def _make_synthetic(ctx: Context, layout: str, root: str, subjects: int, seed: int) -> None:
    if os.path.isdir(root) and os.listdir(root):
        return
    from gcnet.data.synthetic import make_synthetic
    say("[%s] generating the synthetic %s set (%d subjects, seed %d) in %s" % (ctx.s.dataset, layout, subjects,
                                                                            seed, root))
    t0 = time.time()

    def prog(done, total, frames, elapsed):
        if done == total or done % max(1, total // 5) == 0:
            say("  synthetic: %d/%d subjects, %d frames, %s" % (done, total, frames, fmt_duration(elapsed)))
    with FileLock(os.path.dirname(root), ".synthetic.lock", stop=ctx.sup.stop):
        if os.path.isdir(root) and os.listdir(root):
            return
        make_synthetic(layout, root, subjects=subjects, seed=seed, progress=prog)
    say("  synthetic %s set written in %s" % (layout, fmt_duration(time.time() - t0)))


def run_lmdb(ctx: Context) -> dict:
    """The LMDBs of the folds of --folds (each Slurm array task names the same set); sets ctx.man."""
    from gcnet.data.lmdb_build import build_lmdbs
    s = ctx.s
    kw = dict(n_folds=s.n_folds, seed=s.seed, landmarks_root=s.landmarks, pretrain_root=s.pretrain_data,
              mmi_peaks=s.mmi_peaks, progress=lambda m: say("  " + m), folds=s.lmdb_folds or s.folds)
    if s.augment is not None:
        kw["augment_copies"] = s.augment
    with FileLock(ctx.layout.root, ".lmdb.lock", stop=ctx.sup.stop):
        ctx.man = build_lmdbs(s.dataset, s.data_root, str(ctx.layout.lmdb_root), **kw)
    return ctx.man


@contextlib.contextmanager
def _recorded(job: Job):
    """An interruption or a failure inside is recorded in the job's stage.json (with its training log's tail)."""
    try:
        yield
    except Interrupted:
        write_json(job.dir / STAGE, dict(job.state, status="interrupted"))
        raise
    except Exception as e:
        write_json(job.dir / STAGE, dict(job.state, status="failed", error=str(e),
                                         log_tail=last_lines(str(job.dir / TRAIN_LOG), 15)))
        raise


# ----------------------------------------------------------------------------------------------- pretraining
def run_pretrain(ctx: Context, job: Job) -> None:
    s, d = ctx.s, job.dir
    with FileLock(d, stop=ctx.sup.stop):
        verify.remove_leftovers(d, job.label)
        write_prototxts(ctx, job)
        meta = {"model": job.model, "kind": "pretrain", "fold": job.fold, "dataset": s.dataset,
                "iters": solver_iters(job), "pretrain_source": pretrain_source(ctx.man)}
        if read_json(d / META, {}) != meta:
            write_json(d / META, meta)          # what the folder holds (DeployModel reads it)
        fp = data_fingerprint(ctx.man, job.fold if job.fold >= 0 else s.folds[0], "pretrain")
        key, legacy = cache.pretrain_keys(ctx, job, fp)
        st = cache.read_state(d)
        if st.get("status") == "done":
            verify.remove_damaged(d, {FINAL: st.get("weights_sha256")}, [FINAL], job.label)
        if st.get("status") == "done" and any(cache.fresh(st, k, [d / FINAL]) for k in (key, legacy)):
            if st["hash"] != key:
                write_json(d / STAGE, dict(st, hash=key))
            job.status, job.action = "cached", "cached"
            return
        if st.get("hash") not in (key, legacy):
            clean_outputs(d, keep=(TRAIN_VAL, DEPLOY, SOLVER, META, ".lock"))
        job.state = {"hash": key, "status": "running", "kind": "pretrain", "model": job.model, "fold": job.fold,
                     "iters": solver_iters(job), "started": now(), "host": os.uname().nodename,
                     "resumed": (st.get("resumed") or []) if st.get("hash") in (key, legacy) else []}
        write_json(d / STAGE, job.state)
        t0 = time.time()
        with _recorded(job):
            if job.model == "encdec" and s.fit_output_scale:
                # the autoencoder's BatchNorm statistics and output Scale fitted for its final weights (to X)
                job.action = train_with_caffe(ctx, job, None, TRAINED)
                job.state["calibration"] = _recalibrate(ctx, job, s.bn_samples, fit_scale="x",
                                                        lmdb=str(ctx.layout.lmdb(job.fold, "pretrain") if
                                                                 job.fold >= 0 else ctx.layout.webface_lmdb(ctx.man)))
            else:
                job.action = train_with_caffe(ctx, job, None, FINAL)
        job.state.update(status="done", finished=now(), seconds=round(time.time() - t0, 1),
                         weights_sha256=sha256_file(d / FINAL), pretrain_source=pretrain_source(ctx.man),
                         n_identities=job.texts["opts"]["n_identities"], diverged=job.diverged)
        write_json(d / STAGE, job.state)
        if job.diverged:
            say("%s WARNING: pretraining diverged (%s)" % (job.label, job.diverged))
        job.status = "done"


# ----------------------------------------------------------------------------------------------- generator stage
def run_generator(ctx: Context, job: Job) -> None:
    """The first of the paper's two steps for fold K: Generator(X) = De_1r(En_1(X)) from encdec, trained on the
    fold's training pairs X -> X_r alone (L_Gen,r); BatchNorm statistics re-estimated; its L_Gen,r on the held-out
    identities beside copy X -> generator/fold_K/{final.caffemodel,test.json}; the GCNets of the fold start from it."""
    s, d, k = ctx.s, job.dir, job.fold
    with FileLock(d, stop=ctx.sup.stop):
        verify.remove_leftovers(d, job.label)
        write_prototxts(ctx, job)
        fp = data_fingerprint(ctx.man, k, "train")
        encdec = job.pretrained["encdec"]
        key = cache.generator_key(ctx, job, fp, cache.read_state(encdec).get("weights_sha256")
                                  or sha256_file(encdec / FINAL))
        st = cache.read_state(d)
        if st.get("status") == "done":
            verify.remove_damaged(d, {FINAL: st.get("weights_sha256")}, [FINAL], job.label)
        if st.get("status") == "done" and cache.fresh(st, key, [d / FINAL, d / TEST]):
            job.status, job.action = "cached", "cached"
            return
        if st.get("hash") != key:
            clean_outputs(d)
            st = {}
        job.state = {"hash": key, "status": "running", "kind": "generator", "model": job.model, "fold": k,
                     "iters": solver_iters(job), "started": now(), "host": os.uname().nodename,
                     "stages": st.get("stages", {})}
        write_json(d / STAGE, job.state)
        write_json(d / META, {"model": job.model, "kind": "generator", "fold": k, "dataset": s.dataset,
                              "iters": solver_iters(job), "init": str(encdec / FINAL)})
        with _recorded(job):
            if not (d / INIT).exists():
                say("%s net surgery -> %s (En_1, De_1r from encdec)" % (job.label, INIT))
                _surgery(ctx, job, "zero")
            fit = "xr" if s.fit_output_scale else None
            if fit and not (d / FITTED_INIT).exists():      # the output Scale fitted to X_r before training
                job.state["init_calibration"] = _recalibrate(ctx, job, s.bn_samples, fit, INIT, FITTED_INIT)
            t0 = time.time()
            job.action = train_with_caffe(ctx, job, FITTED_INIT if fit else INIT, TRAINED)
            job.state.update(train_seconds=round(time.time() - t0, 1), diverged=job.diverged)
            job.state["calibration"] = _recalibrate(ctx, job, s.bn_samples, fit)
            lay = ctx.layout
            ctx.sup.run_step([sys.executable, "-m", "gcnet.experiment.evaluate", "--dir", str(d), "--lmdb",
                              str(lay.lmdb(k, "test")), "--index", str(lay.test_index(k)), "--n-classes", "1",
                              "--train-lmdb", str(lay.lmdb(k, "train")), "--bn-samples", str(s.bn_samples),
                              "--batch", str(s.batch), "--autoencoder", str(encdec)]
                             + (["--gpu", str(job.gpu)] if job.gpu is not None else []),
                             d, "test", "generator test", child_env(s.threads, job.gpu, quiet_glog=True))
        g = (read_json(d / TEST, {}) or {}).get("generator") or {}
        job.state.update(status="done", finished=now(), weights_sha256=sha256_file(d / FINAL), generator=g)
        write_json(d / STAGE, job.state)
        job.status = "done"
        say("%s %s" % (job.label, generator_line(g) if g else "no generator measures"))


def _recalibrate(ctx: Context, job: Job, samples: int, fit_scale: str = None, weights: str = TRAINED,
                 out: str = FINAL, lmdb: str = None) -> dict:
    """BatchNorm statistics of job.dir's `weights` re-estimated on the fold's training set (or `lmdb`), with
    `fit_scale` ("x" / "xr") the generator's output Scale fitted to that target -> `out`; the report."""
    d = job.dir
    cmd = [sys.executable, "-m", "gcnet.bnstats", str(d), "--weights", str(d / weights), "--out", str(d / out),
           "--train-lmdb", lmdb or str(ctx.layout.lmdb(job.fold, "train")), "--samples", str(samples),
           "--batch", str(ctx.s.batch), "--report", BN_REPORT] + (["--gpu", str(job.gpu)] if job.gpu is not None
                                                                  else [])
    if fit_scale:
        cmd += ["--fit-output-scale", fit_scale]
    ctx.sup.run_step(cmd, d, "bnstats", "BatchNorm re-estimation", child_env(ctx.s.threads, job.gpu, quiet_glog=True))
    rep = read_json(d / BN_REPORT, {})
    if rep.get("output_scale"):
        o = rep["output_scale"]
        say("%s output Scale fitted to %s: per-image error on training pairs %.2f -> %.2f" % (
            job.label, "X" if o["target"] == "x" else "X_r", o["train_error_before"], o["train_error"]))
    return rep


# ----------------------------------------------------------------------------------------------- model stages
def _surgery(ctx: Context, job: Job, bn_stats: str) -> None:
    """init.caffemodel of job.dir from the final weights of job.pretrained (gcnet.surgery, in a subprocess; the
    rules: config.MODELS[model].sources)."""
    cmd = [sys.executable, "-m", "gcnet.surgery", job.model, TRAIN_VAL, INIT, "--report", SURGERY_REPORT,
           "--bn-stats", bn_stats]
    for net, p in job.pretrained.items():
        cmd += ["--" + net.replace("_", "-"), str(p / FINAL)]
    ctx.sup.run_step(cmd, job.dir, "surgery", "net surgery", child_env(ctx.s.threads, quiet_glog=True))


def run_surgery(ctx: Context, job: Job) -> None:
    d = job.dir
    if (d / INIT).exists() and (d / SURGERY_REPORT).exists():
        return
    say("%s net surgery -> %s" % (job.label, INIT))
    _surgery(ctx, job, ctx.s.surgery_bn_stats)
    verify.record_output(job.state, d, INIT)
    rep = read_json(d / SURGERY_REPORT, {})
    job.state["init"] = {"copied": len(rep.get("copied", [])), "random": [r["layer"] for r in rep.get("random", [])],
                         "bn_stats": rep.get("bn_stats")}
    job.state["stages"]["surgery"] = now()
    write_json(d / STAGE, job.state)


def run_train(ctx: Context, job: Job) -> None:
    d = job.dir
    if not ("train" in job.state["stages"] and (d / TRAINED).exists()):
        t0 = time.time()
        job.action = train_with_caffe(ctx, job, INIT, TRAINED)
        verify.record_output(job.state, d, TRAINED)
        job.state.update(status="trained", train_seconds=round(time.time() - t0, 1), diverged=job.diverged)
        if job.diverged:
            say("%s WARNING: training diverged (%s)" % (job.label, job.diverged))
        job.state["stages"]["train"] = now()
        write_json(d / STAGE, job.state)
    write_json(d / META, make_meta(ctx, job))


def run_recalibrate(ctx: Context, job: Job) -> None:
    s, d = ctx.s, job.dir
    key = cache.bnstats_key(ctx, job, job.fingerprint)
    if cache.fresh(job.state.get("bnstats"), key, [d / FINAL]):
        verify.record_final_in_meta(job.state, d)
        return
    if s.recalibrate_bn:
        say("%s re-estimating BatchNorm statistics on up to %d training samples" % (job.label, s.bn_samples))
        rep = _recalibrate(ctx, job, s.bn_samples)
    else:
        finalize(d, d / TRAINED, d / FINAL, s.keep_snapshots)
        rep = {"skipped": "--no-recalibrate-bn: the running averages of training are used"}
    job.state["bnstats"] = dict(rep, hash=key, recalibrated=s.recalibrate_bn)
    job.state["stages"]["bnstats"] = now()
    verify.record_output(job.state, d, FINAL)
    write_json(d / STAGE, job.state)
    verify.record_final_in_meta(job.state, d)


def run_test(ctx: Context, job: Job) -> None:
    s, d, lay, k = ctx.s, job.dir, ctx.layout, job.fold
    cmd = [sys.executable, "-m", "gcnet.experiment.evaluate", "--dir", str(d), "--lmdb", str(lay.lmdb(k, "test")),
           "--index", str(lay.test_index(k)), "--n-classes", str(job.texts["opts"]["n_classes"]),
           "--n-train", str(fold_info(ctx.man, k)["n_train"]),
           "--hash", cache.test_key(ctx, job, job.fingerprint), "--train-lmdb", str(lay.lmdb(k, "train")),
           "--bn-samples", str(s.bn_samples), "--batch", str(s.batch)]
    if C.has_generator(job.model):
        cmd += ["--autoencoder", str(job.pretrained["encdec"])]
    if job.gpu is not None:
        cmd += ["--gpu", str(job.gpu)]
    ctx.sup.run_step(cmd, d, "test", "test", child_env(s.threads, job.gpu, quiet_glog=True))
    tj = read_json(d / TEST, {})
    job.state.update(status="done", finished=now(), accuracy=tj.get("accuracy"))
    job.state["stages"]["test"] = now()
    write_json(d / STAGE, job.state)
    say("%s %s" % (job.label, result_line(tj)))


MODEL_STAGES = (("surgery", run_surgery), ("train", run_train), ("bnstats", run_recalibrate), ("test", run_test))


def run_model(ctx: Context, job: Job) -> None:
    """MODEL_STAGES of one model and fold, under its folder lock; skipped when every key is unchanged."""
    d = job.dir
    with FileLock(d, stop=ctx.sup.stop):
        verify.remove_leftovers(d, job.label)
        write_prototxts(ctx, job)
        init_sha = {net: (cache.read_state(p).get("weights_sha256") or sha256_file(p / FINAL))
                    for net, p in job.pretrained.items()}
        fp = data_fingerprint(ctx.man, job.fold, "train")
        key = cache.train_key(ctx, job, fp, init_sha)
        st = cache.read_state(d)
        if st.get("hash") == key:
            verify.remove_damaged(d, st.get("outputs_sha256") or {}, (INIT, TRAINED, FINAL), job.label)
        trained = cache.fresh(st, key, [d / TRAINED]) and "train" in (st.get("stages") or {})
        if trained and (d / FINAL).exists() and cache.fresh(st.get("bnstats"), cache.bnstats_key(ctx, job, fp)) \
                and st.get("status") == "done" \
                and cache.fresh(read_json(d / TEST, {}), cache.test_key(ctx, job, fp), field="inputs_hash"):
            job.status, job.action = "cached", "cached"
            return
        if st.get("hash") != key:
            clean_outputs(d)
            st = {}
        job.state = {"hash": key, "status": "running", "kind": "model", "model": job.model, "fold": job.fold,
                     "iters": solver_iters(job), "started": st.get("started") or now(), "host": os.uname().nodename,
                     "init": st.get("init"), "stages": st.get("stages", {}), "bnstats": st.get("bnstats"),
                     "train_seconds": st.get("train_seconds"), "diverged": st.get("diverged"),
                     "outputs_sha256": st.get("outputs_sha256") or {}, "resumed": st.get("resumed") or []}
        write_json(d / STAGE, job.state)
        job.fingerprint = fp
        stage = MODEL_STAGES[0][0]
        try:
            for stage, run_stage in MODEL_STAGES:
                run_stage(ctx, job)
        except Interrupted:
            write_json(d / STAGE, dict(job.state, status="interrupted"))
            raise
        except Exception as e:
            write_json(d / STAGE, dict(job.state, status="failed", failed_stage=stage, error=str(e),
                                       log_tail=last_lines(str(d / (stage + ".log")), 15)))
            raise
        job.status = "done"
        job.action = job.action or "tested"


def make_meta(ctx: Context, job: Job) -> dict:
    """meta.json of a trained model folder (read by inference, figures and tools/predict.py)."""
    s, texts = ctx.s, job.texts
    spec = C.DATASETS[s.dataset]
    info = fold_info(ctx.man, job.fold)
    so = texts["solver_opts"]
    return {"dataset": s.dataset, "model": job.model, "fold": job.fold, "class_names": list(spec.class_names),
            "neutral_label": spec.neutral_label, "n_classes": len(spec.class_names), "iters": so["max_iter"],
            "batch": s.batch, "base_lr": so["base_lr"], "lr_policy": so["lr_policy"], "gamma": so["gamma"],
            "power": so["power"], "momentum": so["momentum"], "weight_decay": so["weight_decay"],
            "margin": s.margin, "n_train": info["n_train"], "n_train_unique": info.get("n_train_unique"),
            "n_test": info["n_test"], "n_identities": info.get("n_identities"),
            "train_source": texts["opts"]["train_source"], "test_source": texts["opts"]["test_source"],
            "test_lmdb": texts["opts"]["test_source"],
            "pretrain_source": pretrain_source(ctx.man), "pretrain_iters": s.schedule.pretrain_iters,
            "init": job.state.get("init"), "synthetic": s.synthetic,
            "caffe_build": os.environ.get("CAFFE_BUILD", ""), "train_seconds": job.state.get("train_seconds"),
            "finished": now()}


# ----------------------------------------------------------------------------------------------- expression removal
def run_removal(ctx: Context, fold: int, jobs) -> None:
    """The fold's cnn reads X, X_r, the blurred copy A(X) and each GCNet's G(X) (gcnet.experiment.removal, in a
    subprocess) -> <gcnet>/fold_K/expression_removal.json; skipped when cached, or when the cnn is not trained."""
    from gcnet.experiment.removal import removal_key
    s, lay = ctx.s, ctx.layout
    done = {j.model: j for j in jobs if j.fold == fold and j.status in ("done", "cached")}
    gcnets = [j for m, j in done.items() if C.has_generator(m)]
    if "cnn" not in done or not gcnets:
        return
    cnn, encdec = done["cnn"].dir, gcnets[0].pretrained["encdec"]
    stale = [j for j in gcnets if (read_json(j.dir / REMOVAL, {}) or {}).get("hash") !=
             removal_key(cnn, j.dir, encdec, s.bn_samples, s.batch)]
    if not stale:
        return
    say("[%s fold %d] expression removal: the cnn reads X, X_r, the blurred copy and G(X) of %s"
        % (s.dataset, fold, ", ".join(j.model for j in stale)))
    cmd = [sys.executable, "-m", "gcnet.experiment.removal", "--cnn", str(cnn), "--encdec", str(encdec),
           "--test-lmdb", str(lay.lmdb(fold, "test")), "--train-lmdb", str(lay.lmdb(fold, "train")),
           "--bn-samples", str(s.bn_samples), "--batch", str(s.batch)] + [str(j.dir) for j in stale]
    ctx.sup.run_step(cmd, stale[0].dir, "removal", "expression removal", child_env(s.threads, quiet_glog=True))


# ----------------------------------------------------------------------------------------------- figures
def run_figures(ctx: Context) -> None:
    """The figures of the results folder (gcnet.figures), redrawn only when their inputs changed."""
    lay = ctx.layout
    try:
        from gcnet.figures import make_all_figures
    except Exception as e:
        say("[figures] skipped: gcnet.figures cannot be imported (%s)" % e)
        return
    key = cache.figures_key(lay.root)
    if cache.figures_fresh(lay.figures_stamp, key):
        say("[figures] up to date (inputs unchanged): %d files in %s"
            % (len(read_json(lay.figures_stamp)["files"]), lay.figures_dir))
        return
    try:
        files = make_all_figures(str(lay.root), log=lambda m: say("  " + str(m)))
        say("[figures] %d files in %s" % (len(files or []), lay.figures_dir))
        if files:
            write_json(lay.figures_stamp, {"hash": key, "files": [str(f) for f in files]})
    except Exception as e:
        say("[figures] FAILED (the results are not affected): %s: %s" % (type(e).__name__, e))
