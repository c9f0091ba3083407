"""Procedural grey faces written in the real on-disk layouts of CK+, Oulu-CASIA, MMI and CASIA-WebFace.

The licensed data sets cannot be shipped, so the whole pipeline (readers, alignment, LMDBs, training, figures) and
the tests run on a synthetic stand-in written in exactly the same folder / file-name / label-file conventions.

Face model
----------
Every identity is a cartoon face drawn with OpenCV primitives in grey levels: a face outline (an ellipse whose
lower half is the 17-point jaw), hair with a hair line, ears and neck, two brows (thick poly-lines), two eyes
(sclera, iris and pupil inside the lid polygon, dark lid line), a nose (bridge shading, nostrils), lips (outer and
inner lip polygons, dark mouth opening) and shading lines (forehead wrinkles, brow furrow, nose wrinkle,
nasolabial folds).  An identity fixes the structure (face width / height, eye spacing, size and tilt, brow
height / thickness / arch, nose length / width, mouth height / width, lip thickness, skin, hair, iris and
background grey levels, hair line, depth of the folds) AND a *resting expression*: offsets of the same
FACS-like parameters that the expressions move (brow heights, brow gathering, eye opening, lower-lid raise, lip
corner heights, mouth width, lip press, ...), drawn with a spread comparable to a weak (intensity ~0.4)
expression, so that some people rest with a slight smile, lowered brows, narrow eyes or a down-turned mouth.
Knowing a person's neutral face therefore helps to read his/her expression, which is the effect GCNet exploits.

An expression is a vector of parameter offsets (see EXPRESSION_OFFSETS): anger (brows down and together, eyes
narrowed, lips pressed, furrow), contempt (one lip corner up and a dimple beside it, asymmetric), disgust (nose wrinkle, upper lip raised,
brows down, lower lids up), fear (brows up and together, eyes wide, mouth stretched and slightly open, forehead
lines), happy (lip corners up, mouth wider, cheeks raised: lower lids up and nasolabial folds), sadness (inner
brows up, lip corners down) and surprise (brows up, eyes wide, round open mouth, jaw drop, forehead lines).  A
sequence multiplies its expression by a per-sequence intensity (0.4-1.0) and by a ramp that goes from 0 at the
first frame to 1 at the last (CK+, Oulu) or from 0 to 1 (peak frame, near the middle) and back to 0 (MMI).
Each sequence also has a slow head motion (rotation / scale / translation drifting linearly from a random start
pose; for MMI it moves away and back with the expression), a lighting gradient whose strength and brightness change the same way, a
slight blur and pixel noise.

The 68 landmarks (iBUG 68: jaw 0-16, brows 17-26, nose 27-35 with tip 30, eyes 36-41 (image-left) and 42-47,
outer lips 48-59 with corners 48 and 54, inner lips 60-67) are the very points the drawing is made from,
transformed by the same head motion, in image pixel coordinates: the iris is drawn at the mean of 36-41 / 42-47,
the nose tip at 30, the mouth corners at 48 / 54.

Layouts (``<out>`` is the folder given to make_synthetic)
--------------------------------------------------------
* ``ck+``:  ``<out>/cohn-kanade-images/S005/001/S005_001_00000001.png`` ... (frames numbered from 1),
  ``<out>/Emotion/S005/001/S005_001_000000NN_emotion.txt`` for the LAST frame of labelled sequences only
  (``   3.0000000e+00``; CK+ codes 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise),
  ``<out>/Landmarks/S005/001/S005_001_%08d_landmarks.txt`` for every frame (68 lines ``   x   y`` in %e).
  Subject ids are non-contiguous; 3-6 sequences per subject with different expressions; about 1 in 6 sequences is
  unlabelled (no Emotion file; such sequences show a blend of two expressions, like the non-prototypic ones of
  the real set).
* ``oulu``: ``<out>/OriginalImg/VL/Strong/P001/<Anger|Disgust|Fear|Happiness|Sadness|Surprise>/000.jpeg`` ...,
  one neutral-to-peak sequence per subject and expression.
* ``mmi``:  ``<out>/Sessions/<id>/`` holding either a video ``S001-<n>.avi`` (MJPG) or frames
  ``frame_0000.png`` ..., and ``session.xml`` with the Subject, Emotion (1 anger, 2 disgust, 3 fear,
  4 happiness, 5 sadness, 6 surprise) and View (0 frontal, 1 profile: readers must skip) metatags;
  sequences go neutral -> peak -> neutral and ``<out>/peaks.csv`` (``session,peak_frame``, 0-based) gives the peak.
* ``webface``: ``<out>/<identity %07d>/<%03d>.jpg``, 10-20 images per identity with mild random expressions,
  pose jitter and random background / lighting (CASIA-WebFace layout, for pretraining).

Oulu, MMI and WebFace have no landmark files of their own.  So that the pipeline can align the synthetic faces
without a face detector, their landmarks are written to a *sidecar* tree ``<out>/../<basename(out)>_landmarks/``
mirroring the image paths with the image suffix replaced by ``.pts`` (68 lines ``x y``); for MMI the sidecar is
``Sessions/<id>/<frame index %04d>.pts`` for videos and frame folders alike.  This mimics a user who supplies
precomputed landmarks with ``--landmarks DIR`` (gcnet.data.records.auto_landmarks_root finds it by itself).

Output is written to ``<out>.partial`` (and ``<sidecar>.partial``) and renamed when complete; the same seed gives
byte-identical files.  Only numpy and cv2 are used.
"""
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from gcnet.data.records import check_writable

