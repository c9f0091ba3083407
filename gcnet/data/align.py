"""5-point face alignment to a 66x66 grey crop (paper section 4.1: "normalized based on 5 points (eyes, the end of a
nose, and two ends of lips) and resized into 66x66").

Points, in this order, in image coordinates (x right, y down, pixel centres at integers):
    0 eye centre on the image's left, 1 eye centre on the image's right, 2 nose tip,
    3 mouth corner on the image's left, 4 mouth corner on the image's right.
From 68-point (iBUG/CK+) landmarks (0-based): eyes = mean of 36-41 and of 42-47, nose tip 30, mouth corners 48, 54.
From the mediapipe face mesh: eyes = mean of 33/133 and of 362/263, nose tip 1, mouth corners 61 and 291.

TEMPLATE_66 (the target positions in the 66x66 output) is left-right symmetric about x = 32.5 (the centre of a
66-pixel row): eye distance 24 px (as wide as about half the crop, so cheeks and both eyebrows fit), eyes at y = 22
and mouth corners at y = 46 (eye-to-mouth 24 px ~ the eye distance, the usual face proportion), which leaves
~20 px of forehead above the eyes and puts the chin near the bottom edge.  A random 64x64 crop (train) or the
centre crop (test) drops at most 2 pixels on each side.

The transform is the least-squares similarity (rotation, uniform scale, translation; no reflection) of Umeyama
(1991) in closed form, applied with cv2.warpAffine (bilinear, border replicated).
"""
from typing import Optional, Tuple

import numpy as np

TEMPLATE_SIZE = 66
TEMPLATE_66 = np.array([
    [20.5, 22.0],   # eye, image left
    [44.5, 22.0],   # eye, image right
    [32.5, 35.0],   # nose tip
    [23.0, 46.0],   # mouth corner, image left
    [42.0, 46.0],   # mouth corner, image right
], dtype=np.float64)

MESH_IDX = {"eye_l": (33, 133), "eye_r": (362, 263), "nose": 1, "mouth_l": 61, "mouth_r": 291}


