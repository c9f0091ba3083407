"""filters: `fig6_filters` (Fig. 6), first conv layer of En_1 and En_2, 100 random slices of the second deconv
layer of De_1r, De_2r, De_2i."""
import math
import numpy as np

from gcnet.figures.plot import message_axis, new_figure, save
from gcnet.figures.results import Skip, gcnets_by_preference, pick_fold, pick_gcnet, read_weights
from gcnet.inference import ModelError
from gcnet.layout import FINAL

N_DECONV_FILTERS = 100           # Fig. 6 (c)-(e): "100 filters randomly selected"


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


def fig_filters(layout, models=None, folds=None, log=print, seed=0):
    """Fig. 6: (a) En_1 / (b) En_2 first conv filters (32 of 5x5), (c)-(e) 100 random 3x3 slices of the second
    deconv layer of De_1r, De_2r, De_2i; from gcnet_s1r1 when trained, else the best available GCNet."""
    found = layout.trained_models(models, folds, need=(FINAL,))
    gc = pick_gcnet(found)
    if gc is None:
        raise Skip("no GCNet model (%s) with final.caffemodel under %s" % (", ".join(gcnets_by_preference()),
                                                                            layout.root))
    k = pick_fold(found[gc], folds)
    try:
        params = read_weights(found[gc][k] / FINAL)
    except ModelError as e:
        raise Skip(str(e))
    # De_2r / De_2i exist only in R1 models: take them from an R1 model if the chosen one has none
    r1 = pick_gcnet(found, reconstruction=True)
    r1_params, r1_src = params, gc
    if "de2r_deconv2" not in params and r1 is not None:
        r1_src = r1
        r1_params = read_weights(found[r1][pick_fold(found[r1], folds)] / FINAL)
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
    fig = new_figure("filters")
    axes = fig.subplots(1, 5)
    for ax, (ttl, img, note) in zip(axes, panels):
        if img is None:
            message_axis(ax, note)
        else:
            ax.imshow(img, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(ttl, fontsize=9)
    src_txt = gc if r1_src == gc else "%s; De$_{2,r}$, De$_{2,i}$ from %s" % (gc, r1_src)
    fig.suptitle("%s: learned filters of %s, fold %d (each filter min-max normalised)" % (
        layout.dataset, src_txt, k), fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.03, top=0.8, wspace=0.08)
    return save(fig, layout.figures_dir, "fig6_filters")
