#!/usr/bin/env python3
"""Figures of a results folder: learning curves, confusion matrices and the paper's Figures 4-7.

usage: tools/figures.py RESULTS_DATASET_DIR [--only curves,confusion,tsne,filters,generation,errors]
                        [--model M[,M...]] [--fold K[,K...]] [--per-fold]

RESULTS_DATASET_DIR is <out>/<dataset> as written by tools/run_folds.sh (e.g. results/ck+).  PNG and PDF files go
to RESULTS_DATASET_DIR/figures/.  Figures whose inputs are missing are skipped with a message.  Exit status: 0 ok,
1 when a figure failed unexpectedly (or, with --only, when every requested figure was skipped), 2 bad usage or a
RESULTS_DATASET_DIR that is not a folder, 130 interrupted.
Run `source tools/env.sh` first: t-SNE features, filters and generation need pycaffe.
"""
import argparse
import os
import sys

import _repo  # noqa: F401  (the repository on sys.path)
os.environ.setdefault("GLOG_minloglevel", "2")           # keep Caffe's net-construction log out of the output

from gcnet.figures import FIGURES, run_figures  # noqa: E402
from gcnet.util import UsageError, parse_folds  # noqa: E402


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", help="results folder of one dataset, e.g. results/ck+")
    ap.add_argument("--only", help="comma-separated subset of: %s" % ",".join(FIGURES))
    ap.add_argument("--model", help="only these models (comma-separated; curves, confusion, filters, generation; "
                                    "t-SNE and errors always compare cnn with a GCNet)")
    ap.add_argument("--fold", help="only these folds, e.g. 0 or 0,3 or 0-4")
    ap.add_argument("--per-fold", action="store_true", help="one learning-curve figure per model and fold")
    a = ap.parse_args(argv)
    only = _list(a.only)
    bad = [k for k in only or [] if k not in FIGURES]
    if bad:
        ap.error("unknown figure(s) %s; choose from %s" % (", ".join(bad), ",".join(FIGURES)))
    try:
        folds = parse_folds(a.fold) if a.fold else None
    except UsageError:
        ap.error("--fold takes fold numbers such as 0 or 0,3 or 0-4, not %r" % a.fold)
    if not os.path.isdir(a.dataset_dir):
        print("figures: %s is not a folder (expected <out>/<dataset>, e.g. results/ck+)" % a.dataset_dir,
              file=sys.stderr)
        return 2
    files, skipped, failed = run_figures(a.dataset_dir, only=only, models=_list(a.model), folds=folds,
                                         per_fold=a.per_fold)
    print("figures: %d file(s) written to %s; %d skipped, %d failed" % (
        len(files), os.path.join(a.dataset_dir, "figures"), len(skipped), len(failed)))
    if failed or (only and not files):
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("figures: interrupted", file=sys.stderr)
        sys.exit(130)