LAYOUTS = ("ck+", "oulu", "mmi", "webface")
_LAYOUT_ALIASES = {"ck+": "ck+", "ckplus": "ck+", "ck": "ck+", "oulu": "oulu", "oulu-casia": "oulu",
                   "mmi": "mmi", "webface": "webface", "casia-webface": "webface"}
DEFAULT_SIZE = (160, 120)                     # (width, height)
DEFAULT_FRAMES = {"ck+": (10, 16), "oulu": (10, 16), "mmi": (16, 24), "webface": (10, 20)}

# the 7 expressions of the model, in CK+ code order (CK+ code = index + 1)
EXPRESSIONS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
CK_CODES = {e: i + 1 for i, e in enumerate(EXPRESSIONS)}                       # anger 1 ... surprise 7
OULU_NAMES = {"anger": "Anger", "disgust": "Disgust", "fear": "Fear", "happy": "Happiness",
              "sadness": "Sadness", "surprise": "Surprise"}
MMI_CODES = {"anger": 1, "disgust": 2, "fear": 3, "happy": 4, "sadness": 5, "surprise": 6}
BASIC6 = ("anger", "disgust", "fear", "happy", "sadness", "surprise")
# class balance: half the real CK+ balance (327 labelled sequences) + half uniform
_CK_COUNTS = {"anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sadness": 28, "surprise": 83}

# ----------------------------------------------------------------------------------------------- face parameters
# FACS-like parameters moved by expressions (and offset by an identity's resting face).  Units: the face
# half-width (u); "up" is positive for the brow / corner / lip parameters.
PARAMS = ("brow_in",      # inner brow raise (AU1 +, AU4 -)
          "brow_out",     # outer brow raise (AU2)
          "brow_x",       # brows pulled together (AU4)
          "eye_open",     # relative eye opening (AU5 +, AU7 -)
          "lower_lid",    # lower lid raised (AU6/AU7)
          "nose_wrinkle",  # AU9, 0..1
          "upper_lip",    # upper lip raised (AU10)
          "corner_l",     # image-left lip corner up (AU12 +, AU15 -)
          "corner_r",     # image-right lip corner up
          "mouth_w",      # relative mouth width (AU20 stretch +)
          "mouth_open",   # lips apart / jaw drop (AU25/26/27)
          "lip_press",    # lips pressed thin (AU24), 0..1
          "mouth_round",  # rounded mouth (surprise), 0..1
          "cheek",        # cheek raise: nasolabial folds (AU6), 0..1
          "furrow",       # vertical lines between the brows (AU4), 0..1
          "forehead",     # horizontal forehead lines (AU1+2), 0..1
          "dimple_l",     # dimple beside the image-left lip corner (AU14), 0..1
          "dimple_r")
_P = {n: i for i, n in enumerate(PARAMS)}
_NONNEG = np.array([n in ("nose_wrinkle", "mouth_open", "lip_press", "mouth_round", "cheek", "furrow", "forehead",
                          "dimple_l", "dimple_r") for n in PARAMS])

