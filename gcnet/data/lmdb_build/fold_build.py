"""Fold stage: fold K's train, test and pretraining LMDBs, test_index.json and manifest.json; the shared WebFace
pretraining LMDB.  An LMDB whose inputs are unchanged and which is whole is kept."""
import json
import os
from typing import Dict, List, Optional

import numpy as np

from gcnet.data import align as A
from gcnet.data.folds import fold_subjects
from gcnet.data.lmdb_build.augment import SIZE, augment_pair, crop, pair
from gcnet.data.lmdb_build.manifest import per_class
from gcnet.data.lmdb_build.store import lmdb_problem, rm, write_lmdb
from gcnet.data.images import iter_gray_frames
from gcnet.data.records import Sample, natural_key
from gcnet.layout import LmdbLayout
from gcnet.util import write_json


def _sort_key(s: Sample):
    return (natural_key(s.subject), natural_key(s.sequence), s.frame_index, s.frame)


def _old_fold_manifest(lay: LmdbLayout, k: int, data_hash: str) -> dict:
    """The fold's previous manifest when it was built from the same data, else {}."""
    try:
        with open(lay.fold_manifest(k)) as f:
            old_fm = json.load(f)
        if old_fm.get("data_hash") == data_hash:
            return old_fm
    except (OSError, ValueError):
        pass
    return {}


def _train_lmdb(lay: LmdbLayout, k: int, train: List[Sample], canvases, augment_copies: int, seed: int, in_hash: str,
                old_sig: dict, say) -> int:
    """Each training sample once as aligned plus `augment_copies` augmented copies (the same draw on X and X_r),
    shuffled -> number of entries."""
    rng = np.random.RandomState([seed, k, 1])
    order = [(i, c) for i in range(len(train)) for c in range(1 + augment_copies)]
    perm = rng.permutation(len(order))

    def train_items():
        for j in perm:
            i, c = order[j]
            s = train[i]
            cx, cr = canvases[s.frame], canvases[s.reference]
            if c == 0:
                yield pair(crop(cx), crop(cr)), s.label
            else:
                x, r = augment_pair(cx, cr, rng)
                yield pair(x, r), s.label
    if old_sig.get("inputs_hash") == in_hash and old_sig.get("n_train") == len(order) \
            and not lmdb_problem(str(lay.split(k, "train")), len(order)):
        say("  fold %d train: unchanged, kept" % k)
        return len(order)
    return write_lmdb(str(lay.split(k, "train")), train_items(), len(order), "fold %d train" % k, say)


def _test_lmdb(lay: LmdbLayout, k: int, test: List[Sample], canvases, old_sig: dict, say) -> int:
    """Fold K's samples, no augmentation, in (subject, sequence, frame index) order, and test_index.json."""
    if old_sig.get("n_test") == len(test) and not lmdb_problem(str(lay.split(k, "test")), len(test)):
        n_test = len(test)
        say("  fold %d test: unchanged, kept" % k)
    else:
        n_test = write_lmdb(str(lay.split(k, "test")),
                            ((pair(crop(canvases[s.frame]), crop(canvases[s.reference])), s.label) for s in test),
                            len(test), "fold %d test" % k, say)
    write_json(lay.test_index(k),
               [{"frame": s.frame, "reference": s.reference, "label": s.label, "subject": s.subject,
                 "sequence": s.sequence, "frame_index": s.frame_index} for s in test])
    return n_test


def _pretrain_lmdb(lay: LmdbLayout, k: int, res, foldmap, canvases, crops, seed: int, old_sig: dict, say):
    """Datum [X, X] of every aligned frame of the training subjects' sequences, label = the subject's index among
    the training subjects (sorted), shuffled -> (entries, identities)."""
    pdir = str(lay.split(k, "pretrain"))
    train_subjects = [s for s in sorted(foldmap, key=natural_key) if foldmap[s] != k]
    sid = {s: i for i, s in enumerate(train_subjects)}
    pitems = []
    for q in res.sequences:
        if q.subject in sid:
            pitems += [(f, sid[q.subject]) for f in q.frames if f in crops or f in canvases]
    pitems = sorted(set(pitems), key=lambda t: (natural_key(t[0]), t[1]))
    prng = np.random.RandomState([seed, k, 2])
    pitems = [pitems[j] for j in prng.permutation(len(pitems))]

    def pre_items():
        for f, lab in pitems:
            x = crops[f] if f in crops else crop(canvases[f])
            yield pair(x, x), lab
    if (old_sig.get("n_pretrain") == len(pitems) and old_sig.get("pretrain_source") == "training folds"
            and not os.path.islink(pdir) and not lmdb_problem(pdir, len(pitems))):
        n_pre = len(pitems)
        say("  fold %d pretrain: unchanged, kept" % k)
    else:
        n_pre = write_lmdb(pdir, pre_items(), len(pitems), "fold %d pretrain" % k, say)
    return n_pre, len(train_subjects)