def template(size: int = TEMPLATE_SIZE, margin: int = 0) -> np.ndarray:
    """Template points for a size x size crop (scaled from the 66 one), shifted by `margin` (a larger canvas
    whose centre size x size window is exactly the aligned crop)."""
    t = (TEMPLATE_66 + 0.5) * (size / float(TEMPLATE_SIZE)) - 0.5
    return t + margin


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix M of the least-squares similarity with M @ [x, y, 1] ~ dst (Umeyama's closed form)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError("similarity_transform needs two (N,2) point sets, N >= 2")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum(1).mean()
    if var_s < 1e-9:
        raise ValueError("degenerate points (all equal)")
    cov = dc.T @ sc / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.diag([1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0])
    R = U @ D @ Vt
    scale = np.trace(np.diag(S) @ D) / var_s
    t = mu_d - scale * R @ mu_s
    return np.hstack([scale * R, t[:, None]])


def transform_points(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ M[:, :2].T + M[:, 2]


def five_points(pts: np.ndarray) -> np.ndarray:
    """68 -> 5 points (see module doc); 5 points are returned as they are."""
    pts = np.asarray(pts, dtype=np.float64)
    if pts.shape == (5, 2):
        return pts.copy()
    if pts.shape == (68, 2):
        return np.array([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
    raise ValueError("expected 5 or 68 points, got %d" % len(pts))


def load_points(path: str) -> np.ndarray:
    """Read a landmark file -> (N,2) float array, N in (5, 68).  Accepts "x y" / "x,y" lines (CK+ *_landmarks.txt,
    this project's .pts) and the iBUG .pts format (version / n_points / { ... }).  Raises ValueError."""
    pts = []
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror))
    for ln in lines:
        ln = ln.strip()
        if not ln or ln in "{}" or ":" in ln or ln.startswith("#"):
            continue
        parts = ln.replace(",", " ").split()
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise ValueError("not a number in %s: %r" % (path, ln[:40]))
        if len(vals) != 2:
            raise ValueError("expected 'x y' lines in %s, got %r" % (path, ln[:40]))
        pts.append(vals)
    arr = np.array(pts, dtype=np.float64).reshape(-1, 2)
    if len(arr) not in (5, 68):
        raise ValueError("expected 5 or 68 points in %s, got %d" % (path, len(arr)))
    if not np.all(np.isfinite(arr)):
        raise ValueError("non-finite point in %s" % path)
    return arr


def align_face(gray: np.ndarray, pts5: np.ndarray, size: int = TEMPLATE_SIZE, margin: int = 0) -> np.ndarray:
    """Warp `gray` so that its 5 points land on the template: uint8 (size + 2*margin) square."""
    import cv2
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    if gray.dtype != np.uint8:
        gray = np.clip(gray, 0, 255).astype(np.uint8)
    M = similarity_transform(five_points(pts5), template(size, margin))
    out = size + 2 * margin
    return cv2.warpAffine(gray, M, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FaceDetector:
    """mediapipe face mesh (static images), imported on first use.  detect(gray) -> (5,2) points or None."""

    def __init__(self):
        self._mesh = None
        self.error: Optional[str] = None

    def _load(self):
        if self._mesh is None and self.error is None:
            try:
                import mediapipe as mp
                self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                             refine_landmarks=False, min_detection_confidence=0.5)
            except Exception as e:   # ImportError, missing model files, ...
                self.error = "mediapipe not available (%s: %s)" % (type(e).__name__, e)
        return self._mesh

    def detect(self, gray: np.ndarray) -> Optional[np.ndarray]:
        import cv2
        mesh = self._load()
        if mesh is None:
            return None
        rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB) if gray.ndim == 2 else cv2.cvtColor(gray, cv2.COLOR_BGR2RGB)
        r = mesh.process(np.ascontiguousarray(rgb))
        if not r.multi_face_landmarks:
            return None
        lm = r.multi_face_landmarks[0].landmark
        h, w = rgb.shape[:2]
        p = lambda i: np.array([lm[i].x * w, lm[i].y * h])
        return np.array([(p(33) + p(133)) / 2, (p(362) + p(263)) / 2, p(1), p(61), p(291)])

    def close(self):
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None


_DETECTOR: Optional[FaceDetector] = None


def detector() -> FaceDetector:
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = FaceDetector()
    return _DETECTOR


POINT_NAMES = ("left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner")
OUTSIDE_MARGIN = 0.05        # how far (fraction of the image's longer side) a point may lie outside the image


def check_points_fit(pts5: np.ndarray, shape, path: str) -> None:
    """ValueError naming the landmark file when one of the 5 alignment points lies outside the image by more than
    OUTSIDE_MARGIN of its longer side: such a file belongs to another image (the aligned face would be blank or
    border pixels, and still get a confident label)."""
    h, w = shape[:2]
    m = OUTSIDE_MARGIN * max(h, w)
    for name, (x, y) in zip(POINT_NAMES, np.asarray(pts5, dtype=np.float64)):
        if not (-m <= x <= w - 1 + m and -m <= y <= h - 1 + m):
            raise ValueError("%s point (%.1f, %.1f) is outside the %dx%d image (margin %.0f px): %s does not "
                             "fit this image" % (name, x, y, w, h, m, path))


def get_points(gray: np.ndarray, landmarks: Optional[str]) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """5 points of a face: from its landmark file (which must fit the image), else from the detector.
    -> (pts5, None) or (None, reason)."""
    if landmarks:
        try:
            pts = five_points(load_points(landmarks))
            check_points_fit(pts, gray.shape, landmarks)
            return pts, None
        except ValueError as e:
            return None, "bad landmarks: %s" % e
    pts = detector().detect(gray)
    if pts is None:
        return None, "no face found"
    return pts, None


def align_frame(gray: np.ndarray, landmarks: Optional[str], size: int = TEMPLATE_SIZE, margin: int = 0):
    """-> (aligned uint8 or None, reason or None)."""
    pts, why = get_points(gray, landmarks)
    if pts is None:
        return None, why
    try:
        return align_face(gray, pts, size, margin), None
    except ValueError as e:
        return None, "bad landmarks: %s" % e
