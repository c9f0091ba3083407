"""Manifest stage: the build's options and input hashes (the cache key), the cache check, the reports written last.

The key: `data_hash` covers everything the test and pretraining LMDBs depend on (source files with size+mtime,
options); `inputs_hash` adds the train-only options (augment copies, folds built).
"""
import hashlib
import json
import os
import time
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from gcnet.data.lmdb_build.align_cache import align_version, file_stat
from gcnet.data.lmdb_build.augment import AUG_INTENSITY, AUG_ROTATION_DEG, AUG_SCALE, CANVAS_MARGIN
from gcnet.data.lmdb_build.store import lmdb_problem
from gcnet.data.images import split_frame
from gcnet.data.records import count_reasons, natural_key
from gcnet.layout import LmdbLayout
from gcnet.util import write_json

BUILD_VERSION = 1


def inputs_hash(files: Iterable[str], options: dict) -> Tuple[str, int]:
    """sha256 of the options and of each distinct source file with its stats -> (hex, number of files)."""
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    n = 0
    for f in sorted(set(split_frame(p)[0] for p in files if p)):
        h.update(("%s\t%s\n" % (f, file_stat(f))).encode())
        n += 1
    return h.hexdigest(), n


def build_options(dataset: str, data_root: str, n_folds: int, fold_list: List[int], augment_copies: int,
                  seed: int, landmarks_root: Optional[str], pretrain_root: Optional[str],
                  pretrain_landmarks: Optional[str], peaks_csv: Optional[str]) -> dict:
    """The options recorded in manifest.json and hashed into the cache key."""
    return {"build_version": BUILD_VERSION, "align": align_version(), "dataset": dataset,
            "data_root": data_root, "n_folds": n_folds, "folds": fold_list, "augment_copies": augment_copies,
            "seed": seed, "landmarks_root": landmarks_root and os.path.abspath(landmarks_root),
            "pretrain_root": pretrain_root and os.path.abspath(pretrain_root),
            "pretrain_landmarks": pretrain_landmarks and os.path.abspath(pretrain_landmarks),
            "mmi_peaks": peaks_csv,
            "augmentation": {"scale": AUG_SCALE, "rotation_deg": AUG_ROTATION_DEG, "intensity": AUG_INTENSITY,
                             "canvas_margin": CANVAS_MARGIN}}


def input_hashes(res, pre, options: dict, augment_copies: int, fold_list: List[int]):
    """-> (data_hash, n_files, in_hash, pre_hash); pre_hash (the WebFace LMDB's key) None without WebFace."""
    files = list(res.sources)
    for s in res.samples:
        files += [s.frame, s.reference, s.landmarks, s.ref_landmarks]
    if pre is None:
        for q in res.sequences:
            files += q.frames + q.landmarks
    data_hash, n_files = inputs_hash(files, {k: v for k, v in options.items() if k not in ("augment_copies", "folds")})
    in_hash = hashlib.sha256(json.dumps([data_hash, augment_copies, fold_list]).encode()).hexdigest()
    pre_hash = None
    if pre is not None:
        pf = list(pre.sources)
        for s in pre.samples:
            pf += [s.frame, s.landmarks]
        # (not the --seed: the shared pretraining LMDB, and so the pretraining, stays the same across seeds)
        pre_hash, _ = inputs_hash(pf, {k: options[k] for k in ("build_version", "align", "pretrain_root",
                                                                "pretrain_landmarks")})
    return data_hash, n_files, in_hash, pre_hash


def cached_manifest(lay: LmdbLayout, in_hash: str, fold_list: Sequence[int], say) -> Tuple[Optional[dict], List[str]]:
    """(the old manifest with "cached": True, []) when it records `in_hash` and its LMDBs are whole; else (None,
    the damaged LMDBs as "fold_K/split: why")."""
    repaired: List[str] = []
    try:
        with open(lay.manifest) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if old and old.get("inputs", {}).get("hash") == in_hash:
        for k in fold_list:
            fi = (old.get("folds") or {}).get(str(k)) or {}
            for n in ("train", "test", "pretrain"):
                why = lmdb_problem(str(lay.split(k, n)), fi.get("n_" + n))
                if why:
                    repaired.append("%s: %s" % (lay.relative(lay.split(k, n)), why))
        if not repaired:
            say("[build_lmdb] %s is up to date (same inputs and options): nothing to do" % lay.root)
            old["cached"] = True
            return old, []
        for r in repaired:
            say("[build_lmdb] damaged LMDB %s: rebuilding it" % r)
    return None, repaired


def per_class(samples, class_names: Sequence[str]) -> Dict[str, int]:
    """{class name: number of samples}, in class order."""
    c = Counter(s.label for s in samples)
    return {class_names[i]: c.get(i, 0) for i in range(len(class_names))}


def write_reports(lay: LmdbLayout, *, dataset: str, data_root: str, spec, res, usable, foldmap,
                  n_folds: int, fold_list: List[int], options: dict, hashes: Tuple[str, int, str, Optional[str]],
                  fold_info: dict, pre_info: Optional[dict], fallbacks: List[str], notes: List[str],
                  t_start: float) -> dict:
    """Write build_report.json, then manifest.json (last: its presence marks a finished build) -> the manifest."""
    data_hash, n_files, in_hash, pre_hash = hashes
    class_names = list(spec.class_names)
    skipped = res.skipped
    by_reason, lost_by_reason = count_reasons(skipped), count_reasons(skipped, res.lost)
    write_json(lay.build_report,
               {"dataset": dataset, "data_root": data_root, "skipped_by_reason": by_reason,
                "samples_lost_by_reason": lost_by_reason, "n_samples_lost": sum(lost_by_reason.values()),
                "skipped": [[f, why, res.lost[f]] for f, why in skipped],
                "detector_fallbacks": fallbacks, "notes": notes})
    manifest = {
        "dataset": dataset, "class_names": class_names, "neutral_label": spec.neutral_label,
        "n_classes": len(class_names), "data_root": data_root, "layout": res.layout, "options": options,
        "inputs": {"hash": in_hash, "data_hash": data_hash, "n_files": n_files, "pretrain_hash": pre_hash},
        "n_samples": len(usable), "n_subjects": len(foldmap), "n_folds": n_folds, "folds_built": fold_list,
        "counts": {"per_class": per_class(usable, class_names),
                   "per_subject": {s: c for s, c in sorted(Counter(x.subject for x in usable).items(),
                                                           key=lambda t: natural_key(t[0]))},
                   "per_fold": {str(k): len([s for s in usable if foldmap[s.subject] == k]) for k in range(n_folds)}},
        "folds": fold_info, "pretrain": pre_info,
        "skipped_by_reason": by_reason, "n_skipped": len(skipped), "samples_lost_by_reason": lost_by_reason,
        "n_samples_lost": sum(lost_by_reason.values()), "n_detector_fallbacks": len(fallbacks), "notes": notes,
        "build_seconds": round(time.time() - t_start, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(lay.manifest, manifest)
    return manifest
