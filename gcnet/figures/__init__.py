"""Figures of a results folder (section 4.4, Figures 4-7): a registry, figure name -> function, one module each.

Every figure function takes the ResultsLayout (which names the dataset) and models, folds, log; it writes PNG + PDF
into layout.figures_dir and returns the files, or raises Skip naming a missing input (no GCNet trained, no test
LMDB, pycaffe not importable, ...).  GCNet figures use the first trained of results.gcnets_by_preference();
single-fold figures (filters, generation) the lowest fold asked for.
"""
from gcnet.figures import confusion, curves, errors, filters, generation, mechanism, tsne
from gcnet.figures.results import Skip
from gcnet.layout import ResultsLayout

# the registry, in the order run_figures draws them
FIGURE_FUNCS = {"curves": curves.fig_curves, "confusion": confusion.fig_confusion, "tsne": tsne.fig_tsne,
                "filters": filters.fig_filters, "generation": generation.fig_generation, "errors": errors.fig_errors,
                "mechanism": mechanism.fig_mechanism}
FIGURES = tuple(FIGURE_FUNCS)


def run_figures(dataset_dir, log=print, only=None, models=None, folds=None, per_fold=False, strict=False,
                dataset=None):
    """Like make_all_figures; returns (written files, {kind: skip reason}, {kind: error})."""
    files, skipped, failed = [], {}, {}
    kinds = list(only) if only else list(FIGURES)
    unknown = [k for k in kinds if k not in FIGURE_FUNCS]
    if unknown:
        raise ValueError("unknown figure(s) %s; choose from %s" % (", ".join(unknown), ", ".join(FIGURES)))
    layout = ResultsLayout.at(dataset_dir, dataset)
    if not layout.root.is_dir():
        log("figures: results folder %s does not exist; nothing to draw" % dataset_dir)
        return files, {k: "no results folder %s" % dataset_dir for k in kinds}, failed
    models = list(models) if models else None
    folds = sorted(set(int(f) for f in folds)) if folds is not None else None
    for kind in kinds:
        kw = dict(models=models, folds=folds, log=log)
        if kind == "curves":
            kw["per_fold"] = per_fold
        try:
            new = FIGURE_FUNCS[kind](layout, **kw)
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


def make_all_figures(dataset_dir, log=print, only=None, models=None, folds=None, per_fold=False, strict=False,
                     dataset=None):
    """Every figure of a results folder (`<out>/<dataset>`; dataset: from its summary or meta.json when not given)
    into its figures/; returns the written files.  A figure whose inputs are missing is skipped with a message; an
    unexpected error in one figure is reported and the others are still made (strict=True re-raises it)."""
    return run_figures(dataset_dir, log, only, models, folds, per_fold, strict, dataset)[0]
