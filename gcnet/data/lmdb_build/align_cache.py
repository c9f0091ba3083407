"""Alignment stage: every needed frame aligned once (5-point similarity) onto a canvas, cached in align_cache.npz.

The canvas is 66 + 2*CANVAS_MARGIN pixels; its centre 66x66 window is the aligned face, and augmentation re-samples
the canvas, so rotated/scaled copies have real image content at their borders.  The cache is keyed by frame, file
size+mtime and landmark file, and reused by later builds.
"""
import hashlib
import json
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np

from gcnet.data import align as A
from gcnet.data.lmdb_build.augment import CANVAS_MARGIN, SIZE, crop
from gcnet.data.lmdb_build.store import Progress
from gcnet.data.images import iter_gray_frames, split_frame
from gcnet.data.records import Sample, count_reasons, natural_key
from gcnet.layout import LmdbLayout
from gcnet.util import DataError, cleanup_on_error


# what the cached alignments were checked for: a cache made before a check was added is redone when a build runs
# (the LMDB manifests' key, align_version, is not changed by it: finished builds are not rebuilt for a check)
CACHE_CHECKS = "+points-fit-image"


def file_stat(path: Optional[str]):
    """[size, mtime_ns] of a frame's file (a video for `video#index`), None when absent."""
    if not path:
        return None
    try:
        st = os.stat(split_frame(path)[0])
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


def align_version() -> str:
    """Hash of the alignment template and canvas margin: a change invalidates the cache."""
    return hashlib.sha1(A.TEMPLATE_66.tobytes() + b"m%d" % CANVAS_MARGIN).hexdigest()[:12]


def write_npz(path: str, **arrays) -> None:
    """np.savez's file (read by np.load), with the zip closed on every path: a failed write (a full disk) raises
    here, instead of np.savez's half-open zip complaining again when it is garbage-collected."""
    import zipfile
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, a in arrays.items():
            with z.open(name + ".npy", "w", force_zip64=True) as fid:
                np.lib.format.write_array(fid, np.asanyarray(a), allow_pickle=False)


