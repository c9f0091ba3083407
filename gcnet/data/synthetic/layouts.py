"""Layouts: deterministic plans of subjects and sequences, and the writers of the CK+, Oulu, MMI, WebFace trees."""
import math
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from gcnet.data.records import check_writable
from gcnet.data.synthetic.face import _NONNEG, EXPRESSIONS, Identity, expression_vector, sample_identity
from gcnet.data.synthetic.render import DEFAULT_SIZE, Look, Pose, render_face
from gcnet.data.synthetic.sequences import SeqSpec, render_sequence

LAYOUTS = ("ck+", "oulu", "mmi", "webface")
_LAYOUT_ALIASES = {"ck+": "ck+", "ckplus": "ck+", "ck": "ck+", "oulu": "oulu", "oulu-casia": "oulu",
                   "mmi": "mmi", "webface": "webface", "casia-webface": "webface"}
DEFAULT_FRAMES = {"ck+": (10, 16), "oulu": (10, 16), "mmi": (16, 24), "webface": (10, 20)}
CK_CODES = {e: i + 1 for i, e in enumerate(EXPRESSIONS)}                       # anger 1 ... surprise 7
OULU_NAMES = {"anger": "Anger", "disgust": "Disgust", "fear": "Fear", "happy": "Happiness",
              "sadness": "Sadness", "surprise": "Surprise"}
MMI_CODES = {"anger": 1, "disgust": 2, "fear": 3, "happy": 4, "sadness": 5, "surprise": 6}
BASIC6 = ("anger", "disgust", "fear", "happy", "sadness", "surprise")
# class balance: half the real CK+ balance (327 labelled sequences) + half uniform
_CK_COUNTS = {"anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sadness": 28, "surprise": 83}


# ----------------------------------------------------------------------------------------------- plans
def _assign_expressions(rng, n: int, pool: Sequence[str], weights: np.ndarray, seen: Dict[str, int]) -> List[str]:
    """n distinct expressions for one subject: classes not yet seen overall first, then weighted sampling."""
    out: List[str] = []
    for _ in range(n):
        avail = [e for e in pool if e not in out]
        unseen = [e for e in avail if seen.get(e, 0) == 0]
        if unseen:
            e = unseen[int(rng.integers(len(unseen)))]
        else:
            w = np.array([weights[pool.index(e)] for e in avail])
            e = avail[int(rng.choice(len(avail), p=w / w.sum()))]
        out.append(e)
    return out


def _frames_range(layout: str, frames: Optional[int]) -> Tuple[int, int]:
    return (frames, frames) if frames else DEFAULT_FRAMES[layout]


def _id_seed(seed: int, layout: str, k: int) -> List[int]:
    return [int(seed) & 0xFFFFFFFF, LAYOUTS.index(layout), int(k)]


