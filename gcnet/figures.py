"""Figures of a results folder (paper section 4.4, Figures 4-7) and the deploy-net inference they share with
tools/predict.py.

A results folder is ``<out>/<dataset>/`` as written by gcnet.runner (docs/ARCHITECTURE.md, "Results layout"):
``<model>/fold_K/{deploy.prototxt, final.caffemodel, train.log, meta.json, test.json}``,
``pretrain/fold_K/{encdec,cnn_id}/train.log`` and ``lmdb/fold_K/test`` (+ ``test_index.json``).

Figures (PNG + PDF into ``<dataset_dir>/figures/``), each one can be made alone (``tools/figures.py --only``):

* ``curves``      ``curves_<model>`` (``curves_pretrain_<net>``): learning curves from the Caffe logs, every loss
                  term, test accuracy, learning rate; one figure per model with the folds overlaid (or
                  ``curves_<model>_fold_K`` per model and fold with ``per_fold``).
* ``confusion``   ``confusion_<model>``: confusion matrix summed over the folds, counts and row-normalised.
* ``tsne``        ``fig5_tsne``: t-SNE of the test images' pixels, of the baseline CNN's fc1 and of GCNet's fc1.
* ``filters``     ``fig6_filters``: first conv layer of En_1 and En_2, second deconv layer of De_1r, De_2r, De_2i.
* ``generation``  ``fig7_generation``: input, generated reference gen_r, true neutral X_r, reconstructions rec_r
                  and rec_i.
* ``errors``      ``fig4_errors``: misclassified test images of the baseline and of GCNet side by side.

GCNet figures use gcnet_s1r1 when it is trained, else gcnet_s0r1, gcnet_s1r0, gcnet_s0r0 (GCNET_PREFERENCE);
single-fold figures (filters, generation) use the lowest fold (or the first of ``folds``).

A missing input (no GCNet trained, no test LMDB, pycaffe not importable, ...) skips that figure with a message
naming what is missing; it never raises out of :func:`make_all_figures`.

Inference (:class:`DeployModel`, :func:`predict_arrays`) is here rather than in tools/predict.py so that the
figures, the predict command, the tests and the runner's test stage use exactly the same preprocessing:
aligned 66x66 uint8 face -> centre crop 64 (Caffe's TEST-phase crop offset (66-64)//2) -> times the
``transform_param.scale`` of the model's train_val.prototxt (0.00390625 = 1/256 by default) -> deploy net.
"""
import glob
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from gcnet.inference import DEFAULT_CROP, ModelError, import_caffe, load_model, preprocess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("curves", "confusion", "tsne", "filters", "generation", "errors")
GCNET_PREFERENCE = ("gcnet_s1r1", "gcnet_s0r1", "gcnet_s1r0", "gcnet_s0r0")
R1_MODELS = ("gcnet_s1r1", "gcnet_s0r1")
BASELINE = "cnn"
PRETRAIN = ("encdec", "cnn_id")
DPI = 100
# figure sizes in inches (fixed per kind, so the PNG of a figure is always FIG_SIZES[kind] * DPI pixels)
FIG_SIZES = {
    "curves": (16.0, 8.0),
    "confusion": (13.0, 6.0),
    "tsne": (15.0, 5.4),
    "filters": (17.0, 4.6),
    "generation": (7.5, 12.0),
    "errors": (14.0, 8.0),
}
GEN_ROWS = 8                     # Fig. 7: number of test images
ERR_GRID = (4, 6)                # Fig. 4: rows, cols of misclassified images per model
N_DECONV_FILTERS = 100           # Fig. 6 (c)-(e): "100 filters randomly selected"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")


class Skip(Exception):
    """A figure cannot be made: the message names the missing input."""


# ================================================================================================ results folder
def _fold_of(name):
    m = re.fullmatch(r"fold_(\d+)", name)
    return int(m.group(1)) if m else None


def read_json(path):
    with open(path) as f:
        return json.load(f)


