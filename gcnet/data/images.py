"""Reading the pixels: image files (a cheap signature check, grey decoding) and video frames, for the readers, the
LMDB builder, predict and the figures.

A *frame* is a string: an image path, or ``"path/to/video.avi#<index>"`` for frame <index> (0-based) of a video.
"""
import os
import re
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mpg", ".mpeg", ".wmv", ".mkv")


def split_frame(frame: str) -> Tuple[str, Optional[int]]:
    """"video.avi#12" -> ("video.avi", 12); "img.png" -> ("img.png", None)."""
    m = re.match(r"^(.*\.(?:%s))#(\d+)$" % "|".join(e[1:] for e in VIDEO_EXTS), frame, re.IGNORECASE)
    if m:
        return m.group(1), int(m.group(2))
    return frame, None


_MAGIC = {
    ".png": [b"\x89PNG\r\n\x1a\n"],
    ".jpg": [b"\xff\xd8"], ".jpeg": [b"\xff\xd8"],
    ".bmp": [b"BM"],
    ".tif": [b"II*\x00", b"MM\x00*"], ".tiff": [b"II*\x00", b"MM\x00*"],
    ".pgm": [b"P2", b"P5"], ".ppm": [b"P3", b"P6"],
}


def check_image_file(path: str) -> Optional[str]:
    """Cheap test of an image file (exists, non-empty, right signature).  Returns a skip reason or None.
    Truncated files that pass this test are caught when the builder decodes them."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing image"
    if size == 0:
        return "corrupt image: empty file"
    magics = _MAGIC.get(os.path.splitext(path)[1].lower())
    if magics:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            return "corrupt image: cannot open (%s)" % e.strerror
        if not any(head.startswith(m) for m in magics):
            return "corrupt image: not a %s file" % os.path.splitext(path)[1][1:].upper()
    return None


def imread_gray(path: str) -> np.ndarray:
    """Decode an image as grey uint8; raises ValueError with a skip reason."""
    import cv2
    buf = np.fromfile(path, dtype=np.uint8) if os.path.exists(path) else None
    if buf is None:
        raise ValueError("missing image")
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
    if img is None or img.size == 0:
        raise ValueError("corrupt image: cannot decode")
    return img


def video_frame_count(path: str) -> int:
    """Frame count of a video (header value, or counted by grabbing when the header has none); -1 if unreadable."""
    import cv2
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return -1
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n > 0:
            return n
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def iter_gray_frames(frames: Iterable[str]) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[str]]]:
    """Yield (frame, grey image or None, skip reason or None) for each frame, in the given order.  Frames of one
    video are decoded in one sequential pass (pass them grouped by video, sorted by index, for speed)."""
    import cv2
    cur_video, cap, pos = None, None, 0
    try:
        for frame in frames:
            path, idx = split_frame(frame)
            if idx is None:
                try:
                    yield frame, imread_gray(path), None
                except ValueError as e:
                    yield frame, None, str(e)
                continue
            if path != cur_video or idx < pos:
                if cap is not None:
                    cap.release()
                cur_video, cap, pos = path, cv2.VideoCapture(path), 0
                if not cap.isOpened():
                    cap.release()
                    cap = None
            if cap is None:
                yield frame, None, "unreadable video"
                continue
            ok = True
            while pos < idx and ok:
                ok = cap.grab()
                pos += 1
            ok, img = cap.read() if ok else (False, None)
            pos += 1
            if not ok or img is None:
                yield frame, None, "corrupt image: cannot decode video frame %d" % idx
                continue
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            yield frame, img, None
    finally:
        if cap is not None:
            cap.release()