def plan(layout: str, subjects: int, seed: int, frames: Optional[int] = None):
    """Deterministic plan: list of (subject name, identity seed, [SeqSpec ...]) plus layout extras."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, LAYOUTS.index(layout), 999983])
    lo, hi = _frames_range(layout, frames)
    nf = lambda: int(rng.integers(lo, hi + 1))
    out = []
    seen: Dict[str, int] = {}
    if layout == "ck+":
        pool = list(EXPRESSIONS)
        ck = np.array([_CK_COUNTS[e] for e in pool], float)
        weights = 0.5 * ck / ck.sum() + 0.5 / len(pool)
        sid = 5
        for k in range(subjects):
            name = "S%03d" % sid
            n_seq = int(rng.integers(3, 7))
            labelled = [rng.random() >= 1 / 6 for _ in range(n_seq)]
            exprs = _assign_expressions(rng, sum(labelled), pool, weights, seen)
            seqs, q, it = [], 1, iter(exprs)
            for lab in labelled:
                if lab:
                    e, blend, inten = next(it), None, float(rng.uniform(0.4, 1.0))
                    seen[e] = seen.get(e, 0) + 1
                else:
                    a, b = rng.choice(len(pool), 2, replace=False)
                    e, blend, inten = pool[a], pool[b], float(rng.uniform(0.3, 0.8))
                seqs.append(SeqSpec(name, "%03d" % q, e, inten, lab, nf(), (*_id_seed(seed, layout, k), q), blend))
                q += 1 + (1 if rng.random() < 0.15 else 0)
            out.append((name, _id_seed(seed, layout, k), seqs))
            sid += int(rng.choice([1, 1, 1, 2, 3, 5]))
    elif layout == "oulu":
        for k in range(subjects):
            name = "P%03d" % (k + 1)
            seqs = [SeqSpec(name, OULU_NAMES[e], e, float(rng.uniform(0.5, 1.0)), True, nf(),
                            (*_id_seed(seed, layout, k), j + 1)) for j, e in enumerate(BASIC6)]
            out.append((name, _id_seed(seed, layout, k), seqs))
    elif layout == "mmi":
        pool = list(BASIC6)
        weights = np.ones(len(pool))
        session, sid = 1, 1
        for k in range(subjects):
            name = "S%03d" % sid
            n_seq = int(rng.integers(2, 7))
            exprs = _assign_expressions(rng, n_seq, pool, weights, seen)
            for e in exprs:
                seen[e] = seen.get(e, 0) + 1
            views = [0] * n_seq
            if k == 0 or rng.random() < 0.25:           # a few profile sessions (readers must skip them)
                views.append(1)
                exprs.append(pool[int(rng.integers(len(pool)))])
            order = rng.permutation(len(exprs))
            seqs = []
            for j, oi in enumerate(order):
                seqs.append(SeqSpec(name, str(session), exprs[oi], float(rng.uniform(0.4, 1.0)), True, nf(),
                                    (*_id_seed(seed, layout, k), j + 1), kind="apex", view=views[oi]))
                session += int(rng.choice([1, 1, 1, 2, 4]))
            out.append((name, _id_seed(seed, layout, k), seqs))
            sid += int(rng.choice([1, 1, 1, 1, 2]))
    elif layout == "webface":
        iid = int(rng.integers(10, 60))
        for k in range(subjects):
            name = "%07d" % iid
            out.append((name, _id_seed(seed, layout, k),
                        [SeqSpec(name, name, "neutral", 0.0, False, nf(), (*_id_seed(seed, layout, k), 1),
                                 kind="still")]))
            iid += int(rng.integers(1, 80))
    else:
        raise ValueError("unknown layout %r" % layout)
    return out


# ----------------------------------------------------------------------------------------------- writers
def _fmt_ck_landmarks(lm: np.ndarray) -> str:
    return ("%16.7e%16.7e\n" * len(lm)) % tuple(np.asarray(lm, float).ravel().tolist())


def _fmt_pts(lm: np.ndarray) -> str:
    return ("%.3f %.3f\n" * len(lm)) % tuple(np.asarray(lm, float).ravel().tolist())


def _write_text(path: str, text: str) -> None:
    with open(path, "w", newline="\n") as f:
        f.write(text)


def _imwrite(path: str, img: np.ndarray) -> None:
    import cv2
    ext = os.path.splitext(path)[1].lower()
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 92]
    if not cv2.imwrite(path, img, params):
        raise OSError("cannot write image %s" % path)


def _write_avi(path: str, frames: List[np.ndarray], fps: float = 25.0) -> None:
    import cv2
    H, W = frames[0].shape[:2]
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H), True)
    if not vw.isOpened():
        raise OSError("cannot open a MJPG video writer for %s (OpenCV without video support?)" % path)
    try:
        for f in frames:
            vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    finally:
        vw.release()


def sidecar_dir(out: str) -> str:
    """`<out>/../<basename(out)>_landmarks` (where gcnet.data.records.auto_landmarks_root looks)."""
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), os.path.basename(out) + "_landmarks")


def _mk(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _webface_image(ident: Identity, spec: SeqSpec, j: int, size):
    rng = np.random.default_rng([*spec.seed, 1000 + j])
    W = size[0]
    if rng.random() < 0.65:
        e = EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))]
        p = ident.rest + rng.uniform(0.1, 0.5) * expression_vector(e, rng.random() < 0.5)
    else:
        p = ident.rest.copy()
    p = np.where(_NONNEG, np.clip(p, 0, None), p)
    pose = Pose(rng.normal(0, 6.0), 1 + rng.normal(0, 0.07), rng.normal(0, 0.05 * W), rng.normal(0, 0.04 * W))
    look = Look(rng.uniform(0, 0.3), rng.uniform(0, 2 * math.pi), 1 + rng.normal(0, 0.08), rng.uniform(1, 4), 0.6)
    bg = float(rng.uniform(20, 235))
    return render_face(ident, p, size, pose, look, rng, bg=bg)


def _parse_size(size) -> Tuple[int, int]:
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(s.strip().isdigit() for s in parts):
            raise ValueError("size must look like WxH (e.g. 160x120), got %r" % size)
        size = (int(parts[0]), int(parts[1]))
    W, H = int(size[0]), int(size[1])
    if not (48 <= W <= 4096 and 48 <= H <= 4096):
        raise ValueError("size %dx%d out of range (each side 48..4096)" % (W, H))
    return W, H


def _nonempty(path: str) -> bool:
    return os.path.exists(path) and (not os.path.isdir(path) or bool(os.listdir(path)))


def make_synthetic(layout: str, out: str, subjects: int, seed: int = 0, frames: Optional[int] = None,
                   size: Union[str, Tuple[int, int]] = DEFAULT_SIZE, force: bool = False,
                   progress: Optional[Callable[[int, int, int, float], None]] = None) -> dict:
    """Write a synthetic data set in `layout` ('ck+', 'oulu', 'mmi', 'webface') to `out`.

    subjects: number of identities; seed: everything is a function of it (same seed -> identical bytes);
    frames: frames per sequence (images per identity for webface), default a per-layout range
    (DEFAULT_FRAMES); size: (W, H) or "WxH".  Refuses (FileExistsError) a non-empty `out` (or sidecar
    landmark folder) unless force=True.  progress(done_subjects, total_subjects, frames_written, elapsed_s) is
    called after each subject.  Returns a summary dict (counts, seconds, per-class counts, and `truth`: one
    entry per sequence with its expression, intensity, label state and peak frame)."""
    t0 = time.time()
    lay = _LAYOUT_ALIASES.get(str(layout).lower())
    if lay is None:
        raise ValueError("unknown layout %r (choose from %s)" % (layout, ", ".join(LAYOUTS)))
    if int(subjects) < 1:
        raise ValueError("subjects must be >= 1")
    if frames is not None and int(frames) < (3 if lay == "mmi" else 2 if lay != "webface" else 1):
        raise ValueError("frames too small for layout %s" % lay)
    W, H = _parse_size(size)
    out = os.path.abspath(os.path.expanduser(str(out)))
    side = sidecar_dir(out) if lay != "ck+" else None
    for pth in (out, side):
        if pth and os.path.exists(pth) and not os.path.isdir(pth):
            raise FileExistsError("%s exists and is not a folder" % pth)
    if not force:
        for pth in (out, side):
            if pth and _nonempty(pth):
                raise FileExistsError("%s exists and is not empty (use force / --force to replace it)" % pth)
    for pth in (out, side):
        if pth:
            check_writable(os.path.dirname(pth), "folder")    # DataError naming it, before any work
    tmp = out + ".partial"
    tmp_side = side + ".partial" if side else None
    for pth in (tmp, tmp_side):
        if pth and os.path.exists(pth):
            shutil.rmtree(pth)
    os.makedirs(tmp)
    if tmp_side:
        os.makedirs(tmp_side)
    the_plan = plan(lay, int(subjects), int(seed), int(frames) if frames else None)
    n_frames = 0
    truth = []
    peaks = []
    per_class: Dict[str, int] = {}
    try:
        for k, (name, id_seed, seqs) in enumerate(the_plan):
            ident = sample_identity(np.random.default_rng(id_seed))
            for j, spec in enumerate(seqs):
                if lay == "webface":
                    d = _mk(os.path.join(tmp, name))
                    ds = _mk(os.path.join(tmp_side, name))
                    for i in range(spec.n_frames):
                        img, lm = _webface_image(ident, spec, i, (W, H))
                        _imwrite(os.path.join(d, "%03d.jpg" % (i + 1)), img)
                        _write_text(os.path.join(ds, "%03d.pts" % (i + 1)), _fmt_pts(lm))
                    n_frames += spec.n_frames
                    truth.append(dict(subject=name, sequence=name, expression=None, frames=spec.n_frames))
                    continue
                imgs, lms, peak = render_sequence(ident, spec, (W, H))
                n_frames += len(imgs)
                if spec.labelled and spec.view == 0:
                    per_class[spec.expression] = per_class.get(spec.expression, 0) + 1
                truth.append(dict(subject=name, sequence=spec.sequence, expression=spec.expression,
                                  blend=spec.blend, intensity=round(spec.intensity, 4), labelled=spec.labelled,
                                  view=spec.view, frames=len(imgs), peak_frame=peak))
                if lay == "ck+":
                    stem = "%s_%s_" % (name, spec.sequence)
                    di = _mk(os.path.join(tmp, "cohn-kanade-images", name, spec.sequence))
                    dl = _mk(os.path.join(tmp, "Landmarks", name, spec.sequence))
                    for i, (img, lm) in enumerate(zip(imgs, lms)):
                        _imwrite(os.path.join(di, stem + "%08d.png" % (i + 1)), img)
                        _write_text(os.path.join(dl, stem + "%08d_landmarks.txt" % (i + 1)), _fmt_ck_landmarks(lm))
                    if spec.labelled:
                        de = _mk(os.path.join(tmp, "Emotion", name, spec.sequence))
                        _write_text(os.path.join(de, stem + "%08d_emotion.txt" % len(imgs)),
                                    "%16.7e\n" % CK_CODES[spec.expression])
                elif lay == "oulu":
                    rel = os.path.join("OriginalImg", "VL", "Strong", name, spec.sequence)
                    di, dl = _mk(os.path.join(tmp, rel)), _mk(os.path.join(tmp_side, rel))
                    for i, (img, lm) in enumerate(zip(imgs, lms)):
                        _imwrite(os.path.join(di, "%03d.jpeg" % i), img)
                        _write_text(os.path.join(dl, "%03d.pts" % i), _fmt_pts(lm))
                elif lay == "mmi":
                    rel = os.path.join("Sessions", spec.sequence)
                    di, dl = _mk(os.path.join(tmp, rel)), _mk(os.path.join(tmp_side, rel))
                    if j % 2 == (k % 2):
                        _write_avi(os.path.join(di, "%s-%03d.avi" % (name, j + 1)), imgs)
                        truth[-1]["storage"] = "avi"
                    else:
                        for i, img in enumerate(imgs):
                            _imwrite(os.path.join(di, "frame_%04d.png" % i), img)
                        truth[-1]["storage"] = "frames"
                    for i, lm in enumerate(lms):
                        _write_text(os.path.join(dl, "%04d.pts" % i), _fmt_pts(lm))
                    _write_text(os.path.join(di, "session.xml"),
                                '<?xml version="1.0"?><Session><Metatag Name="Subject" Value="%s"/>'
                                '<Metatag Name="Emotion" Value="%d"/><Metatag Name="View" Value="%d"/></Session>\n'
                                % (name, MMI_CODES[spec.expression], spec.view))
                    peaks.append((int(spec.sequence), peak))
            if progress is not None:
                progress(k + 1, len(the_plan), n_frames, time.time() - t0)
        if lay == "mmi":
            _write_text(os.path.join(tmp, "peaks.csv"),
                        "session,peak_frame\n" + "".join("%d,%d\n" % sp for sp in sorted(peaks)))
        # publish
        for final, part in ((out, tmp), (side, tmp_side)):
            if not final:
                continue
            if os.path.isdir(final):
                if os.listdir(final):
                    shutil.rmtree(final)       # only reached with force (checked above)
                else:
                    os.rmdir(final)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(part, final)
    except BaseException:
        for pth in (tmp, tmp_side):
            if pth and os.path.exists(pth):
                shutil.rmtree(pth, ignore_errors=True)
        raise
    n_seq = sum(len(s) for _, _, s in the_plan) if lay != "webface" else 0
    return dict(layout=lay, out=out, landmarks_dir=side, subjects=len(the_plan), sequences=n_seq,
                labelled=sum(1 for t in truth if t.get("labelled") and t.get("view", 0) == 0),
                frames=n_frames, per_class=dict(sorted(per_class.items())), size=[W, H], seed=int(seed),
                seconds=round(time.time() - t0, 3), truth=truth)
