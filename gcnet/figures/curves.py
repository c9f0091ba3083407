"""curves: `curves_<model>` and `curves_pretrain_<net>` (or `..._fold_K` with per_fold): every loss term, test
accuracy and learning rate from the Caffe logs, the folds overlaid."""
import math
from pathlib import Path

import numpy as np

from gcnet.figures.plot import class_colors, new_figure, save
from gcnet.figures.results import Skip
from gcnet.layout import TRAIN_LOG


def _is_curve(name):
    """Loss terms and accuracies; other net outputs (e.g. an unconsumed blob Caffe prints element by element as
    name, name#1, ...) are not learning curves."""
    return "#" not in name and (name.startswith("loss") or "acc" in name)


def _logparse_to_curves(parsed):
    """gcnet.logparse.parse_log's result ({"train": [{iter, loss, lr, outputs}], "test": [{iter, net, loss,
    outputs}], ...}) -> the {"train", "test", "lr"} curves used here (test net #0 only)."""
    curves = {"train": {}, "test": {}, "lr": []}
    for r in parsed.get("train") or []:
        it = r["iter"]
        if r.get("loss") is not None:
            curves["train"].setdefault("loss", []).append((it, float(r["loss"])))
        if r.get("lr") is not None:
            curves["lr"].append((it, float(r["lr"])))
        for name, v in (r.get("outputs") or {}).items():
            if v is not None and _is_curve(name):
                curves["train"].setdefault(name, []).append((it, float(v)))
    for r in parsed.get("test") or []:
        if r.get("net", 0) != 0:
            continue
        for name, v in (r.get("outputs") or {}).items():
            if v is not None and _is_curve(name):
                curves["test"].setdefault(name, []).append((r["iter"], float(v)))
    return curves


def parse_curves(path):
    """Learning curves of a Caffe log (parsed by gcnet.logparse)."""
    from gcnet import logparse
    return _logparse_to_curves(logparse.parse_log(Path(path)))


_LS = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 4)), (0, (8, 2)))   # line styles of the test losses
_TERM_ORDER = ("loss", "loss_cls", "loss_contr", "loss_gen_r", "loss_rec_r", "loss_rec_i", "loss_rec", "loss_id")


def _plot_curves(kind_name, title, runs, out_dir):
    """runs: [(label, curves)] -> one figure with a panel per train loss term, test accuracy/losses and lr."""
    terms = set()
    test_terms = set()
    for _, c in runs:
        terms.update(c["train"])
        test_terms.update(c["test"])
    ordered = [t for t in _TERM_ORDER if t in terms] + sorted(t for t in terms if t not in _TERM_ORDER)
    panels = [("train", t) for t in ordered]
    acc = [t for t in sorted(test_terms) if "acc" in t]
    test_losses = [t for t in sorted(test_terms) if t not in acc]
    panels += [("test", t) for t in acc]
    if test_losses:
        panels.append(("testloss", test_losses))
    panels.append(("lr", None))
    fig = new_figure("curves")
    ncols = 4 if len(panels) <= 8 else 5
    nrows = max(2, int(math.ceil(len(panels) / float(ncols))))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = class_colors(len(runs))
    for ax, (kind, term) in zip(axes, panels):
        for (label, c), col in zip(runs, colors):
            if kind == "train":
                series = [(term, c["train"].get(term, []))]
            elif kind == "test":
                series = [(term, c["test"].get(term, []))]
            elif kind == "testloss":
                series = [(t, c["test"].get(t, [])) for t in term]
            else:
                series = [("lr", c["lr"])]
            for j, (t, s) in enumerate(series):
                if not s:
                    continue
                xs, ys = zip(*s)
                lab = label if kind != "testloss" else "%s %s" % (label, t)
                ax.plot(xs, ys, color=col, lw=1.0, ls=_LS[j % len(_LS)], label=lab,
                        marker="o" if len(xs) < 4 else None, ms=3)
        ax.set_title({"train": "train %s" % term, "test": "test %s" % term,
                      "testloss": "test losses", "lr": "learning rate"}[kind], fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ys = [y for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(y) and y > 0]
        if kind in ("train", "testloss") and ys and max(ys) / min(ys) > 1e3:
            ax.set_yscale("log", nonpositive="mask")         # divergence spikes would flatten the rest
        if kind == "testloss":                               # line styles name the terms
            from matplotlib.lines import Line2D
            ax.legend([Line2D([], [], color="0.3", ls=_LS[j % len(_LS)]) for j in range(len(term))],
                      term, fontsize=7, loc="best")
        elif kind == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if kind == "test" and "acc" in term:
            ax.set_ylim(-0.02, 1.02)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=min(len(labels), 10))
    fig.suptitle(title, fontsize=12, x=0.02, ha="left")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.88, wspace=0.3, hspace=0.45)
    return save(fig, out_dir, kind_name)


def fig_curves(layout, models=None, folds=None, per_fold=False, log=print):
    """Learning curves of every trained model (and the pretraining nets), folds overlaid or one figure per fold."""
    found = layout.trained_models(models, folds, need=(TRAIN_LOG,))
    pre = layout.pretrained(models, folds, need=(TRAIN_LOG,))
    groups = [(m, found[m]) for m in sorted(found)] + [("pretrain_%s" % m, pre[m]) for m in sorted(pre)]
    if not groups:
        raise Skip("no train.log under %s/<model>/fold_K or %s/fold_K/<model>" % (layout.root, layout.pretrain_root))
    files = []
    for model, fdirs in groups:
        runs = []
        for k in sorted(fdirs):
            c = parse_curves(fdirs[k] / TRAIN_LOG)
            if c["train"] or c["test"] or c["lr"]:
                runs.append(("fold %d" % k if k >= 0 else "webface", c, k))
            else:
                log("figures: curves: %s has no iteration lines yet, left out" % (fdirs[k] / TRAIN_LOG))
        if not runs:
            continue
        if per_fold:
            for label, c, k in runs:
                files += _plot_curves("curves_%s_%s" % (model, label.replace(" ", "_")), "%s, %s: learning curves, %s"
                                      % (layout.dataset, model, label), [(label, c)], layout.figures_dir)
        else:
            files += _plot_curves("curves_%s" % model, "%s, %s: learning curves (%d fold%s)" % (
                layout.dataset, model, len(runs), "" if len(runs) == 1 else "s"),
                [(l, c) for l, c, _ in runs], layout.figures_dir)
    if not files:
        raise Skip("the train.log files under %s contain no iteration lines" % layout.root)
    return files
