"""What the figures read from a results folder (a ResultsLayout): trained models, test sets, weights, JSON files;
which GCNet a figure shows (from the model facts of gcnet.config)."""
import os
from pathlib import Path

import numpy as np

from gcnet.caffe_io import WeightsError, read_caffemodel, read_lmdb
from gcnet.config import EXPRESSION_MODELS, has_contrastive, has_generator, has_reconstruction
from gcnet.inference import ModelError, import_caffe
from gcnet.layout import REPO
from gcnet.util import read_json

BASELINE = "cnn"


class Skip(Exception):
    """A figure cannot be made: the message names the missing input."""


def load_json(path):
    """The parsed JSON file; Skip naming it when it is missing or not JSON."""
    data = read_json(path)
    if data is None:
        raise Skip("%s is missing or not JSON" % path)
    return data


def gcnets_by_preference():
    """The GCNets (models with a generator), fullest first: S1R1, S0R1, S1R0, S0R0."""
    return sorted((m for m in EXPRESSION_MODELS if has_generator(m)),
                  key=lambda m: (not has_reconstruction(m), not has_contrastive(m)))


def pick_gcnet(found, reconstruction=False):
    """The first GCNet of gcnets_by_preference() with folds in `found` ({model: {fold: dir}}), or None;
    reconstruction=True: R1 models only."""
    for m in gcnets_by_preference():
        if found.get(m) and (has_reconstruction(m) or not reconstruction):
            return m
    return None


def pick_fold(fdirs, folds):
    """The lowest fold of `fdirs` among `folds` (any fold of fdirs when none of them is there)."""
    ks = sorted(fdirs)
    if folds:
        ks = [k for k in ks if k in folds] or ks
    return ks[0]


def label_name(names, i):
    return names[i] if 0 <= i < len(names) else str(i)


def read_weights(path):
    """{layer: [arrays]} of a .caffemodel; ModelError when pycaffe or the file cannot be read."""
    import_caffe()
    try:
        return read_caffemodel(str(path))
    except WeightsError as e:
        raise ModelError(str(e))


def test_lmdb_dir(layout, fold, meta=None):
    """The test LMDB of a fold: meta.json's test_lmdb/test_source when it exists (the results folder may have been
    moved), else the layout's."""
    cands = []
    for key in ("test_lmdb", "test_source"):
        if meta and meta.get(key):
            p = Path(meta[key])
            cands.append(p if p.is_absolute() else layout.root / p)
            cands.append(REPO / p)
    cands.append(layout.lmdb(fold, "test"))
    for c in cands:
        if (c / "data.mdb").exists() or (c.is_file() and c.name.endswith(".mdb")):
            return c
    return None


_TEST_CACHE = {}


def load_test_set(layout, fold, meta=None):
    """(images uint8 (N, 2, 66, 66) = [X, X_r], labels (N,)) of a fold's test LMDB, in Caffe's reading order."""
    path = test_lmdb_dir(layout, fold, meta)
    if path is None:
        raise Skip("no test LMDB for fold %d (expected %s)" % (fold, layout.lmdb(fold, "test")))
    try:
        import lmdb  # noqa: F401
    except ImportError:
        raise Skip("python package 'lmdb' is not installed (needed to read %s)" % path)
    key = (str(path.resolve()), os.path.getmtime(str(path / "data.mdb")) if path.is_dir() else 0)
    if key not in _TEST_CACHE:
        items = read_lmdb(str(path))
        if not items:
            _TEST_CACHE[key] = np.zeros((0, 2, 66, 66), np.uint8), np.zeros((0,), int)
        else:
            _TEST_CACHE[key] = (np.stack([a for _, a, _ in items]), np.asarray([l for _, _, l in items], int))
    return _TEST_CACHE[key]