def find_models(dataset_dir, models=None, folds=None, need=()):
    """{model: {fold: fold_dir}} of ``<dataset_dir>/<model>/fold_K`` folders that contain every file of ``need``."""
    out = {}
    d = Path(dataset_dir)
    if not d.is_dir():
        return out
    for mdir in sorted(p for p in d.iterdir() if p.is_dir()):
        if mdir.name in ("lmdb", "figures", "pretrain") or (models and mdir.name not in models):
            continue
        for fdir in sorted(p for p in mdir.iterdir() if p.is_dir()):
            k = _fold_of(fdir.name)
            if k is None or (folds is not None and k not in folds):
                continue
            if all((fdir / n).exists() for n in need):
                out.setdefault(mdir.name, {})[k] = fdir
    return out


def find_pretrain(dataset_dir, models=None, folds=None):
    """{model: {fold: dir}} of ``<dataset_dir>/pretrain/fold_K/<model>`` folders with a train.log (fold -1:
    ``pretrain/webface/<model>``, pretrained once on WebFace and shared by the folds)."""
    out = {}
    for log in sorted(glob.glob(os.path.join(str(dataset_dir), "pretrain", "*", "*", "train.log"))):
        mdir = Path(log).parent
        k = -1 if mdir.parent.name == "webface" else _fold_of(mdir.parent.name)
        if k is None or (folds is not None and k >= 0 and k not in folds) or (models and mdir.name not in models):
            continue
        out.setdefault(mdir.name, {})[k] = mdir
    return out


def pick_gcnet(found, prefer=GCNET_PREFERENCE):
    for m in prefer:
        if m in found and found[m]:
            return m
    others = sorted(m for m in found if m.startswith("gcnet"))
    return others[0] if others else None


def class_names_for(dataset_dir, n_classes=None):
    """Class names from any meta.json of the results folder, else gcnet.config, else 'class k'."""
    for meta in sorted(glob.glob(os.path.join(str(dataset_dir), "*", "fold_*", "meta.json"))):
        try:
            names = read_json(meta).get("class_names")
        except (OSError, ValueError):
            continue
        if names:
            return list(names)
    try:
        from gcnet.config import DATASETS
        spec = DATASETS.get(Path(dataset_dir).name)
        if spec is not None:
            return list(spec.class_names)
    except ImportError:
        pass
    return ["class %d" % i for i in range(n_classes or 0)]


def _label_name(names, i):
    return names[i] if 0 <= i < len(names) else str(i)


# ================================================================================================ LMDB
def read_lmdb(path):
    """All Datums of an LMDB in key order (the order of Caffe's Data layer): (uint8 (N, C, H, W), labels (N,))."""
    try:
        import lmdb  # noqa: F401
    except ImportError:
        raise Skip("python package 'lmdb' is not installed (needed to read %s)" % path)
    from gcnet.caffe_io import read_lmdb as _read
    items = _read(str(path))
    if not items:
        return np.zeros((0, 2, 66, 66), np.uint8), np.zeros((0,), int)
    return np.stack([a for _, a, _ in items]), np.asarray([l for _, _, l in items], int)


def test_lmdb_dir(dataset_dir, fold, meta=None):
    """The test LMDB of a fold: meta.json's test_lmdb/test_source when it exists (the results folder may have been
    moved), else <dataset_dir>/lmdb/fold_K/test."""
    cands = []
    for key in ("test_lmdb", "test_source"):
        if meta and meta.get(key):
            p = Path(meta[key])
            cands.append(p if p.is_absolute() else Path(dataset_dir) / p)
            cands.append(REPO / p)
    cands.append(Path(dataset_dir) / "lmdb" / ("fold_%d" % fold) / "test")
    for c in cands:
        if (c / "data.mdb").exists() or (c.is_file() and c.name.endswith(".mdb")):
            return c
    return None


_TEST_CACHE = {}