def build_fold(lay: LmdbLayout, k: int, *, dataset: str, spec, res, usable: List[Sample], foldmap: Dict[str, int],
               canvases, crops, pre_info: Optional[dict], augment_copies: int, seed: int, data_hash: str,
               in_hash: str, say) -> dict:
    """Build fold K (its manifest.json written last) -> that manifest."""
    class_names = list(spec.class_names)
    os.makedirs(lay.fold(k), exist_ok=True)
    old_sig = _old_fold_manifest(lay, k, data_hash)
    train = sorted((s for s in usable if foldmap[s.subject] != k), key=_sort_key)
    test = sorted((s for s in usable if foldmap[s.subject] == k), key=_sort_key)
    say("[build_lmdb] fold %d: %d train samples (x%d with augmentation), %d test samples"
        % (k, len(train), 1 + augment_copies, len(test)))
    if os.path.exists(lay.fold_manifest(k)):
        os.remove(lay.fold_manifest(k))
    n_train = _train_lmdb(lay, k, train, canvases, augment_copies, seed, in_hash, old_sig, say)
    n_test = _test_lmdb(lay, k, test, canvases, old_sig, say)
    if pre_info is not None:
        pdir = lay.split(k, "pretrain")
        rm(str(pdir))
        os.symlink(os.path.relpath(lay.webface, lay.fold(k)), pdir)
        n_pre, n_ids = pre_info["n"], pre_info["n_identities"]
    else:
        n_pre, n_ids = _pretrain_lmdb(lay, k, res, foldmap, canvases, crops, seed, old_sig, say)
    info = {"fold": k, "dataset": dataset, "class_names": class_names, "neutral_label": spec.neutral_label,
            "n_classes": len(class_names), "n_train": n_train, "n_train_unique": len(train),
            "augment_copies": augment_copies, "n_test": n_test, "n_pretrain": n_pre, "n_identities": n_ids,
            "pretrain_source": "webface" if pre_info else "training folds",
            "train_per_class": per_class(train, class_names), "test_per_class": per_class(test, class_names),
            "test_subjects": fold_subjects(foldmap, k),
            "paths": {"train": lay.relative(lay.split(k, "train")), "test": lay.relative(lay.split(k, "test")),
                      "pretrain": lay.relative(lay.split(k, "pretrain")),
                      "test_index": lay.relative(lay.test_index(k))},
            "inputs_hash": in_hash, "data_hash": data_hash}
    write_json(lay.fold_manifest(k), info)
    return info


WEBFACE_SHUFFLE_SEED = 0     # the shared pretraining LMDB's order: fixed, so that every --seed shares the pretraining


def build_webface(lay: LmdbLayout, pre, pre_hash: str, say) -> dict:
    """Shared pretraining LMDB of WebFace faces, [X, X], label = identity index; rebuilt only when its inputs change.
    Its order does not depend on --seed (WEBFACE_SHUFFLE_SEED): the pretraining is shared by every run."""
    path, meta_path = str(lay.webface), str(lay.webface_meta)
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            why = lmdb_problem(path, meta.get("n")) if meta.get("hash") == pre_hash else "inputs changed"
            if why and why != "inputs changed":
                say("[build_lmdb] damaged LMDB %s: %s: rebuilding it" % (path, why))
            if not why:
                say("[build_lmdb] pretraining LMDB %s is up to date" % path)
                meta["skipped"] = [tuple(t) for t in meta.get("skipped", [])]
                return meta
        except (OSError, ValueError):
            pass
    n_ids = max(s.label for s in pre.samples) + 1
    rng = np.random.RandomState([WEBFACE_SHUFFLE_SEED, 7])
    samples = [pre.samples[j] for j in rng.permutation(len(pre.samples))]
    skipped = list(pre.skipped)

    def items():
        # grouped reading is impossible in shuffled order; WebFace images are single files anyway
        for s in samples:
            for f, gray, why in iter_gray_frames([s.frame]):
                out = None
                if gray is not None:
                    out, why = A.align_frame(gray, s.landmarks, SIZE, 0)
                if out is None:
                    skipped.append((f, why))
                    continue
                yield pair(out, out), s.label
    if os.path.exists(meta_path):
        os.remove(meta_path)
    n = write_lmdb(path, items(), len(samples), "pretrain (WebFace)", say)
    meta = {"hash": pre_hash, "n": n, "n_identities": n_ids, "path": lay.relative(lay.webface),
            "skipped": [list(t) for t in skipped], "notes": pre.notes}
    write_json(meta_path, meta)
    meta["skipped"] = skipped
    return meta
