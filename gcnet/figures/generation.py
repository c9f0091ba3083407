"""generation: `fig7_generation` (Fig. 7), test input X, generated reference gen_r, true neutral X_r, and the R1
reconstructions rec_r and rec_i."""
import numpy as np

from gcnet.figures.plot import message_axis, new_figure, save
from gcnet.figures.results import Skip, label_name, load_json, load_test_set, pick_fold, pick_gcnet
from gcnet.inference import ModelError, load_model, preprocess
from gcnet.layout import DEPLOY, FINAL, META

GEN_ROWS = 8                     # Fig. 7: number of test images


def _spread_by_class(labels, n):
    """Up to n indices, round-robin over the classes (first sample of each class first)."""
    by = {}
    for i, l in enumerate(labels):
        by.setdefault(int(l), []).append(i)
    out, r = [], 0
    while len(out) < n and any(r < len(v) for v in by.values()):
        for c in sorted(by):
            if r < len(by[c]) and len(out) < n:
                out.append(by[c][r])
        r += 1
    return out


def fig_generation(layout, models=None, folds=None, log=print):
    """Fig. 7: test input X, generated reference gen_r = Generator(X), true neutral frame X_r, and the R1
    reconstructions rec_r (of the generated reference) and rec_i (of the input)."""
    found = layout.trained_models(models, folds, need=(DEPLOY, FINAL, META))
    gc = pick_gcnet(found)
    if gc is None:
        raise Skip("no GCNet model (gcnet_*) with deploy.prototxt + final.caffemodel + meta.json under %s"
                   % layout.root)
    k = pick_fold(found[gc], folds)
    meta = load_json(found[gc][k] / META)
    imgs, labels = load_test_set(layout, k, meta)
    if not len(imgs):
        raise Skip("the test LMDB of fold %d is empty" % k)
    try:
        model = load_model(found[gc][k])
    except ModelError as e:
        raise Skip(str(e))
    if not model.has("gen_r"):
        raise Skip("the deploy net of %s has no gen_r blob" % found[gc][k])
    sel = _spread_by_class(labels, GEN_ROWS)
    out = model.forward(imgs[sel], ("prob", "gen_r", "rec_r", "rec_i"))
    names = model.class_names or layout.class_names(int(labels.max()) + 1)
    x = preprocess(imgs[sel][:, 0:1], model.scale, model.crop, model.mean)[:, 0]
    xr = preprocess(imgs[sel][:, 1:2], model.scale, model.crop, model.mean)[:, 0] if imgs.shape[1] > 1 else None
    cols = [("input X", x), ("generated\nreference gen_r", out["gen_r"][:, 0]),
            ("true neutral X$_r$", xr)]
    for b, ttl in (("rec_r", "reconstructed\nreference rec_r"), ("rec_i", "reconstructed\ninput rec_i")):
        cols.append((ttl, out[b][:, 0] if b in out else None))
    vmin, vmax = -model.mean * model.scale, (255.0 - model.mean) * model.scale    # the input's range
    fig = new_figure("generation")
    axes = fig.subplots(GEN_ROWS, len(cols), squeeze=False)
    for r in range(GEN_ROWS):
        for c, (ttl, arr) in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(ttl, fontsize=9)
            if r >= len(sel):
                ax.set_axis_off()
                continue
            if arr is None:
                if r == 0:
                    message_axis(ax, "none: %s is not an R1 model" % gc if "rec" in ttl else "not stored")
                    ax.set_title(ttl, fontsize=9)
                else:
                    ax.set_axis_off()
                continue
            ax.imshow(np.clip(arr[r], vmin, vmax), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            if c == 0:
                p = int(np.argmax(out["prob"][r])) if "prob" in out else -1
                ax.set_ylabel("%s\n(pred %s)" % (label_name(names, int(labels[sel[r]])), label_name(names, p)),
                              fontsize=8)
    fig.suptitle("%s: generation and reconstruction, %s fold %d (test data)" % (layout.dataset, gc, k),
                 fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.01, top=0.92, wspace=0.05, hspace=0.08)
    return save(fig, layout.figures_dir, "fig7_generation")