EXPRESSION_OFFSETS: Dict[str, Dict[str, float]] = {
    "anger": dict(brow_in=-0.10, brow_out=-0.01, brow_x=0.06, eye_open=-0.35, lower_lid=0.35, lip_press=0.9,
                  mouth_w=-0.10, furrow=1.0, corner_l=-0.01, corner_r=-0.01),
    # contempt: image-right corner by default; a sequence may mirror it (corner_l <-> corner_r)
    "contempt": dict(corner_r=0.10, corner_l=-0.01, mouth_w=0.04, lip_press=0.35, lower_lid=0.10, dimple_r=1.0),
    "disgust": dict(nose_wrinkle=1.0, upper_lip=0.07, brow_in=-0.08, brow_out=-0.03, brow_x=0.04, eye_open=-0.30,
                    lower_lid=0.45, corner_l=-0.03, corner_r=-0.03, cheek=0.5, furrow=0.5, mouth_open=0.02),
    "fear": dict(brow_in=0.10, brow_out=0.03, brow_x=0.05, eye_open=0.55, mouth_w=0.16, mouth_open=0.07,
                 corner_l=-0.025, corner_r=-0.025, forehead=0.7, furrow=0.3),
    "happy": dict(corner_l=0.10, corner_r=0.10, mouth_w=0.20, cheek=1.0, lower_lid=0.55, eye_open=-0.25,
                  upper_lip=0.015, mouth_open=0.035),
    "sadness": dict(brow_in=0.08, brow_out=-0.04, brow_x=0.025, eye_open=-0.15, corner_l=-0.08, corner_r=-0.08,
                    mouth_w=-0.04, lip_press=0.3, forehead=0.3),
    "surprise": dict(brow_in=0.13, brow_out=0.13, eye_open=0.60, mouth_open=0.24, mouth_round=1.0, mouth_w=-0.05,
                     forehead=1.0),
}
# spread (std) of an identity's resting face, comparable to a weak expression
_REST_STD = dict(brow_in=0.035, brow_out=0.03, brow_x=0.02, eye_open=0.13, lower_lid=0.12, upper_lip=0.012,
                 corner_l=0.028, corner_r=0.028, mouth_w=0.07, lip_press=0.2, cheek=0.15, furrow=0.15,
                 forehead=0.1)


def expression_vector(name: str, mirror: bool = False) -> np.ndarray:
    """Offsets of expression `name` (full intensity) as a vector over PARAMS; mirror swaps left/right corners."""
    v = np.zeros(len(PARAMS))
    if name in ("neutral", None, ""):
        return v
    for k, val in EXPRESSION_OFFSETS[name].items():
        v[_P[k]] = val
    if mirror:
        for a, b in (("corner_l", "corner_r"), ("dimple_l", "dimple_r")):
            v[_P[a]], v[_P[b]] = v[_P[b]], v[_P[a]]
    return v


@dataclass
class Identity:
    """Structural features and resting expression of one synthetic person."""
    face_w: float
    face_h: float
    eye_sep: float
    eye_size: float
    eye_y: float
    eye_tilt: float
    eye_open: float
    iris: float
    brow_h: float
    brow_thick: float
    brow_arch: float
    brow_len: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    hairline: float
    fold: float
    skin: float
    hair: float
    iris_tone: float
    brow_tone: float
    lip_tone: float
    bg: float
    rest: np.ndarray          # resting offsets over PARAMS


def sample_identity(rng: np.random.Generator) -> Identity:
    u = rng.uniform
    skin = u(115, 205)
    bg = u(30, 225)
    while abs(bg - skin) < 35:
        bg = u(30, 225)
    rest = np.zeros(len(PARAMS))
    for k, s in _REST_STD.items():
        rest[_P[k]] = rng.normal(0.0, s)
    # corners usually move together at rest (a resting smile / frown), with a little asymmetry
    common = rng.normal(0.0, _REST_STD["corner_l"])
    rest[_P["corner_l"]] = common + 0.35 * rest[_P["corner_l"]]
    rest[_P["corner_r"]] = common + 0.35 * rest[_P["corner_r"]]
    return Identity(face_w=u(0.90, 1.10), face_h=u(0.90, 1.10), eye_sep=u(0.90, 1.10), eye_size=u(0.85, 1.15),
                    eye_y=rng.normal(0, 0.025), eye_tilt=rng.normal(0, 0.012), eye_open=u(0.80, 1.20),
                    iris=u(0.85, 1.15), brow_h=u(0.80, 1.20), brow_thick=u(0.7, 1.3), brow_arch=u(0.0, 0.05),
                    brow_len=u(0.85, 1.15), nose_len=u(0.85, 1.15), nose_w=u(0.80, 1.25), mouth_y=u(0.90, 1.10),
                    mouth_w=u(0.85, 1.15), lip_thick=u(0.7, 1.3), hairline=u(0.85, 1.15), fold=u(0.0, 0.4),
                    skin=skin, hair=u(15, 100) if rng.random() < 0.85 else u(150, 230),
                    iris_tone=u(35, 110), brow_tone=u(0.35, 0.65), lip_tone=u(20, 45), bg=bg, rest=rest)


