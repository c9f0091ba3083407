"""The summary of a results folder, from what is on disk: per model the accuracy of each fold (n, 95% interval),
mean and std over folds, all test images pooled, the paper's numbers, the diagnostics, failures
-> summary.json, summary.md and the table printed at the end of a run."""
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from gcnet import config as C
from gcnet import diagnostics as D
from gcnet.experiment.cache import read_state
from gcnet.experiment.plan import pretrain_source
from gcnet.experiment.procs import caffe_settings, git_commit
from gcnet.experiment.settings import Settings
from gcnet.stats import significant
from gcnet.layout import REMOVAL, TEST, TRAIN_LOG, ResultsLayout
from gcnet.logparse import last_lines, parse_log
from gcnet.util import fmt_num, now, read_json, write_json, write_text


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
    n = tj.get("n_test")
    fe = {"accuracy": tj["accuracy"], "n_test": n, "ci95": tj.get("ci95") or (
        D.wilson_interval(int(round(tj["accuracy"] * n)), n) if n else None), "n_train": tj.get("n_train"),
        "confusion": tj.get("confusion"), "train": tj.get("train"),
        "final_losses": D.final_losses(parse_log(d / TRAIN_LOG)["train"]) if (d / TRAIN_LOG).exists() else {}}
    if tj.get("true_reference"):
        fe["true_reference"] = {k: v for k, v in tj["true_reference"].items() if k != "predictions"}
    if tj.get("generator"):
        fe["generator"] = tj["generator"]
        removal = read_json(d / REMOVAL)
        if removal:
            fe["expression_removal"] = {k: v for k, v in removal.items() if k.startswith("p_true") or k == "n"}
    bn = st.get("bnstats") or {}
    fe["bn_recalibrated"] = bool(bn.get("recalibrated"))
    if bn.get("stale_mean_shift"):
        fe["bn_stale_mean_shift_max"] = max(bn["stale_mean_shift"].values())
    if st.get("diverged"):
        fe["diverged"] = st["diverged"]
    if st.get("resumed"):
        fe["resumed_from"] = [r["from_iteration"] for r in st["resumed"]]
    return fe


def collect_summary(lay: ResultsLayout, models: Optional[Sequence[str]] = None,
                    folds: Optional[Sequence[int]] = None, settings: Optional[dict] = None) -> dict:
    """The summary dict of what is on disk under lay.root."""
    found = lay.trained_models()
    run = read_json(lay.run_settings, {}) or {}
    settings = dict(settings or run.get("settings") or {})
    models = list(models or [m for m in C.EXPRESSION_MODELS if m in found])
    folds = list(folds if folds is not None else sorted({k for m in found.values() for k in m}))
    dataset = lay.dataset
    summary = {"dataset": dataset, "settings": settings, "models": {}, "paper": paper_numbers(dataset),
               "failures": [], "folds_requested": folds, "generated": now()}
    for m in models:
        entry = {"folds": {}, "mean": None, "std": None, "n_folds_done": 0, "missing_folds": []}
        accs, correct, n_all = [], 0, 0
        for k in folds:
            d = found.get(m, {}).get(k)
            tj = read_json(d / TEST) if d else None
            st = read_state(d) if d else {}
            if tj and st.get("status") == "done":
                fe = fold_entry(tj, st, d)
                entry["folds"][str(k)] = fe
                if st.get("diverged"):
                    summary.setdefault("diverged", []).append({"model": m, "fold": k, "what": st["diverged"]})
                _note_resumed(summary, st, m, k)
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
                        "log_tail": st.get("log_tail") or last_lines(str(d / TRAIN_LOG), 10)})
        entry["n_folds_done"] = len(accs)
        if accs:
            entry["mean"] = sum(accs) / len(accs)
            entry["std"] = statistics.pstdev(accs) if len(accs) > 1 else 0.0
            entry["pooled"] = D.accuracy_entry(correct, n_all)     # all test images of the done folds together
            entry["not_a_gcnet_result"] = any((f.get("generator") or {}).get("dead") for f in entry["folds"].values())
        if any(f.get("generator") for f in entry["folds"].values()):
            entry["generator"] = pooled_generator(entry["folds"])
        summary["models"][m] = entry
    summary["paired"] = paired_statistics(lay, summary["models"], folds)
    # pretraining failures
    # pretraining (a shared one once, however many fold links name it) and the generator stage
    for st_path in sorted({p.resolve() for p in lay.pretrain_stage_files() + lay.generator_stage_files()}):
        st = read_json(st_path, {}) or {}
        stage = "generator" if st.get("kind") == "generator" else "pretrain"
        if st.get("status") == "done":
            _note_resumed(summary, st, "%s %s" % (stage, st.get("model")), st.get("fold"))
        if st.get("status") in ("failed", "interrupted"):
            summary["failures"].append({"model": st.get("model"), "fold": st.get("fold"), "status": st.get("status"),
                                        "stage": stage, "error": st.get("error", ""),
                                        "log_tail": st.get("log_tail", [])})
    return summary


