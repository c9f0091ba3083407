"""Matplotlib helpers shared by the figures: fixed figure sizes, PNG + PDF saving, colours, messages."""
import os
from pathlib import Path

DPI = 100
# figure sizes in inches (fixed per kind, so the PNG of a figure is always FIG_SIZES[kind] * DPI pixels)
FIG_SIZES = {
    "curves": (16.0, 8.0),
    "confusion": (13.0, 6.0),
    "tsne": (15.0, 5.4),
    "filters": (17.0, 4.6),
    "generation": (7.5, 12.0),
    "errors": (14.0, 8.0),
    "mechanism": (14.0, 6.0),
}


def new_figure(kind):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=FIG_SIZES[kind], dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig, out_dir, name):
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


def class_colors(n):
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def message_axis(ax, text):
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, color="0.35",
            transform=ax.transAxes)