# ----------------------------------------------------------------------------------------------- geometry
def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _cl(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


_TH_JAW = np.linspace(math.pi + 0.2, -0.2, 49)
_TH_UP = np.linspace(-0.2, -math.pi + 0.2, 40)[1:-1]
_TH_HAIR = np.linspace(-0.05, -math.pi + 0.05, 60)
_S5 = np.linspace(0.0, 1.0, 5)
_XN = np.linspace(-1.0, 1.0, 25)
_T8 = np.linspace(0, 1, 8)[:, None]
_FH_XS = [np.linspace(-0.38 + 0.05 * k, 0.38 - 0.05 * k, 9) for k in range(3)]
_NW_XS = np.linspace(-0.08, 0.08, 5)


def face_geometry(ident: Identity, p: np.ndarray) -> Dict[str, np.ndarray]:
    """Landmarks and drawing contours of a face in face units (x right, y down, origin at the face centre, face
    half-width ~1).  `p` is the full parameter vector (identity rest + expression)."""
    g: Dict[str, np.ndarray] = {}
    P = lambda k: float(p[_P[k]])
    lm = np.zeros((68, 2))
    # ---- face outline: ellipse centred at (0, fcy); jaw = lower part, dropped when the mouth opens
    fa, fb, fcy = 1.0 * ident.face_w, 1.30 * ident.face_h, 0.05
    drop = 0.55 * P("mouth_open")
    th = _TH_JAW
    jaw = np.stack([fa * np.cos(th), fcy + fb * np.sin(th) + drop * np.maximum(np.sin(th), 0) ** 2], 1)
    lm[0:17] = jaw[::3]
    th_up = _TH_UP
    upper = np.stack([fa * np.cos(th_up), fcy + fb * np.sin(th_up)], 1)
    g["face"] = np.concatenate([jaw, upper])
    g["face_ellipse"] = np.array([0.0, fcy, fa, fb])
    # hair line: the part of the outline above y_h
    y_h = -0.72 * ident.hairline
    g["hairline_y"] = np.array([y_h])
    # ---- eyes
    ex, ey = 0.40 * ident.eye_sep, -0.22 + ident.eye_y
    ew = 0.16 * ident.eye_size
    eo = max(0.05, 1.0 + P("eye_open"))
    up = max(0.012, 0.075 * ident.eye_open * eo * ident.eye_size)
    lo = max(0.008, 0.060 * ident.eye_open * (1.0 + 0.6 * P("eye_open")) * ident.eye_size - 0.035 * P("lower_lid"))
    t = ident.eye_tilt
    lm[36:42] = [(-ex - ew, ey - t), (-ex - ew / 3, ey - up), (-ex + ew / 3, ey - up), (-ex + ew, ey),
                 (-ex + ew / 3, ey + lo), (-ex - ew / 3, ey + lo)]
    lm[42:48] = [(ex - ew, ey), (ex - ew / 3, ey - up), (ex + ew / 3, ey - up), (ex + ew, ey - t),
                 (ex + ew / 3, ey + lo), (ex - ew / 3, ey + lo)]
    g["eye_r"] = np.array([0.078 * ident.iris * ident.eye_size])
    # ---- brows: 5 points from outer to inner (left) / inner to outer (right)
    by = ey - 0.20 * ident.brow_h
    s = _S5                                  # 0 outer .. 1 inner
    outer_x = ex + ew * 1.30 * ident.brow_len
    inner_x = ex - ew * 0.95 - P("brow_x")
    bx = outer_x + (inner_x - outer_x) * s
    arch = ident.brow_arch + 0.03
    raise_ = (1 - s) * P("brow_out") + s * P("brow_in")
    byy = by - arch * (1 - (2 * s - 1) ** 2) - raise_ + 0.35 * P("brow_x") * s
    lm[17:22] = np.stack([-bx, byy], 1)
    lm[22:27] = np.stack([bx[::-1], byy[::-1]], 1)
    g["brow_w"] = np.array([0.060 * ident.brow_thick])
    # ---- nose
    tip_y = 0.20 * ident.nose_len
    nw = 0.14 * ident.nose_w * (1 + 0.12 * P("nose_wrinkle"))
    lift = 0.35 * P("upper_lip") + 0.02 * P("nose_wrinkle")
    lm[27:31] = np.stack([np.zeros(4), np.linspace(ey - 0.01, tip_y, 4)], 1)
    lm[31:36] = [(-nw, tip_y + 0.03 - lift), (-nw / 2, tip_y + 0.055 - lift), (0.0, tip_y + 0.065 - lift),
                 (nw / 2, tip_y + 0.055 - lift), (nw, tip_y + 0.03 - lift)]
    # ---- mouth
    my = tip_y + 0.30 * ident.mouth_y
    mw = 0.30 * ident.mouth_w * (1 + P("mouth_w")) * (1 - 0.35 * P("mouth_round"))
    xn = _XN
    cl, cr = P("corner_l"), P("corner_r")
    mid = my - np.where(xn < 0, cl, cr) * xn ** 2
    bell = np.maximum(1 - xn ** 2, 0)
    op = max(P("mouth_open"), 0.0) * (1 + 0.4 * P("mouth_round")) * bell ** (0.7 - 0.4 * P("mouth_round"))
    press = 1.0 - 0.6 * _cl(P("lip_press"), 0, 1)
    ul = P("upper_lip") * np.sqrt(bell)
    up_in = mid - 0.3 * op - ul
    lo_in = mid + 0.7 * op
    bow = 1 - 0.30 * np.exp(-(xn / 0.12) ** 2)          # cupid's bow dip in the middle
    up_out = up_in - 0.055 * ident.lip_thick * press * np.sqrt(bell) * bow - 0.004
    lo_out = lo_in + 0.075 * ident.lip_thick * press * np.sqrt(bell) + 0.004
    X = xn * mw
    g["lips_outer"] = np.concatenate([np.stack([X, up_out], 1), np.stack([X[::-1], lo_out[::-1]], 1)])
    g["lips_inner"] = np.concatenate([np.stack([X, up_in], 1), np.stack([X[::-1], lo_in[::-1]], 1)])
    g["mouth_open"] = np.array([float(np.max(lo_in - up_in))])

    def at(arr, v):
        return float(np.interp(v, xn, arr))

    lm[48] = (-mw, mid[0])
    lm[49:54] = [(v * mw, at(up_out, v)) for v in (-2 / 3, -1 / 3, 0, 1 / 3, 2 / 3)]
    lm[54] = (mw, mid[-1])
    lm[55:60] = [(v * mw, at(lo_out, v)) for v in (2 / 3, 1 / 3, 0, -1 / 3, -2 / 3)]
    lm[60] = (-0.95 * mw, at(up_in, -0.95) * 0.5 + at(lo_in, -0.95) * 0.5)
    lm[61:64] = [(v * mw, at(up_in, v)) for v in (-0.5, 0, 0.5)]
    lm[64] = (0.95 * mw, at(up_in, 0.95) * 0.5 + at(lo_in, 0.95) * 0.5)
    lm[65:68] = [(v * mw, at(lo_in, v)) for v in (0.5, 0, -0.5)]
    # ---- shading lines (each: polyline, darkness 0..1)
    lines: List[Tuple[np.ndarray, float]] = []
    fh = _cl(P("forehead"), 0, 1)
    if fh > 0.02:
        top = min(float(byy.min()), by - 0.1)
        for k, dy in enumerate((0.10, 0.18, 0.26)):
            yk = top - dy
            if yk > y_h + 0.04:
                xs = _FH_XS[k]
                lines.append((np.stack([xs, yk + 0.03 * (xs / 0.38) ** 2], 1), 0.55 * fh))
    fu = _cl(P("furrow"), 0, 1)
    if fu > 0.02:
        for sx in (-1, 1):
            x0 = sx * (inner_x - 0.06)
            lines.append((np.array([[x0, by - 0.02], [x0 * 1.1, by + 0.09]]), 0.6 * fu))
    nwk = _cl(P("nose_wrinkle"), 0, 1)
    if nwk > 0.02:
        for k in range(3):
            yk = ey + 0.02 + 0.045 * k
            xs = _NW_XS
            lines.append((np.stack([xs, yk - 0.02 * (1 - (xs / 0.08) ** 2)], 1), 0.6 * nwk))
    fold = _cl(ident.fold + 0.8 * _cl(P("cheek"), 0, 1.5), 0, 1.2)
    if fold > 0.02:
        for sx, c in ((-1, 48), (1, 54)):
            a = np.array([sx * (nw + 0.05), tip_y - 0.02 - 0.05 * P("cheek")])
            b = np.array([lm[c, 0] + sx * 0.07, lm[c, 1] + 0.06])
            ctrl = np.array([sx * (abs(b[0]) + 0.05), (a[1] + b[1]) / 2])
            tt = _T8
            lines.append(((1 - tt) ** 2 * a + 2 * (1 - tt) * tt * ctrl + tt ** 2 * b, 0.45 * fold))
    for sx, c, k in ((-1, 48, "dimple_l"), (1, 54, "dimple_r")):
        dk = _cl(P(k), 0, 1)
        if dk > 0.02:
            x0, y0 = lm[c, 0] + sx * 0.05, lm[c, 1]
            lines.append((np.array([[x0 - sx * 0.01, y0 - 0.07], [x0 + sx * 0.015, y0], [x0, y0 + 0.06]]), 0.7 * dk))
    g["lines"] = lines
    g["nose_w"] = np.array([nw, tip_y])
    g["landmarks"] = lm
    return g


# ----------------------------------------------------------------------------------------------- rendering
_SHIFT = 4
_ONE = 1 << _SHIFT


def _ip(pts: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(pts, dtype=float) * _ONE).astype(np.int32).reshape(-1, 1, 2)


_RAMPS: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}