def load_test_set(dataset_dir, fold, meta=None):
    """(images uint8 (N, 2, 66, 66) = [X, X_r], labels (N,), index list or None) of a fold's test LMDB."""
    path = test_lmdb_dir(dataset_dir, fold, meta)
    if path is None:
        raise Skip("no test LMDB for fold %d (expected %s)"
                   % (fold, Path(dataset_dir) / "lmdb" / ("fold_%d" % fold) / "test"))
    key = (str(path.resolve()), os.path.getmtime(str(path / "data.mdb")) if path.is_dir() else 0)
    if key not in _TEST_CACHE:
        imgs, labels = read_lmdb(path)
        index = None
        for ip in (path.parent / "test_index.json", path / "test_index.json"):
            if ip.exists():
                try:
                    index = read_json(ip)
                except ValueError:
                    index = None
                break
        if isinstance(index, dict):
            index = index.get("samples") or index.get("items") or index.get("index")
        _TEST_CACHE[key] = (imgs, labels, index)
    return _TEST_CACHE[key]


# ================================================================================================ weights
def read_params(weights):
    """{layer name: [param arrays]} of a .caffemodel, read with caffe_pb2 (no net is built)."""
    import_caffe()
    from caffe.proto import caffe_pb2
    netp = caffe_pb2.NetParameter()
    with open(str(weights), "rb") as f:
        netp.ParseFromString(f.read())
    out = {}
    for layer in list(netp.layer) + list(netp.layers):
        arrs = []
        for b in layer.blobs:
            if len(b.shape.dim):
                shape = tuple(b.shape.dim)
            else:
                shape = (b.num, b.channels, b.height, b.width)
            data = np.asarray(b.data if len(b.data) else b.double_data, np.float32)
            arrs.append(data.reshape(shape))
        if arrs:
            out[layer.name] = arrs
    return out


# ================================================================================================ plotting helpers
def _new_figure(kind):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=FIG_SIZES[kind], dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_dir, name):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        p = out_dir / ("%s.%s" % (name, ext))
        tmp = out_dir / (".%s.tmp.%s" % (name, ext))
        fig.savefig(str(tmp), dpi=DPI, format=ext)
        os.replace(str(tmp), str(p))
        files.append(str(p))
    return files


def _class_colors(n):
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def _message_axis(ax, text):
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, color="0.35",
            transform=ax.transAxes)