def _note_resumed(summary: dict, st: dict, what: str, fold) -> None:
    """summary["resumed"]: every training resumed from a snapshot (not bit-identical to an uninterrupted one)."""
    if st.get("resumed"):
        summary.setdefault("resumed", []).append({"model": what, "fold": fold, "from_iterations": [
            r["from_iteration"] for r in st["resumed"]]})


# the generator's measures pooled over folds (means weighted by each fold's test images)
_GEN_MEANS = ("l_gen_r", "baseline_copy_x", "baseline_mean_reference", "baseline_blurred_copy", "autoencoder_floor",
              "l_gen_r_on_reference", "fraction_beats_copy_x", "fraction_beats_blurred_copy")
_REMOVAL_MEANS = ("p_true_x", "p_true_generated", "p_true_blurred_copy", "p_true_reference")


def _weighted(values) -> Optional[float]:
    values = [(v, n) for v, n in values if v is not None and n]
    total = sum(n for _, n in values)
    return sum(v * n for v, n in values) / total if total else None


def pooled_generator(folds: dict) -> dict:
    """A model's generator measures over its folds: means weighted by n, whether it beats copy X in every fold,
    and the cnn's reading of the references (expression removal)."""
    gens = [(f["generator"], f.get("n_test") or 0) for f in folds.values() if f.get("generator")]
    out = {k: _weighted((g.get(k), n) for g, n in gens) for k in _GEN_MEANS}
    out["beats_copy_x_every_fold"] = all(g.get("beats_copy_x", g["l_gen_r"] < g["baseline_copy_x"]) for g, _ in gens)
    out["beats_copy_x"] = out["l_gen_r"] is not None and out["l_gen_r"] < out["baseline_copy_x"]
    out["folds"] = len(gens)
    refs = [f["true_reference"] for f in folds.values() if f.get("true_reference")]
    if refs:                    # the same classifier given the TRUE reference X_r instead of G(X)
        k = sum(int(round(r["accuracy"] * r["n"])) for r in refs)
        out["accuracy_true_reference"] = D.accuracy_entry(k, sum(r["n"] for r in refs))
    rem = [(f["expression_removal"], f["expression_removal"].get("n")) for f in folds.values()
           if f.get("expression_removal")]
    if rem:
        out["expression_removal"] = {k: _weighted((r.get(k), n) for r, n in rem) for k in _REMOVAL_MEANS}
    return out


def paired_statistics(lay: ResultsLayout, models: dict, folds: Sequence[int], baseline: str = "cnn") -> dict:
    """Every model against `baseline` on the same test images (gcnet.stats): per fold and all folds pooled;
    {} when the baseline has no results.  Images are matched by fold and position; a fold whose two test sets
    differ (labels or frames) is left out and named."""
    base = models.get(baseline) or {}
    if not base.get("folds"):
        return {}
    out = {}
    for m, e in models.items():
        if m == baseline or not e.get("folds"):
            continue
        both = [k for k in folds if str(k) in e["folds"] and str(k) in base["folds"]]
        pooled, per_fold, mismatched = paired_folds(lay, {k: lay.model_dir(m, k) for k in both},
                                                    {k: lay.model_dir(baseline, k) for k in both})
        if pooled is None:
            continue
        out[m] = dict(pooled, baseline=baseline, folds=per_fold)
        if mismatched:
            out[m]["folds_left_out"] = mismatched
    return out