def _ramps(W: int, H: int) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised x and y coordinate fields (cached per size)."""
    if (W, H) not in _RAMPS:
        _RAMPS[(W, H)] = ((np.arange(W, dtype=np.float32)[None, :] - W / 2) / (W / 2),
                          (np.arange(H, dtype=np.float32)[:, None] - H / 2) / (W / 2))
    return _RAMPS[(W, H)]


class NoisePool:
    """Gaussian pixel noise for many frames of one size: one field of twice the size, cut at random offsets
    (4x cheaper than a fresh field per frame, still different per frame)."""

    def __init__(self, rng: np.random.Generator, W: int, H: int):
        self.rng, self.W, self.H = rng, W, H
        self.field = rng.standard_normal((2 * H, 2 * W), dtype=np.float32)

    def take(self) -> np.ndarray:
        oy, ox = int(self.rng.integers(self.H + 1)), int(self.rng.integers(self.W + 1))
        return self.field[oy:oy + self.H, ox:ox + self.W]


@dataclass
class Pose:
    angle: float = 0.0     # degrees, counter-clockwise in the image
    scale: float = 1.0
    tx: float = 0.0        # pixels
    ty: float = 0.0
    squash: float = 1.0    # horizontal compression about the face centre (profile views)


@dataclass
class Look:
    gradient: float = 0.0  # lighting gradient strength
    direction: float = 0.0  # its direction (radians)
    gain: float = 1.0
    noise: float = 2.0     # pixel noise std
    blur: float = 0.6


def render_face(ident: Identity, p: np.ndarray, size: Tuple[int, int] = DEFAULT_SIZE, pose: Pose = Pose(),
                look: Look = Look(), rng: Optional[np.random.Generator] = None, bg: Optional[float] = None,
                noise: Optional[NoisePool] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one frame.  Returns (grey uint8 image HxW, landmarks (68, 2) float in image pixels).
    Pixel noise (std look.noise) comes from `noise` if given, else from `rng` if given, else none."""
    import cv2
    W, H = int(size[0]), int(size[1])
    u = 0.21 * min(W, H * 4.0 / 3.0)                  # face half-width in pixels
    cx, cy = W / 2.0, H / 2.0 + 0.02 * u
    g = face_geometry(ident, p)
    sc = np.array([u * pose.squash, u])
    off = np.array([cx, cy])
    toimg = lambda a: np.asarray(a) * sc + off
    bgv = ident.bg if bg is None else bg
    img = np.empty((H, W), np.uint8)
    # background: vertical tone gradient
    col = np.clip(bgv + np.linspace(-12, 12, H), 0, 255).astype(np.uint8)
    img[:] = col[:, None]
    aa = cv2.LINE_AA
    skin = ident.skin
    c = lambda v: (int(_cl(round(v), 0, 255)),)
    # neck and ears
    cv2.fillPoly(img, [_ip(toimg(np.array([[-0.42, 0.7], [0.42, 0.7], [0.55, 3.0], [-0.55, 3.0]])))],
                 c(skin * 0.86), aa, _SHIFT)
    _, fcy, fa, fb = g["face_ellipse"]
    for sx in (-1, 1):
        e = toimg(np.array([sx * fa * 0.98, fcy - 0.05]))
        cv2.ellipse(img, (int(e[0] * _ONE), int(e[1] * _ONE)),
                    (int(0.13 * u * pose.squash * _ONE), int(0.26 * u * _ONE)), 0, 0, 360, c(skin * 0.9), -1, aa,
                    _SHIFT)
    # hair mass behind the head (upper half)
    hc = toimg(np.array([0.0, fcy - 0.06]))
    cv2.ellipse(img, (int(hc[0] * _ONE), int(hc[1] * _ONE)),
                (int(fa * 1.10 * u * pose.squash * _ONE), int(fb * 1.07 * u * _ONE)), 0, 172, 368, c(ident.hair),
                -1, aa, _SHIFT)
    # face
    cv2.fillPoly(img, [_ip(toimg(g["face"]))], c(skin), aa, _SHIFT)
    # fringe: outline above the hair line, closed by a gently curved hair line
    y_h = float(g["hairline_y"][0])
    th = _TH_HAIR
    arc = np.stack([1.03 * fa * np.cos(th), fcy + 1.02 * fb * np.sin(th)], 1)   # a bit outside the outline
    arc = arc[arc[:, 1] < y_h]
    if len(arc) > 2:
        xs = np.linspace(arc[-1, 0], arc[0, 0], 12)
        xm = max(abs(arc[0, 0]), abs(arc[-1, 0]), 1e-3)
        hl = np.stack([xs, y_h - 0.05 * (1 - (xs / xm) ** 2)], 1)
        cv2.fillPoly(img, [_ip(toimg(np.concatenate([arc, hl])))], c(ident.hair), aa, _SHIFT)
    # shading lines
    lw = max(1, int(round(0.025 * u)))
    for pts, dark in g["lines"]:
        cv2.polylines(img, [_ip(toimg(pts))], False, c(skin * (1 - 0.45 * min(dark, 1.0))), lw, aa, _SHIFT)
    lm = toimg(g["landmarks"])
    # nose: bridge sides, nostrils, shadow under the tip
    nw, tip_y = g["nose_w"]
    for sx in (-1, 1):
        pts = toimg(np.array([[sx * 0.07, g["landmarks"][27, 1] + 0.06],
                              [sx * 0.08, tip_y - 0.05], [sx * nw, g["landmarks"][31, 1] - 0.02]]))
        cv2.polylines(img, [_ip(pts)], False, c(skin * 0.82), lw, aa, _SHIFT)
    cv2.polylines(img, [_ip(lm[31:36])], False, c(skin * 0.7), lw, aa, _SHIFT)
    for a, b in ((31, 32), (34, 35)):
        m = (lm[a] + lm[b]) / 2 - np.array([0, 0.012 * u])
        cv2.ellipse(img, (int(m[0] * _ONE), int(m[1] * _ONE)),
                    (max(1, int(0.035 * u * pose.squash * _ONE)), max(1, int(0.018 * u * _ONE))), 0, 0, 360,
                    c(skin * 0.35), -1, aa, _SHIFT)
    # brows
    bw = max(1, int(round(float(g["brow_w"][0]) * u)))
    for sl in (slice(17, 22), slice(22, 27)):
        cv2.polylines(img, [_ip(lm[sl])], False, c(skin * ident.brow_tone), bw, aa, _SHIFT)
    # eyes: sclera polygon, iris + pupil at the landmark mean (flattened to fit the opening), lid line
    r = float(g["eye_r"][0]) * u
    for sl in (slice(36, 42), slice(42, 48)):
        e = lm[sl]
        cv2.fillPoly(img, [_ip(e)], c(min(skin + 45, 235)), aa, _SHIFT)
        ctr = e.mean(0)
        top, bot = min(e[1, 1], e[2, 1]), max(e[4, 1], e[5, 1])
        rv = max(0.6, min(r, ctr[1] - top, bot - ctr[1]))
        ci = (int(round(ctr[0] * _ONE)), int(round(ctr[1] * _ONE)))
        cv2.ellipse(img, ci, (int(r * pose.squash * _ONE), int(rv * _ONE)), 0, 0, 360, c(ident.iris_tone), -1, aa,
                    _SHIFT)
        cv2.ellipse(img, ci, (int(0.45 * r * pose.squash * _ONE), int(min(0.45 * r, rv) * _ONE)), 0, 0, 360,
                    c(12), -1, aa, _SHIFT)
        cv2.polylines(img, [_ip(e[[0, 1, 2, 3]])], False, c(skin * 0.3), lw, aa, _SHIFT)
        cv2.polylines(img, [_ip(e[[3, 4, 5, 0]])], False, c(skin * 0.7), 1, aa, _SHIFT)
    # lips and mouth opening
    cv2.fillPoly(img, [_ip(toimg(g["lips_outer"]))], c(skin - ident.lip_tone - 15), aa, _SHIFT)
    if g["mouth_open"][0] * u > 0.6:
        cv2.fillPoly(img, [_ip(toimg(g["lips_inner"]))], c(25), aa, _SHIFT)
    n_in = len(g["lips_inner"]) // 2
    cv2.polylines(img, [_ip(toimg(g["lips_inner"][:n_in]))], False, c(skin * 0.35), lw, aa, _SHIFT)
    # head motion: similarity about the face centre
    if pose.angle or pose.scale != 1.0 or pose.tx or pose.ty:
        M = cv2.getRotationMatrix2D((cx, cy), pose.angle, pose.scale)
        M[0, 2] += pose.tx
        M[1, 2] += pose.ty
        img = cv2.warpAffine(img, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lm = lm @ M[:, :2].T + M[:, 2]
    # optics: blur, lighting gradient + gain, noise
    if look.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), look.blur)
    f = img.astype(np.float32)
    if look.gradient or look.gain != 1.0:
        rx, ry = _ramps(W, H)
        gx, gy = look.gain * look.gradient * math.cos(look.direction), look.gain * look.gradient * math.sin(
            look.direction)
        f *= (np.float32(look.gain) + np.float32(gx) * rx) + np.float32(gy) * ry
    if look.noise > 0 and (noise is not None or rng is not None):
        nz = noise.take() if noise is not None else rng.standard_normal((H, W), dtype=np.float32)
        f += nz * np.float32(look.noise)
    img = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return img, lm