def _tile(images, cols, pad=1, normalise=True):
    """(N, h, w) -> one mosaic image with ``cols`` columns; each tile min-max normalised when ``normalise``."""
    n, h, w = images.shape
    rows = int(math.ceil(n / float(cols)))
    mosaic = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), np.float32)
    for i, im in enumerate(images):
        im = im.astype(np.float32)
        if normalise:
            lo, hi = float(im.min()), float(im.max())
            im = (im - lo) / (hi - lo) if hi > lo else np.full_like(im, 0.5)
        r, c = divmod(i, cols)
        mosaic[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    return mosaic


# ================================================================================================ learning curves
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
    fig = _new_figure("curves")
    ncols = 4 if len(panels) <= 8 else 5
    nrows = max(2, int(math.ceil(len(panels) / float(ncols))))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _class_colors(len(runs))
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
    return _save(fig, out_dir, kind_name)


def fig_curves(dataset_dir, models=None, folds=None, per_fold=False, log=print):
    """Learning curves of every trained model (and the pretraining nets), folds overlaid or one figure per fold."""
    found = find_models(dataset_dir, models, folds, need=("train.log",))
    pre = find_pretrain(dataset_dir, models, folds)
    groups = [(m, found[m]) for m in sorted(found)] + [("pretrain_%s" % m, pre[m]) for m in sorted(pre)]
    if not groups:
        raise Skip("no train.log under %s/<model>/fold_K or %s/pretrain/fold_K/<model>" % (dataset_dir, dataset_dir))
    out_dir = Path(dataset_dir) / "figures"
    files = []
    for model, fdirs in groups:
        runs = []
        for k in sorted(fdirs):
            c = parse_curves(fdirs[k] / "train.log")
            if c["train"] or c["test"] or c["lr"]:
                runs.append(("fold %d" % k if k >= 0 else "webface", c, k))
            else:
                log("figures: curves: %s has no iteration lines yet, left out" % (fdirs[k] / "train.log"))
        if not runs:
            continue
        if per_fold:
            for label, c, k in runs:
                files += _plot_curves("curves_%s_%s" % (model, label.replace(" ", "_")), "%s, %s: learning curves, %s"
                                      % (Path(dataset_dir).name, model, label), [(label, c)], out_dir)
        else:
            files += _plot_curves("curves_%s" % model, "%s, %s: learning curves (%d fold%s)" % (
                Path(dataset_dir).name, model, len(runs), "" if len(runs) == 1 else "s"),
                [(l, c) for l, c, _ in runs], out_dir)
    if not files:
        raise Skip("the train.log files under %s contain no iteration lines" % dataset_dir)
    return files


# ================================================================================================ confusion
def _confusion_of(test, n):
    if test.get("confusion"):
        return np.asarray(test["confusion"], np.int64)
    cm = np.zeros((n, n), np.int64)
    for t, p in zip(test.get("labels", []), test.get("predictions", [])):
        cm[t, p] += 1
    return cm


def fig_confusion(dataset_dir, models=None, folds=None, log=print):
    """Confusion matrix per model, summed over its folds: counts and row-normalised."""
    found = find_models(dataset_dir, models, folds, need=("test.json",))
    if not found:
        raise Skip("no test.json under %s/<model>/fold_K (no model has been tested)" % dataset_dir)
    files = []
    for model in sorted(found):
        total = None
        names = None
        for k in sorted(found[model]):
            fdir = found[model][k]
            test = read_json(fdir / "test.json")
            meta = read_json(fdir / "meta.json") if (fdir / "meta.json").exists() else {}
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
        names = list(names or class_names_for(dataset_dir, total.shape[0]))
        if len(names) != total.shape[0]:
            names = ["class %d" % i for i in range(total.shape[0])]
        norm = total / np.maximum(total.sum(1, keepdims=True), 1)
        acc = np.trace(total) / max(total.sum(), 1)
        fig = _new_figure("confusion")
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
            Path(dataset_dir).name, model, len(found[model]), "" if len(found[model]) == 1 else "s",
            int(total.sum()), 100 * acc), fontsize=11)
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.2, top=0.88, wspace=0.35)
        files += _save(fig, Path(dataset_dir) / "figures", "confusion_%s" % model)
    return files


# ================================================================================================ t-SNE (Fig. 5)
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


def fig_tsne(dataset_dir, models=None, folds=None, log=print):
    """Fig. 5: t-SNE of (a) the test images' pixels, (b) the baseline CNN's fc1, (c) GCNet's fc1 (gcnet_s1r1
    preferred), coloured by class, over the test sets of the folds (each fold's images through its own model)."""
    found = find_models(dataset_dir, None, folds, need=("deploy.prototxt", "final.caffemodel", "meta.json"))
    gc = pick_gcnet(found) if not models else pick_gcnet({m: v for m, v in found.items() if m in models}) \
        or pick_gcnet(found)
    fold_set = sorted(set(k for m in found.values() for k in m) or (folds or []))
    if not fold_set:
        fold_set = sorted(k for k in (_fold_of(p.name) for p in (Path(dataset_dir) / "lmdb").glob("fold_*"))
                          if k is not None and (folds is None or k in folds))
    pix, labels = [], []
    feats = {BASELINE: [], gc: []}
    missing = {BASELINE: [], gc: []}
    caffe_error = None
    for k in fold_set:
        meta = None
        for m in (BASELINE, gc):
            if m in found and k in found[m]:
                meta = read_json(found[m][k] / "meta.json")
                break
        try:
            imgs, labs, _ = load_test_set(dataset_dir, k, meta)
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
        raise Skip("no test LMDB under %s/lmdb/fold_K/test (the runner's LMDB stage has not run)" % dataset_dir)
    y_all = np.concatenate(labels)
    names = class_names_for(dataset_dir, int(y_all.max()) + 1)
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
    fig = _new_figure("tsne")
    axes = fig.subplots(1, 3)
    colors = _class_colors(len(names))
    for ax, (ttl, f, y, note) in zip(axes, panels):
        if f is None:
            _message_axis(ax, note)
            ax.set_title(ttl, fontsize=10)
            continue
        emb = _tsne(f)
        for c in sorted(set(y.tolist())):
            sel = y == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=8, color=colors[c % len(colors)], label=_label_name(names, c))
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
        Path(dataset_dir).name, len(pix), "" if len(pix) == 1 else "s", len(y_all)), fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.12, top=0.85, wspace=0.08)
    return _save(fig, Path(dataset_dir) / "figures", "fig5_tsne")


