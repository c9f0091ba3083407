"""Paired LMDBs per fold (+ pretraining LMDB), with manifest, atomic writes and a cache.

Layout under `out_dir` (see docs/ARCHITECTURE.md):
    folds.json  build_report.json  manifest.json  align_cache.npz
    fold_K/train        Datum [X, X_r] of the other folds' samples, each once as aligned plus `augment_copies`
                        augmented copies (same random scale/rotation/intensity on both channels), shuffled
    fold_K/test         fold K's samples, no augmentation, sorted by (subject, sequence, frame index)
    fold_K/test_index.json   [{frame, reference, label, subject, sequence, frame_index}] in LMDB order
    fold_K/pretrain     Datum [X, X] of every aligned frame of the training subjects' labelled sequences,
                        label = index of the subject among the training subjects (sorted); with a WebFace root:
                        a link to ../pretrain_webface (built once, label = identity index)
    fold_K/manifest.json     counts of this fold
Keys are "%08d" so Caffe's Data layer (which reads in key order) reads in write order.

Alignment: every needed frame is aligned once (5-point similarity, gcnet.data.align) onto a canvas of
66 + 2*CANVAS_MARGIN pixels whose centre 66x66 window is the aligned face; augmentation re-samples that canvas, so
rotated/scaled copies have real image content at their borders.  Aligned frames are cached in align_cache.npz
(keyed by frame, file size+mtime, landmark file) and reused by later builds.
"""
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from gcnet.config import DATASETS
from gcnet.data import align as A
from gcnet.data.detect import read_dataset
from gcnet.data.folds import assign_folds, fold_subjects, write_folds
from gcnet.data.records import (DataError, Sample, check_writable, count_reasons, iter_gray_frames, natural_key,
                                split_frame)

BUILD_VERSION = 1
SIZE = 66
CANVAS_MARGIN = 15                      # canvas 96x96: covers scale 0.9 x rotation 10 deg of a 66 crop
AUG_SCALE = (0.9, 1.1)                  # uniform
AUG_ROTATION_DEG = (-10.0, 10.0)        # uniform
AUG_INTENSITY = (0.8, 1.2)              # uniform multiplicative factor
DEFAULT_AUGMENT = 4
COMMIT_EVERY = 512


