"""tsne: `fig5_tsne` (Fig. 5), t-SNE of the test images' pixels, of the baseline CNN's fc1 and of GCNet's fc1."""
import numpy as np

from gcnet.figures.plot import class_colors, message_axis, new_figure, save
from gcnet.figures.results import BASELINE, Skip, label_name, load_json, load_test_set, pick_gcnet
from gcnet.inference import DEFAULT_CROP, ModelError, load_model, preprocess
from gcnet.layout import DEPLOY, FINAL, META


def _tsne(features, seed=0):
    from sklearn.manifold import TSNE
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = np.where(np.isfinite(x), x, 0.0)
    x = x - x.mean(0)
    for norm in (np.abs(x).max(), None):                    # t-SNE is scale-sensitive: unit mean squared norm
        norm = norm if norm is not None else np.sqrt((x ** 2).sum(1).mean())
        if norm > 0:
            x = x / norm
    if x.shape[1] > 50 and len(x) > 50:
        from sklearn.decomposition import PCA
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    kw = dict(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(limits=1)     # small problems: BLAS/OpenMP threads only oversubscribe (10x slower)
    except ImportError:
        limit = None
    try:
        try:
            return TSNE(learning_rate="auto", **kw).fit_transform(x)
        except TypeError:                                   # older scikit-learn
            return TSNE(**kw).fit_transform(x)
    finally:
        if limit is not None:
            limit.restore_original_limits()


def fig_tsne(layout, models=None, folds=None, log=print):
    """Fig. 5: t-SNE of (a) the test images' pixels, (b) the baseline CNN's fc1, (c) GCNet's fc1 (gcnet_s1r1
    preferred), coloured by class, over the test sets of the folds (each fold's images through its own model)."""
    found = layout.trained_models(None, folds, need=(DEPLOY, FINAL, META))
    gc = pick_gcnet(found) if not models else pick_gcnet({m: v for m, v in found.items() if m in models}) \
        or pick_gcnet(found)
    fold_set = sorted(set(k for m in found.values() for k in m) or (folds or []))
    if not fold_set:
        fold_set = [k for k in layout.lmdbs.folds() if folds is None or k in folds]
    pix, labels = [], []
    feats = {BASELINE: [], gc: []}
    missing = {BASELINE: [], gc: []}
    caffe_error = None
    for k in fold_set:
        meta = None
        for m in (BASELINE, gc):
            if m in found and k in found[m]:
                meta = load_json(found[m][k] / META)
                break
        try:
            imgs, labs = load_test_set(layout, k, meta)
        except Skip as e:
            log("figures: tsne: %s" % e)
            continue
        if not len(imgs):
            continue
        pix.append(preprocess(imgs[:, :1], 1.0 / 255, DEFAULT_CROP).reshape(len(imgs), -1))   # centre crops
        labels.append(labs)
        for m in (BASELINE, gc):
            if m is None:
                continue
            if m not in found or k not in found[m]:
                missing[m].append(k)
                continue
            try:
                model = load_model(found[m][k])
            except ModelError as e:
                caffe_error = str(e)
                missing[m].append(k)
                continue
            if not model.has("fc1"):
                missing[m].append(k)
                log("figures: tsne: %s has no fc1 blob" % found[m][k])
                continue
            feats[m].append((len(labels) - 1, model.forward(imgs, ("fc1",))["fc1"].reshape(len(imgs), -1)))
    if not pix:
        raise Skip("no test LMDB under %s/fold_K/test (the runner's LMDB stage has not run)" % layout.lmdb_root)
    y_all = np.concatenate(labels)
    names = layout.class_names(int(y_all.max()) + 1)
    panels = [("(a) pixels of the input images", np.concatenate(pix), y_all, None)]
    for m, ttl in ((BASELINE, "(b) fc1 of the baseline CNN"), (gc, "(c) fc1 of GCNet (%s)" % gc)):
        if m is None:
            panels.append(("(c) fc1 of GCNet", None, None,
                           "not available: no GCNet model (gcnet_*) with deploy.prototxt + final.caffemodel"))
            continue
        if not feats[m]:
            why = caffe_error or "no %s model trained with deploy.prototxt + final.caffemodel" % m
            panels.append((ttl, None, None, "not available: " + why))
            continue
        idx = [i for i, _ in feats[m]]
        f = np.concatenate([v for _, v in feats[m]])
        y = np.concatenate([labels[i] for i in idx])
        note = None
        if missing[m]:
            note = "folds without %s left out: %s" % (m, ", ".join(map(str, missing[m])))
            log("figures: tsne: " + note)
        panels.append((ttl, f, y, note))
    if len(y_all) < 5:
        raise Skip("only %d test samples in the test LMDBs; t-SNE needs at least 5" % len(y_all))
    fig = new_figure("tsne")
    axes = fig.subplots(1, 3)
    colors = class_colors(len(names))
    for ax, (ttl, f, y, note) in zip(axes, panels):
        if f is None:
            message_axis(ax, note)
            ax.set_title(ttl, fontsize=10)
            continue
        emb = _tsne(f)
        for c in sorted(set(y.tolist())):
            sel = y == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=8, color=colors[c % len(colors)], label=label_name(names, c))
        ax.set_title(ttl + ("\n" + note if note else ""), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labs = [], []
    for ax in axes:
        h, l = ax.get_legend_handles_labels()
        for hh, ll in zip(h, l):
            if ll not in labs:
                handles.append(hh)
                labs.append(ll)
    order = sorted(range(len(labs)), key=lambda i: names.index(labs[i]) if labs[i] in names else 99)
    fig.legend([handles[i] for i in order], [labs[i] for i in order], loc="lower center", ncol=min(len(labs), 10),
               fontsize=9, markerscale=2)
    fig.suptitle("%s: t-SNE of the test samples of %d fold%s (%d samples)" % (
        layout.dataset, len(pix), "" if len(pix) == 1 else "s", len(y_all)), fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.12, top=0.85, wspace=0.08)
    return save(fig, layout.figures_dir, "fig5_tsne")
