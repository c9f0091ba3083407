"""Rendering one grey frame of a face (OpenCV primitives), with head pose, lighting, blur and pixel noise."""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from gcnet.data.synthetic.face import _TH_HAIR, Identity, _cl, face_geometry

DEFAULT_SIZE = (160, 120)                     # (width, height)


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