# ----------------------------------------------------------------------------------------------- Datum
def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_datum(data: np.ndarray, label: int) -> bytes:
    """Serialized caffe.proto Datum (channels, height, width, data, label), byte-identical to caffe_pb2's
    SerializeToString (fields in number order, `encoded` left at its default)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    c, h, w = data.shape
    raw = data.tobytes()
    return (b"\x08" + _varint(c) + b"\x10" + _varint(h) + b"\x18" + _varint(w)
            + b"\x22" + _varint(len(raw)) + raw + b"\x28" + _varint(int(label)))


def decode_datum(buf: bytes) -> Tuple[np.ndarray, int]:
    """Datum bytes -> (uint8 array (C,H,W), label).  Handles the fields encode_datum writes."""
    pos, vals, data = 0, {}, b""

    def rd():
        nonlocal pos
        shift = v = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
    while pos < len(buf):
        key = rd()
        field, wt = key >> 3, key & 7
        if wt == 0:
            vals[field] = rd()
        elif wt == 2:
            n = rd()
            if field == 4:
                data = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            pos += 4
        elif wt == 1:
            pos += 8
        else:
            raise ValueError("bad Datum wire type %d" % wt)
    c, h, w = vals.get(1, 0), vals.get(2, 0), vals.get(3, 0)
    label = vals.get(5, 0)
    if label >= 1 << 63:
        label -= 1 << 64
    return np.frombuffer(data, dtype=np.uint8).reshape(c, h, w), int(label)


def read_lmdb(path: str, limit: Optional[int] = None) -> List[Tuple[str, np.ndarray, int]]:
    """(key, array, label) of an LMDB in key order, all or the first `limit` (tests, figures, predict, BN stats)."""
    import itertools
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return [(k.decode(), *decode_datum(v)) for k, v in itertools.islice(txn.cursor(), limit)]
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------- progress
class Progress:
    """Progress lines with rate and ETA, at most every `every` seconds (and at the end)."""

    def __init__(self, total: int, what: str, out: Callable[[str], None], every: float = 5.0):
        self.total, self.what, self.out, self.every = total, what, out or (lambda s: None), every
        self.n, self.t0 = 0, time.time()
        self.last = self.t0

    def step(self, n: int = 1):
        self.n += n
        now = time.time()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / max(rate, 1e-9)
            self.out("  %s: %d/%d (%.0f/s, ETA %s)" % (self.what, self.n, self.total, rate, _hms(eta)))

    def done(self):
        dt = time.time() - self.t0
        self.out("  %s: %d/%d done in %s" % (self.what, self.n, self.total, _hms(dt)))


def _hms(s: float) -> str:
    s = int(round(s))
    return "%d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60) if s >= 3600 else "%d:%02d" % (s // 60, s % 60)


# ----------------------------------------------------------------------------------------------- augmentation
def augment_pair(cx: np.ndarray, cr: np.ndarray, rng: np.random.RandomState, size: int = SIZE):
    """One random scale/rotation/intensity transform applied to both canvases -> two uint8 (size,size) crops."""
    import cv2
    s = rng.uniform(*AUG_SCALE)
    a = rng.uniform(*AUG_ROTATION_DEG)
    g = rng.uniform(*AUG_INTENSITY)
    c = (cx.shape[1] - 1) / 2.0, (cx.shape[0] - 1) / 2.0
    M = cv2.getRotationMatrix2D(c, a, s)
    M[:, 2] += np.array([(size - 1) / 2.0 - c[0], (size - 1) / 2.0 - c[1]])
    out = []
    for img in (cx, cr):
        w = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out.append(np.clip(np.rint(w.astype(np.float32) * g), 0, 255).astype(np.uint8))
    return out[0], out[1]


def crop(canvas: np.ndarray) -> np.ndarray:
    m = (canvas.shape[0] - SIZE) // 2
    return canvas[m:m + SIZE, m:m + SIZE]


# ----------------------------------------------------------------------------------------------- files, hashes
def _stat(path: Optional[str]):
    if not path:
        return None
    try:
        st = os.stat(split_frame(path)[0])
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


def _inputs_hash(files: Iterable[str], options: dict) -> Tuple[str, int]:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    n = 0
    for f in sorted(set(split_frame(p)[0] for p in files if p)):
        h.update(("%s\t%s\n" % (f, _stat(f))).encode())
        n += 1
    return h.hexdigest(), n


def _align_version() -> str:
    return hashlib.sha1(A.TEMPLATE_66.tobytes() + b"m%d" % CANVAS_MARGIN).hexdigest()[:12]


def _write_json(path: str, data) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _rm(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def lmdb_problem(path: str, expected: Optional[int] = None) -> Optional[str]:
    """None when the LMDB at `path` opens, is whole (LMDB stat/info vs file size) and holds `expected` entries;
    else what is wrong with it."""
    import lmdb
    mdb = os.path.join(path, "data.mdb")
    if not os.path.isfile(mdb):
        return "missing"
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False)
        try:
            st, info = env.stat(), env.info()
        finally:
            env.close()
    except lmdb.Error as e:
        return "cannot be opened (%s)" % e
    need, size = (info["last_pgno"] + 1) * st["psize"], os.path.getsize(mdb)
    if size < need:
        return "data.mdb is truncated (%d of %d bytes)" % (size, need)
    if expected is not None and st["entries"] != expected:
        return "holds %d entries, its manifest records %d" % (st["entries"], expected)
    return None


def _remove_partials(out_dir: str, say) -> None:
    """Remove what an interrupted build left half-written (`*.partial*` in out_dir and its fold_K/)."""
    dirs = [out_dir] + [os.path.join(out_dir, d) for d in sorted(os.listdir(out_dir)) if d.startswith("fold_")]
    for d in dirs:
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        for n in sorted(os.listdir(d)):
            if ".partial" in n:
                _rm(os.path.join(d, n))
                say("[build_lmdb] removed %s (left by an interrupted build)" % os.path.join(d, n))


# ----------------------------------------------------------------------------------------------- alignment
class AlignCache:
    """Aligned canvases (sample frames) and 66x66 crops (other frames), keyed by frame + file stats + landmarks."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.canvas: Dict[str, np.ndarray] = {}
        self.crops: Dict[str, np.ndarray] = {}
        self.failed: Dict[str, str] = {}
        self.dirty = False
        self.version = _align_version()
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
        return json.dumps([frame, _stat(frame), lm, _stat(lm)])

    def save(self):
        if not self.path or not self.dirty:
            return
        m = SIZE + 2 * CANVAS_MARGIN
        ck = sorted(self.canvas)
        rk = sorted(self.crops)
        fk = sorted(self.failed)
        tmp = self.path + ".partial.npz"
        np.savez(tmp, version=np.array(self.version),
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


# ----------------------------------------------------------------------------------------------- LMDB writing
def write_lmdb(path: str, items: Iterable[Tuple[np.ndarray, int]], n: int, what: str, progress=None) -> int:
    """Write Datums to `<path>.partial` then rename to `path`.  items: (uint8 (2,66,66), label).  -> count."""
    import lmdb
    tmp = path + ".partial"
    _rm(tmp)
    datum_bytes = 2 * SIZE * SIZE + 64
    map_size = max(n, 1) * (datum_bytes + 4096 + 256) * 2 + (64 << 20)
    env = lmdb.open(tmp, map_size=map_size, subdir=True, meminit=False)
    count = 0
    pg = Progress(n, what, progress)
    try:
        txn = env.begin(write=True)
        for data, label in items:
            txn.put(b"%08d" % count, encode_datum(data, label))
            count += 1
            pg.step()
            if count % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
        env.sync(True)
    finally:
        env.close()
    pg.done()
    _rm(path)
    os.rename(tmp, path)
    return count


def _pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a, b])


