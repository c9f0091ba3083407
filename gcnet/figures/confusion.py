"""confusion: `confusion_<model>`, the confusion matrix summed over the folds, counts and row-normalised."""
import numpy as np

from gcnet.figures.plot import new_figure, save
from gcnet.figures.results import Skip, load_json
from gcnet.layout import META, TEST
from gcnet.util import read_json


def _confusion_of(test, n):
    if test.get("confusion"):
        return np.asarray(test["confusion"], np.int64)
    cm = np.zeros((n, n), np.int64)
    for t, p in zip(test.get("labels", []), test.get("predictions", [])):
        cm[t, p] += 1
    return cm


def fig_confusion(layout, models=None, folds=None, log=print):
    """Confusion matrix per model, summed over its folds: counts and row-normalised."""
    found = layout.trained_models(models, folds, need=(TEST,))
    if not found:
        raise Skip("no test.json under %s/<model>/fold_K (no model has been tested)" % layout.root)
    files = []
    for model in sorted(found):
        total = None
        names = None
        for k in sorted(found[model]):
            fdir = found[model][k]
            test = load_json(fdir / TEST)
            meta = read_json(fdir / META, {})
            names = names or meta.get("class_names")
            n = len(names) if names else int(meta.get("n_classes") or 0) or (
                max(test.get("labels", [0]) + test.get("predictions", [0])) + 1)
            cm = _confusion_of(test, n)
            if total is None:
                total = cm
            elif total.shape == cm.shape:
                total = total + cm
            else:
                log("figures: confusion: %s fold %d has a %s matrix, not %s; left out" % (
                    model, k, cm.shape, total.shape))
        names = list(names or layout.class_names(total.shape[0]))
        if len(names) != total.shape[0]:
            names = ["class %d" % i for i in range(total.shape[0])]
        norm = total / np.maximum(total.sum(1, keepdims=True), 1)
        acc = np.trace(total) / max(total.sum(), 1)
        fig = new_figure("confusion")
        axes = fig.subplots(1, 2)
        for ax, mat, ttl, fmt in ((axes[0], total, "counts", "%d"), (axes[1], norm, "row-normalised", "%.2f")):
            im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=(mat.max() if mat.max() > 0 else 1))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_xticks(range(len(names)))
            ax.set_yticks(range(len(names)))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
            ax.set_yticklabels(names, fontsize=8)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(ttl, fontsize=10)
            thr = mat.max() / 2.0 if mat.max() > 0 else 0.5
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    ax.text(j, i, fmt % mat[i, j], ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] > thr else "black")
        fig.suptitle("%s, %s: confusion over %d fold%s (%d test samples, accuracy %.2f%%)" % (
            layout.dataset, model, len(found[model]), "" if len(found[model]) == 1 else "s",
            int(total.sum()), 100 * acc), fontsize=11)
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.2, top=0.88, wspace=0.35)
        files += save(fig, layout.figures_dir, "confusion_%s" % model)
    return files
