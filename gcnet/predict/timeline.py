"""tools/predict.py --plot: the class probabilities of each video over time (one line per class), the argmax class
as a band below them (grey where a frame has no prediction), and, when a reference was given, the same for the
prediction with the given reference."""
import os
from typing import List

import numpy as np

from gcnet.figures.plot import DPI, class_colors, message_axis


def _series(records):
    """(x values, x label) of one video's records: times in seconds, or frame indices when a time is unknown."""
    times = [r.get("time") for r in records]
    use_time = all(t is not None for t in times)
    x = np.array(times if use_time else [r.get("frame", i) for i, r in enumerate(records)], float)
    return x, "time (s)" if use_time else "frame"


def _probs(records, names, key):
    """(T, C) probabilities of the records (of r[key] when key is given), NaN rows where there is no prediction."""
    out = np.full((len(records), len(names)), np.nan)
    for i, r in enumerate(records):
        src = r.get(key) if key else r
        if src and "probs" in src:
            out[i] = [src["probs"][n] for n in names]
    return out


def _panel(fig, cell, x, xlabel, probs, names, colors, title):
    from matplotlib.colors import ListedColormap
    grid = cell.subgridspec(2, 1, height_ratios=[6, 1], hspace=0.08)
    ax = fig.add_subplot(grid[0, 0])
    for c, n in enumerate(names):
        ax.plot(x, probs[:, c], color=colors[c], lw=1.5, label=n, marker="." if len(x) < 60 else None)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    band = fig.add_subplot(grid[1, 0], sharex=ax)
    top = np.where(np.isnan(probs).any(1), len(names), np.nan_to_num(probs).argmax(1))
    # each frame's band cell spans to the next frame (the last one by the median step)
    step = np.median(np.diff(x)) if len(x) > 1 else 1.0
    edges = np.concatenate([x, [x[-1] + step]])
    cmap = ListedColormap(list(colors[:len(names)]) + [(0.8, 0.8, 0.8, 1.0)])
    band.pcolormesh(edges, [0, 1], top[None].astype(float), cmap=cmap, vmin=-0.5, vmax=len(names) + 0.5)
    band.set_yticks([])
    band.set_ylabel("argmax", rotation=0, ha="right", va="center", fontsize=8)
    band.set_xlabel(xlabel)
    ax.tick_params(labelbottom=False)
    return ax


def plot_timeline(records: List[dict], videos: List[str], names: List[str], path: str) -> str:
    """Write the timeline figure of `videos` (their records, in order) to `path` (format from its extension);
    returns the path.  OSError when it cannot be written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    colors = class_colors(len(names))
    panels = []
    for v in videos:
        recs = [r for r in records if (r.get("video") or r["file"]) == v and "frame" in r]
        given = next((r["given_reference"] for r in recs if "with_reference" in r), None)
        panels.append((v, recs, None, " with the generated reference" if given else ""))
        if given:
            panels.append((v, recs, "with_reference", " with the reference %s" % os.path.basename(str(given))))
    fig = Figure(figsize=(11.0, 0.6 + 3.0 * len(panels)), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(panels), 1, hspace=0.35)
    first = None
    for i, (v, recs, key, what) in enumerate(panels):
        title = "%s%s: %d frames" % (os.path.basename(v), what, len(recs))
        if not recs:
            message_axis(fig.add_subplot(grid[i, 0]), "%s: no frame could be read" % os.path.basename(v))
            continue
        x, xlabel = _series(recs)
        ax = _panel(fig, grid[i, 0], x, xlabel, _probs(recs, names, key), names, colors, title)
        first = first or ax
    if first is not None:
        first.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.86, top=1 - 0.3 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ".%s.tmp%s" % (os.path.basename(path), os.path.splitext(path)[1]))
    fig.savefig(tmp, dpi=DPI)
    os.replace(tmp, path)
    return path