class AlignCache:
    """Aligned canvases (sample frames) and 66x66 crops (other frames), keyed by frame + file stats + landmarks."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.canvas: Dict[str, np.ndarray] = {}
        self.crops: Dict[str, np.ndarray] = {}
        self.failed: Dict[str, str] = {}
        self.dirty = False
        self.version = align_version() + CACHE_CHECKS
        if path and os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["version"]) == self.version:
                        self.canvas = dict(zip(z["canvas_keys"].tolist(), z["canvas"]))
                        self.crops = dict(zip(z["crop_keys"].tolist(), z["crops"]))
                        self.failed = dict(zip(z["failed_keys"].tolist(), z["failed_reasons"].tolist()))
            except Exception:       # unreadable cache: rebuild it
                self.canvas, self.crops, self.failed = {}, {}, {}

    def key(self, frame: str, lm: Optional[str]) -> str:
        return json.dumps([frame, file_stat(frame), lm, file_stat(lm)])

    def save(self):
        if not self.path or not self.dirty:
            return
        m = SIZE + 2 * CANVAS_MARGIN
        ck = sorted(self.canvas)
        rk = sorted(self.crops)
        fk = sorted(self.failed)
        tmp = self.path + ".partial.npz"
        with cleanup_on_error(self.path, tmp):
            write_npz(tmp, version=np.array(self.version),
                      canvas_keys=np.array(ck, dtype=str).reshape(-1),
                      canvas=np.stack([self.canvas[k] for k in ck]) if ck else np.zeros((0, m, m), np.uint8),
                      crop_keys=np.array(rk, dtype=str).reshape(-1),
                      crops=np.stack([self.crops[k] for k in rk]) if rk else np.zeros((0, SIZE, SIZE), np.uint8),
                      failed_keys=np.array(fk, dtype=str).reshape(-1),
                      failed_reasons=np.array([self.failed[k] for k in fk], dtype=str).reshape(-1))
            os.replace(tmp, self.path)
        self.dirty = False

    def run(self, need_canvas: Dict[str, Optional[str]], need_crop: Dict[str, Optional[str]],
            progress=None) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], Dict[str, str]]:
        """Align the frames (frame -> landmark file) -> (canvases, crops, failures {frame: reason})."""
        need_crop = {f: l for f, l in need_crop.items() if f not in need_canvas}
        canvases, crops, failed, todo = {}, {}, {}, []
        keys = {}
        for f, l in list(need_canvas.items()) + list(need_crop.items()):
            k = keys[f] = self.key(f, l)
            if k in self.failed:
                failed[f] = self.failed[k]
            elif f in need_canvas and k in self.canvas:
                canvases[f] = self.canvas[k]
            elif f in need_crop and (k in self.crops or k in self.canvas):
                crops[f] = self.crops[k] if k in self.crops else crop(self.canvas[k])
            else:
                todo.append(f)
        if progress and len(todo) < len(keys):
            progress("  aligned frames reused from the cache: %d" % (len(keys) - len(todo)))
        todo.sort(key=lambda f: (split_frame(f)[0], split_frame(f)[1] or 0))   # videos read sequentially
        if todo:
            pg = Progress(len(todo), "aligning frames", progress)
            for f, gray, why in iter_gray_frames(todo):
                k = keys[f]
                lm = need_canvas.get(f) if f in need_canvas else need_crop.get(f)
                if gray is not None:
                    out, why = A.align_frame(gray, lm, SIZE, CANVAS_MARGIN)
                if gray is None or out is None:
                    failed[f] = self.failed[k] = why
                elif f in need_canvas:
                    canvases[f] = self.canvas[k] = out
                else:
                    crops[f] = self.crops[k] = np.ascontiguousarray(crop(out))
                self.dirty = True
                pg.step()
            pg.done()
            if A.detector().error and progress:
                progress("  note: " + A.detector().error)
        used = set(keys.values())
        for d in (self.canvas, self.crops, self.failed):
            for k in [k for k in d if k not in used]:
                del d[k]
                self.dirty = True
        self.save()
        return canvases, crops, failed


def align_frames(res, pre, lay: LmdbLayout, say) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray],
                                                        Dict[str, str], List[str]]:
    """Align the samples' frames and references (canvases) and, without a WebFace root, every frame of the
    sequences (crops, for the pretraining LMDB) -> (canvases, crops, failures, detector fallbacks)."""
    need_canvas: Dict[str, Optional[str]] = {}
    for s in res.samples:
        need_canvas[s.frame] = s.landmarks
        need_canvas[s.reference] = s.ref_landmarks
    need_crop: Dict[str, Optional[str]] = {}
    if pre is None:
        for q in res.sequences:
            need_crop.update(zip(q.frames, q.landmarks))
    say("[build_lmdb] %d samples in %d sequences; aligning %d frames"
        % (len(res.samples), len({s.sequence for s in res.samples}), len(set(need_canvas) | set(need_crop))))
    cache = AlignCache(str(lay.align_cache))
    fallbacks = [f for f, lm in list(need_canvas.items()) + list(need_crop.items()) if lm is None] \
        if res.has_landmarks else []
    if pre is not None and pre.has_landmarks:
        fallbacks += [s.frame for s in pre.samples if s.landmarks is None]
    fallbacks = sorted(set(fallbacks), key=natural_key)
    canvases, crops, failed = cache.run(need_canvas, need_crop, say)
    return canvases, crops, failed, fallbacks


def drop_unaligned(res, failed: Dict[str, str], data_root: str) -> List[Sample]:
    """The samples whose frame and reference aligned; one report entry per failed file (res.skip keeps the first
    reason): a bad reference costs its sequence's samples."""
    n_ref = Counter(s.reference for s in res.samples)
    for f in sorted(set(n_ref) & set(failed), key=natural_key):
        res.skip(f, "no neutral frame: reference %s" % failed[f], n_ref[f])
    usable = []
    for s in res.samples:
        if s.reference not in failed and s.frame in failed:
            res.skip(s.frame, failed[s.frame], 1)
        elif s.reference not in failed:
            usable.append(s)
    for f in sorted(failed, key=natural_key):
        res.skip(f, failed[f])            # frames only the pretraining LMDB uses: no sample lost
    if not usable:
        raise DataError("no sample of %s could be aligned (skipped: %s)"
                        % (data_root, json.dumps(count_reasons(res.skipped))))
    return usable