def paired_folds(lay: ResultsLayout, dirs_a: Dict[int, Path], dirs_b: Dict[int, Path]):
    """Test folders {fold: dir} A against B, same images -> (pooled comparison or None, per fold, folds differing)."""
    from gcnet.stats import paired_comparison
    a_all, b_all, subj_all, per_fold, mismatched = [], [], [], {}, []
    for k in sorted(dirs_a):
        ta = read_json(Path(dirs_a[k]) / TEST) or {}
        tb = read_json(Path(dirs_b[k]) / TEST) or {}
        if ta.get("labels") != tb.get("labels") or ta.get("frames") != tb.get("frames"):
            mismatched.append(k)
            continue
        a = [p == t for p, t in zip(ta["predictions"], ta["labels"])]
        b = [p == t for p, t in zip(tb["predictions"], tb["labels"])]
        subj = ["%d/%s" % (k, x) for x in (ta.get("subjects") or _subjects_of(lay, k, len(a)))]
        per_fold[str(k)] = paired_comparison(a, b, subj)
        a_all += a
        b_all += b
        subj_all += subj
    return (paired_comparison(a_all, b_all, subj_all) if a_all else None), per_fold, mismatched


def _subjects_of(lay: ResultsLayout, k: int, n: int) -> list:
    """Subjects of fold K's test images from the LMDB's test_index.json; one cluster per image when unknown."""
    index = read_json(lay.test_index(k), []) or []
    if len(index) == n and all(isinstance(e, dict) and e.get("subject") for e in index):
        return [e["subject"] for e in index]
    return ["image%d" % i for i in range(n)]


