"""build_lmdbs: the stages of a build (request, inputs, cache key, alignment, folds, reports) in order."""
import json
import os
import time
from typing import Callable, List, Optional, Sequence

from gcnet.config import DATASETS, DEFAULT_AUGMENT
from gcnet.data import align as A
from gcnet.data.detect import read_dataset
from gcnet.data.folds import assign_folds, write_folds
from gcnet.data.lmdb_build.align_cache import align_frames, drop_unaligned
from gcnet.data.lmdb_build.fold_build import build_fold, build_webface
from gcnet.data.lmdb_build.manifest import build_options, cached_manifest, input_hashes, write_reports
from gcnet.data.lmdb_build.store import remove_partials
from gcnet.data.records import check_writable, count_reasons
from gcnet.layout import LmdbLayout
from gcnet.util import DataError, fmt_duration


def _fold_list(dataset: str, n_folds: int, folds: Optional[Sequence[int]], augment_copies: int) -> List[int]:
    """The folds to build, sorted; DataError for an unknown dataset, negative copies or a fold out of range."""
    if dataset not in DATASETS:
        raise DataError("unknown dataset '%s' (known: %s)" % (dataset, ", ".join(DATASETS)))
    if augment_copies < 0:
        raise DataError("augment copies must be >= 0, got %d" % augment_copies)
    fold_list = sorted(set(range(n_folds) if folds is None else folds))
    bad = [k for k in fold_list if not 0 <= k < n_folds]
    if bad:
        raise DataError("fold(s) %s outside 0..%d" % (bad, n_folds - 1))
    return fold_list


def _prepare_out_dir(lay: LmdbLayout, force: bool, say) -> Optional[DataError]:
    """Check the folder is writable and clear interrupted leftovers -> None, or the DataError of an unwritable
    folder that holds a finished build (which may still be up to date)."""
    try:
        check_writable(str(lay.root))
    except DataError as e:
        if force or not os.path.isfile(lay.manifest):
            raise
        return e
    remove_partials(lay, say)
    return None


def _read_inputs(dataset: str, data_root: str, spec, landmarks_root, mmi_peaks, pretrain_root, pretrain_landmarks,
                 say):
    """-> (the data set's ReadResult, the WebFace ReadResult or None, the peaks CSV used or None)."""
    say("[build_lmdb] reading %s (%s)" % (data_root, dataset))
    opts = {"peaks_csv": os.path.abspath(mmi_peaks)} if (mmi_peaks and spec.reader == "mmi") else {}
    res = read_dataset(dataset, data_root, landmarks_root=landmarks_root, **opts)
    if not res.samples:
        raise DataError("no usable labelled samples in %s (skipped: %s)"
                        % (data_root, json.dumps(count_reasons(res.skipped)) if res.skipped else "nothing found"))
    pre = None
    if pretrain_root:
        say("[build_lmdb] reading pretraining faces %s" % pretrain_root)
        pre = read_dataset("webface", pretrain_root, landmarks_root=pretrain_landmarks)
        if not pre.samples:
            raise DataError("no images in the pretraining root %s" % pretrain_root)
    return res, pre, opts.get("peaks_csv")


def build_lmdbs(dataset: str, data_root: str, out_dir: str, n_folds: int = 10, folds: Optional[Sequence[int]] = None,
                augment_copies: int = DEFAULT_AUGMENT, seed: int = 0, landmarks_root: Optional[str] = None,
                pretrain_root: Optional[str] = None, mmi_peaks: Optional[str] = None,
                progress: Optional[Callable[[str], None]] = print, force: bool = False,
                pretrain_landmarks: Optional[str] = None) -> dict:
    """Build the per-fold paired LMDBs of `dataset` from `data_root` under `out_dir`; returns the manifest.

    Skipped (returns the existing manifest, with "cached": True) when out_dir/manifest.json records the same
    inputs (source files with sizes+mtimes, options) and its LMDBs exist."""
    t_start = time.time()
    say = progress or (lambda s: None)
    fold_list = _fold_list(dataset, n_folds, folds, augment_copies)
    spec = DATASETS[dataset]
    lay = LmdbLayout(os.path.abspath(out_dir))
    data_root = os.path.abspath(data_root)
    unwritable = _prepare_out_dir(lay, force, say)
    res, pre, peaks_csv = _read_inputs(dataset, data_root, spec, landmarks_root, mmi_peaks, pretrain_root,
                                       pretrain_landmarks, say)
    options = build_options(dataset, data_root, n_folds, fold_list, augment_copies, seed, landmarks_root,
                            pretrain_root, pretrain_landmarks, peaks_csv)
    hashes = data_hash, _, in_hash, pre_hash = input_hashes(res, pre, options, augment_copies, fold_list)

    repaired: List[str] = []
    if not force and os.path.isfile(lay.manifest):
        old, repaired = cached_manifest(lay, in_hash, fold_list, say)
        if old is not None:
            return old
    if unwritable is not None:
        raise DataError("%s; its LMDBs are out of date or damaged and cannot be rebuilt there" % unwritable)
    if os.path.exists(lay.manifest):
        os.remove(lay.manifest)         # an interrupted rebuild must not look complete

    canvases, crops, failed, fallbacks = align_frames(res, pre, lay, say)
    notes = list(res.notes) + ["rebuilt damaged LMDB " + r for r in repaired]
    if fallbacks:
        notes.append("%d frame(s) without a landmark file were located by the face detector (build_report.json: "
                     "detector_fallbacks)" % len(fallbacks))
    if A.detector().error:
        notes.append(A.detector().error)
    usable = drop_unaligned(res, failed, data_root)

    foldmap = assign_folds([s.subject for s in usable], n_folds)
    write_folds(str(lay.folds_json), foldmap, n_folds, dataset=dataset, data_root=data_root)
    pre_info = None
    if pre is not None:
        pre_info = build_webface(lay, pre, pre_hash, say)
        for f, why in pre_info.pop("skipped"):
            res.skip(f, why)
    fold_info = {}
    for k in fold_list:
        info = build_fold(lay, k, dataset=dataset, spec=spec, res=res, usable=usable, foldmap=foldmap,
                          canvases=canvases, crops=crops, pre_info=pre_info, augment_copies=augment_copies,
                          seed=seed, data_hash=data_hash, in_hash=in_hash, say=say)
        fold_info[str(k)] = {x: info[x] for x in info if x not in ("dataset", "class_names", "neutral_label",
                                                                   "n_classes", "inputs_hash", "data_hash")}

    manifest = write_reports(lay, dataset=dataset, data_root=data_root, spec=spec, res=res,
                             usable=usable, foldmap=foldmap, n_folds=n_folds, fold_list=fold_list, options=options,
                             hashes=hashes, fold_info=fold_info, pre_info=pre_info, fallbacks=fallbacks, notes=notes,
                             t_start=t_start)
    say("[build_lmdb] done in %s: %d samples, %d subjects, folds %s; skipped %s -> %s"
        % (fmt_duration(time.time() - t_start), len(usable), len(foldmap), ",".join(map(str, fold_list)),
           json.dumps(manifest["skipped_by_reason"]) if manifest["skipped_by_reason"] else "nothing", lay.root))
    manifest["cached"] = False
    return manifest
