"""errors: `fig4_errors` (Fig. 4), misclassified test images of the baseline CNN and of GCNet side by side."""
from gcnet.data.images import iter_gray_frames
from gcnet.figures.plot import message_axis, new_figure, save
from gcnet.figures.results import BASELINE, Skip, label_name, load_json, load_test_set, pick_gcnet
from gcnet.layout import META, TEST
from gcnet.util import read_json

ERR_GRID = (4, 6)                # Fig. 4: rows, cols of misclassified images per model


def _test_errors(layout, model, fdirs, log):
    """[(fold, index, true, pred, image66)] of a model's misclassified test samples, and the total count."""
    errs, total = [], 0
    for k in sorted(fdirs):
        test = load_json(fdirs[k] / TEST)
        meta = read_json(fdirs[k] / META, {})
        t, p = test.get("labels") or [], test.get("predictions") or []
        total += len(t)
        try:
            imgs, labs = load_test_set(layout, k, meta)
        except Skip as e:
            log("figures: errors: %s; %s fold %d images shown from the source frames" % (e, model, k))
            imgs, labs = None, None
        if imgs is not None and (len(labs) != len(t) or list(labs) != list(t)):
            log("figures: errors: %s fold %d: test.json labels do not follow the test LMDB order; "
                "images from the source frames" % (model, k))
            imgs = None
        frames = test.get("frames") or []
        for i, (ti, pi) in enumerate(zip(t, p)):
            if ti == pi:
                continue
            img = imgs[i, 0] if imgs is not None else _read_frame(frames[i] if i < len(frames) else None)
            errs.append((k, i, int(ti), int(pi), img))
    return errs, total


def _read_frame(frame):
    """A source frame (image file or `video#index`) as a grey 66x66 image; None when it cannot be read."""
    if not frame:
        return None
    import cv2
    _, gray, _ = next(iter_gray_frames([frame]))
    return None if gray is None else cv2.resize(gray, (66, 66), interpolation=cv2.INTER_AREA)


def fig_errors(layout, models=None, folds=None, log=print):
    """Fig. 4: misclassified test images of the baseline CNN (left) and of GCNet (right), true / predicted labels;
    a red frame marks an image the other model classifies correctly."""
    found = layout.trained_models(None, folds, need=(TEST,))
    gc = pick_gcnet({m: v for m, v in found.items() if not models or m in models}) or pick_gcnet(found)
    missing = [n for n, m in (("the baseline 'cnn'", BASELINE if BASELINE in found else None),
                              ("a GCNet model (gcnet_*)", gc)) if m is None]
    if missing:
        raise Skip("errors figure needs test.json of both models; missing: %s" % " and ".join(missing))
    common = sorted(set(found[BASELINE]) & set(found[gc]))
    if not common:
        raise Skip("cnn and %s have no tested fold in common" % gc)
    names = layout.class_names()
    cnn_errs, n_cnn = _test_errors(layout, BASELINE, {k: found[BASELINE][k] for k in common}, log)
    gc_errs, n_gc = _test_errors(layout, gc, {k: found[gc][k] for k in common}, log)
    cnn_set = set((k, i) for k, i, *_ in cnn_errs)
    gc_set = set((k, i) for k, i, *_ in gc_errs)
    fig = new_figure("errors")
    sub = fig.subfigures(1, 2, wspace=0.04)
    rows, cols = ERR_GRID
    for sf, model, errs, n, other in ((sub[0], "CNN (baseline)", cnn_errs, n_cnn, gc_set),
                                      (sub[1], "GCNet (%s)" % gc, gc_errs, n_gc, cnn_set)):
        sf.suptitle("%s: %d errors / %d test samples" % (model, len(errs), n), fontsize=11)
        axes = sf.subplots(rows, cols, squeeze=False).ravel()
        # images the other model gets right first: they show the difference between the two
        shown = sorted(errs, key=lambda e: ((e[0], e[1]) in other, e[0], e[1]))[:rows * cols]
        for ax in axes:
            ax.set_axis_off()
        if not errs:
            message_axis(axes[0], "no errors")
        for ax, (k, i, t, p, img) in zip(axes, shown):
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img[1:65, 1:65] if img.shape[0] == 66 else img, cmap="gray", vmin=0, vmax=255)
            only = (k, i) not in other
            for s in ax.spines.values():
                s.set_edgecolor("red" if only else "0.6")
                s.set_linewidth(2 if only else 0.5)
            ax.set_title("T: %s\nP: %s" % (label_name(names, t), label_name(names, p)), fontsize=7)
        sf.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86, wspace=0.1, hspace=0.45)
    fig.text(0.5, 0.003, "%s, folds %s. T = true, P = predicted; red frame = the other model is right." % (
        layout.dataset, ",".join(map(str, common))), ha="center", va="bottom", fontsize=8)
    return save(fig, layout.figures_dir, "fig4_errors")