def summary_markdown(sm: dict) -> str:
    st = sm.get("settings", {})
    paper = sm.get("paper", {})
    lines = ["# GCNet results: %s" % sm["dataset"], ""]
    if st.get("synthetic"):
        lines += ["> **SYNTHETIC DATA: these numbers are not comparable to the paper.** They only show that the "
                  "pipeline runs end to end.", ""]
    if st.get("scaled_down"):
        lines += ["> **Scaled-down schedule** (%s iterations, batch %s, %s folds of %s): not the paper's "
                  "3e5 iterations, batch 64, 10 folds." % (st.get("iters", st.get("iterations")), st.get("batch"),  # (old name)
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
    lines += mechanism_markdown(sm)
    lines += diagnostics_markdown(sm)
    if sm.get("diverged"):
        lines += ["## Diverged trainings (non-finite loss at the end; their accuracy is not meaningful)", ""]
        lines += ["* %s fold %s: %s" % (d["model"], d["fold"], d["what"]) for d in sm["diverged"]]
        lines.append("")
    if sm.get("resumed"):
        lines += ["## Resumed trainings (continued from a snapshot: close to, not bit-identical with, an "
                  "uninterrupted training)", ""]
        lines += ["* %s fold %s: from iteration %s" % (r["model"], r["fold"], ", ".join(map(str, r["from_iterations"])))
                  for r in sm["resumed"]]
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


def mechanism_markdown(sm: dict) -> List[str]:
    """The paper's mechanism: each model against the cnn on the same images (paired statistics), the true-reference
    bound (cnn_pair), and how close each generator comes to the reference."""
    lines = []
    paired = sm.get("paired") or {}
    if paired:
        lines += ["## Paired comparison with the cnn (same test images)", "",
                  "Difference of accuracy (model - cnn) with a 95% interval from a bootstrap over test subjects; "
                  "exact McNemar test on the images only one of the two gets right. cnn_pair is given the TRUE "
                  "reference X_r (Fig. 2b): the bound of what a reference is worth.", "",
                  "| model | n (subjects) | model | cnn | difference (95% CI) | only model / only cnn right | "
                  "McNemar p | beats cnn |", "|---|---|---|---|---|---|---|---|"]
        for m, p in paired.items():
            ci = p["difference_ci95"]
            lines.append("| %s | %d (%d) | %.1f%% | %.1f%% | %+.1f points (%+.1f to %+.1f) | %d / %d | %.3g | %s |" % (
                m, p["n"], p["n_subjects"], 100 * p["accuracy"], 100 * p["accuracy_baseline"], 100 * p["difference"],
                100 * ci[0], 100 * ci[1], p["only_model_right"], p["only_baseline_right"], p["mcnemar_p"],
                "**yes**" if significant(p) else "no"))
        lines.append("")
    gens = {m: e["generator"] for m, e in sm["models"].items() if e.get("generator")}
    if gens:
        lines += ["## The generated reference", "",
                  "Per image 0.5 ||X_r - G(X)||^2 on the test identities (64x64, pixels / 256), averaged over all "
                  "folds' test images: the generator against copy X (no reference), the autoencoder's blurred copy "
                  "A(X) and the mean training reference; its fidelity on the reference itself L(G(X_r), X_r); and "
                  "the fold's cnn's probability of the true class on X, G(X), A(X) and X_r (a generator that "
                  "removes the expression moves it from X's towards X_r's); last, the GCNet's trained weights given the "
                  "TRUE reference X_r in place of G(X) (deploy_ref; the reference branch's BatchNorm statistics "
                  "re-estimated on true references): what its classifier makes of a perfect reference.", "",
                  "| model | L_Gen,r | copy X | beats copy X | blurred copy (G better on) | mean ref | G(X_r) | "
                  "p(true): X / G(X) / A(X) / X_r | accuracy with G(X) / with the TRUE X_r |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m, g in gens.items():
            rem = g.get("expression_removal") or {}
            tr, acc = g.get("accuracy_true_reference"), sm["models"][m].get("pooled") or {}
            lines.append("| %s | %s | %s | %s | %s (%s) | %s | %s | %s | %s / %s |" % (
                m, fmt_num(g["l_gen_r"]), fmt_num(g["baseline_copy_x"]),
                ("**yes**" if g["beats_copy_x_every_fold"] else "yes (pooled; not every fold)") if g["beats_copy_x"]
                else "**no**", fmt_num(g.get("baseline_blurred_copy")), _fmt_frac(g.get("fraction_beats_blurred_copy")),
                fmt_num(g.get("baseline_mean_reference")), fmt_num(g.get("l_gen_r_on_reference")),
                " / ".join(fmt_num(rem.get(k)) for k in _REMOVAL_MEANS) if rem else "-",
                _fmt_frac(acc.get("accuracy")), _fmt_pooled(tr) if tr else "-"))
        lines.append("")
    return lines


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


def write_summary(lay: ResultsLayout, sm: dict) -> None:
    write_json(lay.summary_json, sm)
    write_text(lay.summary_md, summary_markdown(sm))


def settings_record(s: Settings, man: Optional[dict]) -> dict:
    """summary.json's "settings" (and run_settings.json's): one key per quantity, named as its option."""
    sch = s.schedule
    return {
        "iters": sch.iters, "pretrain_iters": sch.pretrain_iters, "generator_iters": sch.generator_iters,
        "fit_output_scale": s.fit_output_scale,
        "pretrain_source": pretrain_source(man) if man else (
            "webface:%s" % s.pretrain_data if s.pretrain_data else "training folds"),
        "batch": s.batch, "margin": s.margin, "contrastive_distance": s.contrastive_distance,
        "finetune_output_scale": s.finetune_output_scale, "fused_unpool": s.fused_unpool,
        "clip_gradients": sch.clip_gradients,
        "pretrain_clip_gradients": sch.pretrain_clip_gradients, "recalibrate_bn": s.recalibrate_bn,
        "bn_samples": s.bn_samples, "surgery_bn_stats": s.surgery_bn_stats,
        "gamma": sch.gamma, "power": sch.power, "base_lr": sch.base_lr,
        "lr_policy": "inv", "solver": "Nesterov", "momentum": C.SolverOptions.momentum,
        "weight_decay": C.SolverOptions.weight_decay, "n_folds": s.n_folds, "augment_copies":
            (man.get("options", {}).get("augment_copies") if man else s.augment),
        "data_root": s.data_root, "data_hash": (man or {}).get("inputs", {}).get("hash"),
        "n_samples": (man or {}).get("n_samples"), "n_subjects": (man or {}).get("n_subjects"),
        **caffe_settings(), "git_commit": git_commit(), "synthetic": s.synthetic, "scaled_down": s.scaled_down,
        "profile": s.profile,
        "device": "GPU %s" % ",".join(map(str, s.gpus)) if s.gpus else "CPU (%d threads per job)" % s.threads,
        "jobs": s.jobs, "threads": s.threads, "display": sch.display, "snapshot": sch.snapshot,
        "test_interval": sch.test_interval,
        "seed": s.seed,
    }
