"""Augmentation (4.1: scaling, rotation, intensity) of aligned canvases, and the centre crop."""
import numpy as np

SIZE = 66
CANVAS_MARGIN = 15                      # canvas 96x96: covers scale 0.9 x rotation 10 deg of a 66 crop
AUG_SCALE = (0.9, 1.1)                  # uniform
AUG_ROTATION_DEG = (-10.0, 10.0)        # uniform
AUG_INTENSITY = (0.8, 1.2)              # uniform multiplicative factor


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
    """The centre SIZE x SIZE window of an aligned canvas (the aligned face)."""
    m = (canvas.shape[0] - SIZE) // 2
    return canvas[m:m + SIZE, m:m + SIZE]


def pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Datum's two channels [X, X_r]."""
    return np.stack([a, b])