def _sort_key(s: Sample):
    return (natural_key(s.subject), natural_key(s.sequence), s.frame_index, s.frame)


# ----------------------------------------------------------------------------------------------- the build
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
    if dataset not in DATASETS:
        raise DataError("unknown dataset '%s' (known: %s)" % (dataset, ", ".join(DATASETS)))
    if augment_copies < 0:
        raise DataError("augment copies must be >= 0, got %d" % augment_copies)
    spec = DATASETS[dataset]
    fold_list = sorted(set(range(n_folds) if folds is None else folds))
    bad = [k for k in fold_list if not 0 <= k < n_folds]
    if bad:
        raise DataError("fold(s) %s outside 0..%d" % (bad, n_folds - 1))
    out_dir = os.path.abspath(out_dir)
    data_root = os.path.abspath(data_root)
    manifest_path = os.path.join(out_dir, "manifest.json")
    unwritable = None
    try:
        check_writable(out_dir)
    except DataError as e:
        if force or not os.path.isfile(manifest_path):
            raise
        unwritable = e                    # a finished build may still be up to date: checked below
    else:
        _remove_partials(out_dir, say)

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

    options = {"build_version": BUILD_VERSION, "align": _align_version(), "dataset": dataset,
               "data_root": data_root, "n_folds": n_folds, "folds": fold_list, "augment_copies": augment_copies,
               "seed": seed, "landmarks_root": landmarks_root and os.path.abspath(landmarks_root),
               "pretrain_root": pretrain_root and os.path.abspath(pretrain_root),
               "pretrain_landmarks": pretrain_landmarks and os.path.abspath(pretrain_landmarks),
               "mmi_peaks": opts.get("peaks_csv"),
               "augmentation": {"scale": AUG_SCALE, "rotation_deg": AUG_ROTATION_DEG, "intensity": AUG_INTENSITY,
                                "canvas_margin": CANVAS_MARGIN}}
    files = list(res.sources)
    for s in res.samples:
        files += [s.frame, s.reference, s.landmarks, s.ref_landmarks]
    if pre is None:
        for q in res.sequences:
            files += q.frames + q.landmarks
    # data_hash: everything the test / pretrain LMDBs depend on; in_hash adds the train-only options
    data_hash, n_files = _inputs_hash(files, {k: v for k, v in options.items() if k not in ("augment_copies", "folds")})
    in_hash = hashlib.sha256(json.dumps([data_hash, augment_copies, fold_list]).encode()).hexdigest()
    pre_hash = None
    if pre is not None:
        pf = list(pre.sources)
        for s in pre.samples:
            pf += [s.frame, s.landmarks]
        pre_hash, _ = _inputs_hash(pf, {k: options[k] for k in ("build_version", "align", "seed", "pretrain_root",
                                                                 "pretrain_landmarks")})

    repaired = []
    if not force and os.path.isfile(manifest_path):
        try:
            with open(manifest_path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old and old.get("inputs", {}).get("hash") == in_hash:
            for k in fold_list:
                fi = (old.get("folds") or {}).get(str(k)) or {}
                for n in ("train", "test", "pretrain"):
                    why = lmdb_problem(os.path.join(out_dir, "fold_%d" % k, n), fi.get("n_" + n))
                    if why:
                        repaired.append("fold_%d/%s: %s" % (k, n, why))
            if not repaired:
                say("[build_lmdb] %s is up to date (same inputs and options): nothing to do" % out_dir)
                old["cached"] = True
                return old
            for r in repaired:
                say("[build_lmdb] damaged LMDB %s: rebuilding it" % r)
    if unwritable is not None:
        raise DataError("%s; its LMDBs are out of date or damaged and cannot be rebuilt there" % unwritable)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)         # an interrupted rebuild must not look complete

    # ---- align every needed frame once
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
    cache = AlignCache(os.path.join(out_dir, "align_cache.npz"))
    fallbacks = [f for f, lm in list(need_canvas.items()) + list(need_crop.items()) if lm is None] \
        if res.has_landmarks else []
    if pre is not None and pre.has_landmarks:
        fallbacks += [s.frame for s in pre.samples if s.landmarks is None]
    fallbacks = sorted(set(fallbacks), key=natural_key)
    canvases, crops, failed = cache.run(need_canvas, need_crop, say)
    notes = list(res.notes) + ["rebuilt damaged LMDB " + r for r in repaired]
    if fallbacks:
        notes.append("%d frame(s) without a landmark file were located by the face detector (build_report.json: "
                     "detector_fallbacks)" % len(fallbacks))
    if A.detector().error:
        notes.append(A.detector().error)
    # one report entry per file (res.skip keeps the first reason): a bad reference costs its sequence's samples
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

    # ---- folds
    foldmap = assign_folds([s.subject for s in usable], n_folds)
    write_folds(os.path.join(out_dir, "folds.json"), foldmap, n_folds, dataset=dataset, data_root=data_root)
    class_names = list(spec.class_names)

    def per_class(samples):
        c = Counter(s.label for s in samples)
        return {class_names[i]: c.get(i, 0) for i in range(len(class_names))}

    # ---- shared WebFace pretraining LMDB
    pre_info = None
    if pre is not None:
        pre_info = _build_webface(pre, pre_hash, out_dir, seed, say)
        for f, why in pre_info.pop("skipped"):
            res.skip(f, why)

    fold_info = {}
    for k in fold_list:
        fdir = os.path.join(out_dir, "fold_%d" % k)
        os.makedirs(fdir, exist_ok=True)
        old_sig = {}
        try:
            with open(os.path.join(fdir, "manifest.json")) as f:
                old_fm = json.load(f)
            if old_fm.get("data_hash") == data_hash:
                old_sig = old_fm
        except (OSError, ValueError):
            pass
        train = sorted((s for s in usable if foldmap[s.subject] != k), key=_sort_key)
        test = sorted((s for s in usable if foldmap[s.subject] == k), key=_sort_key)
        say("[build_lmdb] fold %d: %d train samples (x%d with augmentation), %d test samples"
            % (k, len(train), 1 + augment_copies, len(test)))
        if os.path.exists(os.path.join(fdir, "manifest.json")):
            os.remove(os.path.join(fdir, "manifest.json"))
        rng = np.random.RandomState([seed, k, 1])
        order = [(i, c) for i in range(len(train)) for c in range(1 + augment_copies)]
        perm = rng.permutation(len(order))

        def train_items():
            for j in perm:
                i, c = order[j]
                s = train[i]
                cx, cr = canvases[s.frame], canvases[s.reference]
                if c == 0:
                    yield _pair(crop(cx), crop(cr)), s.label
                else:
                    x, r = augment_pair(cx, cr, rng)
                    yield _pair(x, r), s.label
        if old_sig.get("inputs_hash") == in_hash and old_sig.get("n_train") == len(order) \
                and not lmdb_problem(os.path.join(fdir, "train"), len(order)):
            n_train = len(order)
            say("  fold %d train: unchanged, kept" % k)
        else:
            n_train = write_lmdb(os.path.join(fdir, "train"), train_items(), len(order), "fold %d train" % k, say)
        if old_sig.get("n_test") == len(test) and not lmdb_problem(os.path.join(fdir, "test"), len(test)):
            n_test = len(test)
            say("  fold %d test: unchanged, kept" % k)
        else:
            n_test = write_lmdb(os.path.join(fdir, "test"),
                                ((_pair(crop(canvases[s.frame]), crop(canvases[s.reference])), s.label) for s in test),
                                len(test), "fold %d test" % k, say)
        _write_json(os.path.join(fdir, "test_index.json"),
                    [{"frame": s.frame, "reference": s.reference, "label": s.label, "subject": s.subject,
                      "sequence": s.sequence, "frame_index": s.frame_index} for s in test])
        pdir = os.path.join(fdir, "pretrain")
        if pre_info is not None:
            _rm(pdir)
            os.symlink(os.path.join("..", "pretrain_webface"), pdir)
            n_pre, n_ids = pre_info["n"], pre_info["n_identities"]
        else:
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
                    yield _pair(x, x), lab
            if (old_sig.get("n_pretrain") == len(pitems) and old_sig.get("pretrain_source") == "training folds"
                    and not os.path.islink(pdir) and not lmdb_problem(pdir, len(pitems))):
                n_pre = len(pitems)
                say("  fold %d pretrain: unchanged, kept" % k)
            else:
                n_pre = write_lmdb(pdir, pre_items(), len(pitems), "fold %d pretrain" % k, say)
            n_ids = len(train_subjects)
        info = {"fold": k, "dataset": dataset, "class_names": class_names, "neutral_label": spec.neutral_label,
                "n_classes": len(class_names), "n_train": n_train, "n_train_unique": len(train),
                "augment_copies": augment_copies, "n_test": n_test, "n_pretrain": n_pre, "n_identities": n_ids,
                "pretrain_source": "webface" if pre_info else "training folds",
                "train_per_class": per_class(train), "test_per_class": per_class(test),
                "test_subjects": fold_subjects(foldmap, k),
                "paths": {"train": "fold_%d/train" % k, "test": "fold_%d/test" % k,
                          "pretrain": "fold_%d/pretrain" % k, "test_index": "fold_%d/test_index.json" % k},
                "inputs_hash": in_hash, "data_hash": data_hash}
        _write_json(os.path.join(fdir, "manifest.json"), info)
        fold_info[str(k)] = {x: info[x] for x in info if x not in ("dataset", "class_names", "neutral_label",
                                                                   "n_classes", "inputs_hash", "data_hash")}

    skipped = res.skipped
    by_reason, lost_by_reason = count_reasons(skipped), count_reasons(skipped, res.lost)
    _write_json(os.path.join(out_dir, "build_report.json"),
                {"dataset": dataset, "data_root": data_root, "skipped_by_reason": by_reason,
                 "samples_lost_by_reason": lost_by_reason, "n_samples_lost": sum(lost_by_reason.values()),
                 "skipped": [[f, why, res.lost[f]] for f, why in skipped],
                 "detector_fallbacks": fallbacks, "notes": notes})
    manifest = {
        "dataset": dataset, "class_names": class_names, "neutral_label": spec.neutral_label,
        "n_classes": len(class_names), "data_root": data_root, "layout": res.layout, "options": options,
        "inputs": {"hash": in_hash, "data_hash": data_hash, "n_files": n_files, "pretrain_hash": pre_hash},
        "n_samples": len(usable), "n_subjects": len(foldmap), "n_folds": n_folds, "folds_built": fold_list,
        "counts": {"per_class": per_class(usable),
                   "per_subject": {s: c for s, c in sorted(Counter(x.subject for x in usable).items(),
                                                           key=lambda t: natural_key(t[0]))},
                   "per_fold": {str(k): len([s for s in usable if foldmap[s.subject] == k]) for k in range(n_folds)}},
        "folds": fold_info, "pretrain": pre_info,
        "skipped_by_reason": by_reason, "n_skipped": len(skipped), "samples_lost_by_reason": lost_by_reason,
        "n_samples_lost": sum(lost_by_reason.values()), "n_detector_fallbacks": len(fallbacks), "notes": notes,
        "build_seconds": round(time.time() - t_start, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_json(manifest_path, manifest)
    say("[build_lmdb] done in %s: %d samples, %d subjects, folds %s; skipped %s -> %s"
        % (_hms(time.time() - t_start), len(usable), len(foldmap), ",".join(map(str, fold_list)),
           json.dumps(by_reason) if by_reason else "nothing", out_dir))
    manifest["cached"] = False
    return manifest


def _build_webface(pre, pre_hash: str, out_dir: str, seed: int, say) -> dict:
    """Shared pretraining LMDB of WebFace faces, [X, X], label = identity index; rebuilt only when its inputs change."""
    path = os.path.join(out_dir, "pretrain_webface")
    meta_path = path + ".json"
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
    rng = np.random.RandomState([seed, 7])
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
                yield _pair(out, out), s.label
    if os.path.exists(meta_path):
        os.remove(meta_path)
    n = write_lmdb(path, items(), len(samples), "pretrain (WebFace)", say)
    meta = {"hash": pre_hash, "n": n, "n_identities": n_ids, "path": "pretrain_webface",
            "skipped": [list(t) for t in skipped], "notes": pre.notes}
    _write_json(meta_path, meta)
    meta["skipped"] = skipped
    return meta