# ================================================================================================ filters (Fig. 6)
def _pick_fold(fdirs, folds):
    ks = sorted(fdirs)
    if folds:
        ks = [k for k in ks if k in folds] or ks
    return ks[0]


def fig_filters(dataset_dir, models=None, folds=None, log=print, seed=0):
    """Fig. 6: (a) En_1 / (b) En_2 first conv filters (32 of 5x5), (c)-(e) 100 random 3x3 slices of the second
    deconv layer of De_1r, De_2r, De_2i; from gcnet_s1r1 when trained, else the best available GCNet."""
    found = find_models(dataset_dir, models, folds, need=("final.caffemodel",))
    gc = pick_gcnet(found)
    if gc is None:
        raise Skip("no GCNet model (gcnet_s1r1, gcnet_s0r1, gcnet_s1r0, gcnet_s0r0) with final.caffemodel under %s"
                   % dataset_dir)
    k = _pick_fold(found[gc], folds)
    try:
        params = read_params(found[gc][k] / "final.caffemodel")
    except ModelError as e:
        raise Skip(str(e))
    # De_2r / De_2i exist only in R1 models: take them from an R1 model if the chosen one has none
    r1 = next((m for m in R1_MODELS if m in found), None)
    r1_params, r1_src = params, gc
    if "de2r_deconv2" not in params and r1 is not None:
        r1_src = r1
        r1_params = read_params(found[r1][_pick_fold(found[r1], folds)] / "final.caffemodel")
    rng = np.random.RandomState(seed)
    panels = []
    for layer, ttl, src in (("en1_conv1", "(a) Conv. filters in En$_1$", params),
                            ("en2_conv1", "(b) Conv. filters in En$_2$", params),
                            ("de1r_deconv2", "(c) DeConv. filters in De$_1$", params),
                            ("de2r_deconv2", "(d) DeConv. filters in De$_{2,r}$", r1_params),
                            ("de2i_deconv2", "(e) DeConv. filters in De$_{2,i}$", r1_params)):
        if layer not in src:
            panels.append((ttl, None, "not available: no %s layer in %s" % (
                layer, "an R1 model (gcnet_s*r1)" if layer.startswith("de2") else gc)))
            continue
        w = src[layer][0]
        w = w.reshape(-1, w.shape[-2], w.shape[-1])           # every 2-D slice (out x in channels)
        if layer.startswith("de"):
            sel = rng.choice(len(w), size=min(N_DECONV_FILTERS, len(w)), replace=False)
            w = w[np.sort(sel)]
            cols = 10
        else:
            w = w[:32]
            cols = 8
        panels.append(("%s\n%s, %d filters %dx%d" % (ttl, layer, len(w), w.shape[1], w.shape[2]), _tile(w, cols),
                       None))
    fig = _new_figure("filters")
    axes = fig.subplots(1, 5)
    for ax, (ttl, img, note) in zip(axes, panels):
        if img is None:
            _message_axis(ax, note)
        else:
            ax.imshow(img, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(ttl, fontsize=9)
    src_txt = gc if r1_src == gc else "%s; De$_{2,r}$, De$_{2,i}$ from %s" % (gc, r1_src)
    fig.suptitle("%s: learned filters of %s, fold %d (each filter min-max normalised)" % (
        Path(dataset_dir).name, src_txt, k), fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.03, top=0.8, wspace=0.08)
    return _save(fig, Path(dataset_dir) / "figures", "fig6_filters")


# ================================================================================================ generation (Fig. 7)
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


def fig_generation(dataset_dir, models=None, folds=None, log=print):
    """Fig. 7: test input X, generated reference gen_r = Generator(X), true neutral frame X_r, and the R1
    reconstructions rec_r (of the generated reference) and rec_i (of the input)."""
    found = find_models(dataset_dir, models, folds, need=("deploy.prototxt", "final.caffemodel", "meta.json"))
    gc = pick_gcnet(found)
    if gc is None:
        raise Skip("no GCNet model (gcnet_*) with deploy.prototxt + final.caffemodel + meta.json under %s"
                   % dataset_dir)
    k = _pick_fold(found[gc], folds)
    meta = read_json(found[gc][k] / "meta.json")
    imgs, labels, _ = load_test_set(dataset_dir, k, meta)
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
    names = model.class_names or class_names_for(dataset_dir, int(labels.max()) + 1)
    x = preprocess(imgs[sel][:, 0:1], model.scale, model.crop, model.mean)[:, 0]
    xr = preprocess(imgs[sel][:, 1:2], model.scale, model.crop, model.mean)[:, 0] if imgs.shape[1] > 1 else None
    cols = [("input X", x), ("generated\nreference gen_r", out["gen_r"][:, 0]),
            ("true neutral X$_r$", xr)]
    for b, ttl in (("rec_r", "reconstructed\nreference rec_r"), ("rec_i", "reconstructed\ninput rec_i")):
        cols.append((ttl, out[b][:, 0] if b in out else None))
    vmin, vmax = -model.mean * model.scale, (255.0 - model.mean) * model.scale    # the input's range
    fig = _new_figure("generation")
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
                    _message_axis(ax, "none: %s is not an R1 model" % gc if "rec" in ttl else "not stored")
                    ax.set_title(ttl, fontsize=9)
                else:
                    ax.set_axis_off()
                continue
            ax.imshow(np.clip(arr[r], vmin, vmax), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            if c == 0:
                p = int(np.argmax(out["prob"][r])) if "prob" in out else -1
                ax.set_ylabel("%s\n(pred %s)" % (_label_name(names, int(labels[sel[r]])), _label_name(names, p)),
                              fontsize=8)
    fig.suptitle("%s: generation and reconstruction, %s fold %d (test data)" % (Path(dataset_dir).name, gc, k),
                 fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.01, top=0.92, wspace=0.05, hspace=0.08)
    return _save(fig, Path(dataset_dir) / "figures", "fig7_generation")


# ================================================================================================ errors (Fig. 4)
def _test_errors(dataset_dir, model, fdirs, log):
    """[(fold, index, true, pred, image66)] of a model's misclassified test samples, and the total count."""
    errs, total = [], 0
    for k in sorted(fdirs):
        test = read_json(fdirs[k] / "test.json")
        meta = read_json(fdirs[k] / "meta.json") if (fdirs[k] / "meta.json").exists() else {}
        t, p = test.get("labels") or [], test.get("predictions") or []
        total += len(t)
        try:
            imgs, labs, _ = load_test_set(dataset_dir, k, meta)
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


def _read_frame(path):
    if not path or not os.path.exists(path):
        return None
    try:
        import cv2
        g = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        return None if g is None else cv2.resize(g, (66, 66), interpolation=cv2.INTER_AREA)
    except ImportError:
        return None


def fig_errors(dataset_dir, models=None, folds=None, log=print):
    """Fig. 4: misclassified test images of the baseline CNN (left) and of GCNet (right), true / predicted labels;
    a red frame marks an image the other model classifies correctly."""
    found = find_models(dataset_dir, None, folds, need=("test.json",))
    gc = pick_gcnet({m: v for m, v in found.items() if not models or m in models}) or pick_gcnet(found)
    missing = [n for n, m in (("the baseline 'cnn'", BASELINE if BASELINE in found else None),
                              ("a GCNet model (gcnet_*)", gc)) if m is None]
    if missing:
        raise Skip("errors figure needs test.json of both models; missing: %s" % " and ".join(missing))
    common = sorted(set(found[BASELINE]) & set(found[gc]))
    if not common:
        raise Skip("cnn and %s have no tested fold in common" % gc)
    names = class_names_for(dataset_dir)
    cnn_errs, n_cnn = _test_errors(dataset_dir, BASELINE, {k: found[BASELINE][k] for k in common}, log)
    gc_errs, n_gc = _test_errors(dataset_dir, gc, {k: found[gc][k] for k in common}, log)
    cnn_set = set((k, i) for k, i, *_ in cnn_errs)
    gc_set = set((k, i) for k, i, *_ in gc_errs)
    fig = _new_figure("errors")
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
            _message_axis(axes[0], "no errors")
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
            ax.set_title("T: %s\nP: %s" % (_label_name(names, t), _label_name(names, p)), fontsize=7)
        sf.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86, wspace=0.1, hspace=0.45)
    fig.text(0.5, 0.003, "%s, folds %s. T = true, P = predicted; red frame = the other model is right." % (
        Path(dataset_dir).name, ",".join(map(str, common))), ha="center", va="bottom", fontsize=8)
    return _save(fig, Path(dataset_dir) / "figures", "fig4_errors")


# ================================================================================================ all
FIGURE_FUNCS = {"curves": fig_curves, "confusion": fig_confusion, "tsne": fig_tsne, "filters": fig_filters,
                "generation": fig_generation, "errors": fig_errors}


def run_figures(dataset_dir, log=print, only=None, models=None, folds=None, per_fold=False, strict=False):
    """Like make_all_figures; returns (written files, {kind: skip reason}, {kind: error})."""
    files, skipped, failed = [], {}, {}
    kinds = list(only) if only else list(FIGURES)
    unknown = [k for k in kinds if k not in FIGURE_FUNCS]
    if unknown:
        raise ValueError("unknown figure(s) %s; choose from %s" % (", ".join(unknown), ", ".join(FIGURES)))
    if not Path(dataset_dir).is_dir():
        log("figures: results folder %s does not exist; nothing to draw" % dataset_dir)
        return files, {k: "no results folder %s" % dataset_dir for k in kinds}, failed
    models = list(models) if models else None
    folds = sorted(set(int(f) for f in folds)) if folds is not None else None
    for kind in kinds:
        kw = dict(models=models, folds=folds, log=log)
        if kind == "curves":
            kw["per_fold"] = per_fold
        try:
            new = FIGURE_FUNCS[kind](dataset_dir, **kw)
        except Skip as e:
            log("figures: %s skipped: %s" % (kind, e))
            skipped[kind] = str(e)
            continue
        except Exception as e:                              # noqa: BLE001 - one broken figure must not stop the rest
            if strict:
                raise
            log("figures: %s FAILED: %s: %s" % (kind, type(e).__name__, e))
            failed[kind] = "%s: %s" % (type(e).__name__, e)
            continue
        for f in new:
            log("figures: wrote %s" % f)
        files += new
    return files, skipped, failed


def make_all_figures(dataset_dir, log=print, only=None, models=None, folds=None, per_fold=False, strict=False):
    """Every figure of a results folder (``<out>/<dataset>``) into ``<dataset_dir>/figures/``; returns the written
    files.  A figure whose inputs are missing is skipped with a message.  An unexpected error in one figure is
    reported and the others are still made (``strict=True`` re-raises it)."""
    return run_figures(dataset_dir, log, only, models, folds, per_fold, strict)[0]
