"""Sequences: expression ramps, head motion and lighting over the frames of one sequence."""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from gcnet.data.synthetic.face import _NONNEG, Identity, _smoothstep, expression_vector
from gcnet.data.synthetic.render import Look, NoisePool, Pose, render_face


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

