"""mechanism: `mechanism`, the paper's mechanism at a glance (from summary.json): left, each model's accuracy on all
test images with its 95% interval, the cnn as a line and cnn_pair (the TRUE reference, Fig. 2b) as the bound;
right, each GCNet's L_Gen,r beside copy X and the autoencoder's blurred copy (lower is closer to X_r)."""
import numpy as np

from gcnet.figures.plot import new_figure, save
from gcnet.figures.results import Skip, load_json

BASELINES = (("l_gen_r", "G(X): generated reference"), ("baseline_copy_x", "copy X (no reference)"),
             ("baseline_blurred_copy", "A(X): blurred copy"), ("l_gen_r_on_reference", "G(X_r)"))


def fig_mechanism(layout, models=None, folds=None, log=print):
    """Accuracy per model with intervals, and L_Gen,r against its baselines (summary.json)."""
    sm = load_json(layout.summary_json)
    entries = {m: e for m, e in sm.get("models", {}).items()
               if e.get("pooled") and (not models or m in models)}
    if not entries:
        raise Skip("%s has no model with test results" % layout.summary_json)
    fig = new_figure("mechanism")
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    names = list(entries)
    acc = np.array([100 * entries[m]["pooled"]["accuracy"] for m in names])
    lo = np.array([100 * entries[m]["pooled"]["ci95"][0] for m in names])
    hi = np.array([100 * entries[m]["pooled"]["ci95"][1] for m in names])
    paired = sm.get("paired") or {}
    colors = ["#999999" if m == "cnn" else "#2ca02c" if m == "cnn_pair" else "#1f77b4" for m in names]
    ax.bar(range(len(names)), acc, color=colors, yerr=[acc - lo, hi - acc], capsize=4)
    if "cnn" in entries:
        ax.axhline(100 * entries["cnn"]["pooled"]["accuracy"], color="#555555", ls="--", lw=1, label="cnn")
    true_ref = [(i, 100 * entries[m]["generator"]["accuracy_true_reference"]["accuracy"]) for i, m in enumerate(names)
                if (entries[m].get("generator") or {}).get("accuracy_true_reference")]
    if true_ref:        # a GCNet's classifier given the TRUE reference in place of G(X)
        ax.plot(*zip(*true_ref), "D", color="black", ms=6, label="GCNet given the TRUE X_r")
        ax.legend(loc="lower right", fontsize=8)
    for i, m in enumerate(names):
        p = paired.get(m)
        note = "" if not p else "%+.1f [%+.1f, %+.1f]\np=%.2g" % (
            100 * p["difference"], 100 * p["difference_ci95"][0], 100 * p["difference_ci95"][1], p["mcnemar_p"])
        ax.text(i, hi[i] + 1, "%.1f%%%s" % (acc[i], "\n" + note if note else ""), ha="center", va="bottom",
                fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
    ax.set_ylim(0, 115)
    ax.set_ylabel("accuracy on all test images (%), 95% Wilson interval")
    n = entries[names[0]]["pooled"]["n"]
    ax.set_title("accuracy (n %d); difference vs cnn [subject-bootstrap 95%% CI] and McNemar p" % n, fontsize=10)
    gens = {m: e["generator"] for m, e in entries.items() if e.get("generator")}
    if gens:
        width = 0.8 / len(BASELINES)
        for j, (key, label) in enumerate(BASELINES):
            vals = [gens[m].get(key) for m in gens]
            xs = [i + (j - (len(BASELINES) - 1) / 2) * width for i in range(len(gens))]
            bx.bar(xs, [np.nan if v is None else v for v in vals], width, label=label)
        bx.set_xticks(range(len(gens)))
        bx.set_xticklabels(list(gens), rotation=30, ha="right", fontsize=9)
        bx.set_ylabel("per image 0.5 ||. - X_r||^2 (64x64, pixels / 256)")
        bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
        bx.set_title("how close the reference is to the true X_r (lower is better)", fontsize=10)
    else:
        bx.set_axis_off()
        bx.text(0.5, 0.5, "no GCNet in these results", ha="center", va="center")
    synthetic = (sm.get("settings") or {}).get("synthetic")
    fig.suptitle("%s: the generated reference and what it is worth%s" % (
        layout.dataset, " (SYNTHETIC data: not the paper's numbers)" if synthetic else ""), fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.28, top=0.88, wspace=0.25)
    return save(fig, layout.figures_dir, "mechanism")
