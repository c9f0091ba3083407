"""Face model: FACS-like parameters, expressions as parameter offsets, identities, face geometry (68 landmarks).

See docs/synthetic.md for the model.  Units: the face half-width; x right, y down.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

# the 7 expressions of the model, in CK+ code order (CK+ code = index + 1)
EXPRESSIONS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

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