# ----------------------------------------------------------------------------------------------- sequences
def _interp_pose(a: Pose, b: Pose, t: float) -> Pose:
    return Pose(a.angle + (b.angle - a.angle) * t, a.scale + (b.scale - a.scale) * t, a.tx + (b.tx - a.tx) * t,
                a.ty + (b.ty - a.ty) * t, a.squash)


def _random_poses(rng: np.random.Generator, W: int, strength: float = 1.0) -> Tuple[Pose, Pose]:
    s = strength
    p0 = Pose(rng.normal(0, 3.0 * s), 1 + rng.normal(0, 0.035 * s), rng.normal(0, 0.025 * W * s),
              rng.normal(0, 0.02 * W * s))
    p1 = Pose(p0.angle + rng.normal(0, 1.5), p0.scale + rng.normal(0, 0.015), p0.tx + rng.normal(0, 0.01 * W),
              p0.ty + rng.normal(0, 0.01 * W))
    return p0, p1


def ramp_curve(n: int, kind: str, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """Expression weight per frame and the peak frame index.  'onset': 0 at frame 0 -> 1 at the last frame
    (CK+, Oulu); 'apex': 0 -> 1 at a peak near the middle -> ~0 at the end (MMI)."""
    k = np.arange(n, dtype=float)
    if kind == "onset":
        d = rng.uniform(0.0, 0.15)                       # a short neutral onset
        t = (k / max(n - 1, 1) - d) / (1 - d)
        w = _smoothstep(t)
        w[-1] = 1.0
        return w, n - 1
    peak = int(round((n - 1) * rng.uniform(0.4, 0.6)))
    peak = min(max(peak, 1), n - 2)
    w = np.where(k <= peak, _smoothstep(k / peak), _smoothstep((n - 1 - k) / (n - 1 - peak)))
    w[0] = w[-1] = 0.0
    return w, peak


@dataclass
class SeqSpec:
    subject: str
    sequence: str
    expression: str               # model expression ("happy" ...) or "neutral"
    intensity: float
    labelled: bool
    n_frames: int
    seed: Tuple[int, ...]
    blend: Optional[str] = None   # second expression of an unlabelled, non-prototypic sequence
    kind: str = "onset"           # onset | apex | still
    view: int = 0


def render_sequence(ident: Identity, spec: SeqSpec, size: Tuple[int, int]):
    """Frames (list of uint8 images), landmarks (list of (68,2)) and the peak frame index of one sequence."""
    rng = np.random.default_rng(list(spec.seed))
    W, H = size
    mirror = rng.random() < 0.5
    expr = expression_vector(spec.expression, mirror)
    if spec.blend:
        expr = 0.6 * expr + 0.5 * expression_vector(spec.blend, mirror)
    w, peak = ramp_curve(spec.n_frames, spec.kind, rng)
    p0, p1 = _random_poses(rng, W)
    if spec.view == 1:
        p0.squash = p1.squash = 0.55
        p0.tx += 0.12 * W
        p1.tx += 0.12 * W
    g0, g1 = rng.uniform(0.0, 0.15), rng.uniform(-0.05, 0.05)
    direction = rng.uniform(0, 2 * math.pi)
    gain0, gain1 = 1 + rng.normal(0, 0.04), rng.normal(0, 0.03)
    noise = rng.uniform(1.2, 3.0)
    frames, lms = [], []
    pool = NoisePool(rng, W, H)
    for i in range(spec.n_frames):
        t = i / max(spec.n_frames - 1, 1)
        if spec.kind == "apex":                       # MMI: the head moves away and back, with the expression
            t = float(w[i])
        p = ident.rest + spec.intensity * w[i] * expr
        p = np.where(_NONNEG, np.clip(p, 0, None), p)
        look = Look(g0 + g1 * t, direction, gain0 + gain1 * t, noise, 0.6)
        img, lm = render_face(ident, p, size, _interp_pose(p0, p1, t), look, rng, noise=pool)
        frames.append(img)
        lms.append(lm)
    return frames, lms, peak


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
    if not force:
        for pth in (out, side):
            if pth and _nonempty(pth):
                raise FileExistsError("%s exists and is not empty (use force / --force to replace it)" % pth)
    for pth in (out, side):
        if pth and os.path.exists(pth) and not os.path.isdir(pth):
            raise FileExistsError("%s exists and is not a folder" % pth)
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
