"""CASIA-WebFace reader (pretraining only): `<root>/<identity>/<NNN>.jpg`, label = index of the identity among the
sorted identity folders.  Every image is a Sample whose reference is itself (pretraining Datum [X, X]).
Landmarks: mirror tree `<identity>/<NNN>.pts` (given, or `<root>_landmarks/` next to the root), else detector.
"""
import os
from typing import Optional

from gcnet.data.images import check_image_file
from gcnet.data.records import (IMAGE_EXTS, ReadResult, Sample, auto_landmarks_root, check_root, list_dirs, list_files,
                                mirror_landmarks)


def looks_like(root: str, probe: int = 5) -> bool:
    """Folders of images directly under the root (checked on the first few folders)."""
    dirs = list_dirs(root)
    if not dirs:
        return False
    return all(list_files(os.path.join(root, d), IMAGE_EXTS) for d in dirs[:probe])


def read(root: str, dataset_name: str = "webface", landmarks_root: Optional[str] = None, check_files: bool = True,
         **opts) -> ReadResult:
    root = check_root(root)
    landmarks_root = landmarks_root or auto_landmarks_root(root)
    res = ReadResult(layout="webface", has_landmarks=bool(landmarks_root))
    ids = [d for d in list_dirs(root) if list_files(os.path.join(root, d), IMAGE_EXTS)]
    for d in list_dirs(root):
        if d not in ids:
            res.skip(os.path.join(root, d), "no images in identity folder")
    for label, ident in enumerate(ids):
        for i, f in enumerate(list_files(os.path.join(root, ident), IMAGE_EXTS)):
            p = os.path.join(root, ident, f)
            bad = check_image_file(p) if check_files else None
            if bad:
                res.skip(p, bad)
                continue
            lm = mirror_landmarks(landmarks_root, [root], p)
            res.samples.append(Sample(ident, ident, p, label, p, i, lm, lm))
    res.note("WebFace: %d identities, %d images" % (len(ids), len(res.samples)))
    if landmarks_root:
        res.note("WebFace: landmarks from %s" % landmarks_root)
    return res
