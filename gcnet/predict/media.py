"""What tools/predict.py reads: photos, videos (what OpenCV decodes) and frame folders, as grey frames, and their
alignment to the 66x66 faces of the test LMDB (the same 5-point alignment and crop as gcnet.data.lmdb_build)."""
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from gcnet.data.images import VIDEO_EXTS
from gcnet.data.records import natural_key
from gcnet.util import IMAGE_EXTS, UsageError, walk_files


@dataclass
class Source:
    """One input: kind "image" (a photo), "video" (a file OpenCV decodes) or "frames" (a folder of one video's
    frames, in name order); `error` when it cannot be used at all (then it is one error record)."""
    kind: str
    path: str
    frames: List[str] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class Frame:
    """A frame to classify: its record fields (file; video, frame index, time for video) and the grey image or
    the reason it has none."""
    kind: str
    record: dict
    index: int
    gray: Optional[np.ndarray] = None
    error: Optional[str] = None


def collect_sources(paths, frame_folders: bool = False, notes=None) -> List[Source]:
    """Sources in the order of `paths`: a video file is one video; a folder is one video's frames when
    `frame_folders` (its images directly inside, natural name order), else its photos (recursively, sorted, through
    links to folders: gcnet.util.walk_files; a folder that cannot be listed is an error source, a folder reached a
    second time a "path: why" in `notes`)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            if frame_folders:
                frames = sorted((os.path.join(p, n) for n in os.listdir(p) if n.lower().endswith(IMAGE_EXTS)
                                 and not n.startswith(".") and os.path.isfile(os.path.join(p, n))), key=natural_key)
                out.append(Source("frames", p, frames, None if frames else
                                  "no image files (%s) in this frame folder" % " ".join(IMAGE_EXTS)))
                continue
            found, left = walk_files(p, IMAGE_EXTS)
            out += [Source("image", f) for f in found]
            for where, why in left:
                if why.startswith("not followed") and notes is not None:
                    notes.append("%s: %s" % (where, why))
                else:
                    out.append(Source("image", where, error=why))
            if not found and not left:
                out.append(Source("image", p, error="no image files (%s) in this folder" % " ".join(IMAGE_EXTS)))
        elif os.path.exists(p):
            out.append(Source("video" if p.lower().endswith(VIDEO_EXTS) else "image", p))
        else:
            out.append(Source("image", p, error="no such file or folder"))
    return out


def collect_images(paths, notes=None):
    """[(file, None)] for files given and image files found (recursively, sorted, through links to folders) in
    folders given, [(path, reason)] for what is neither and for folders that cannot be listed, in the order of
    `paths`; `notes` (a list) receives "path: why" of each folder not walked twice (link loops)."""
    return [(s.path, s.error) for s in collect_sources(paths, notes=notes)]


# ----------------------------------------------------------------------------------------------- landmarks
def _stem_key(name):
    stem = os.path.splitext(os.path.basename(name))[0]
    return stem[:-len("_landmarks")] if stem.endswith("_landmarks") else stem


class LandmarkFinder:
    """Landmark files for --landmarks: None (none: the face detector), one file (one photo only) or a folder
    searched recursively for <stem>_landmarks.txt, <stem>.pts, <stem>.txt (in that preference).  A photo or a
    frame-folder frame is found by its file's stem; frame i of a video V by <folder>/<V's stem>/<i>[_landmarks].txt
    or .pts (any zero padding of i)."""

    def __init__(self, spec, n_images):
        self.spec, self.one, self.index = spec, None, {}
        if not spec:
            return
        if os.path.isfile(spec):
            if n_images != 1:
                raise UsageError("--landmarks %s is one file but %d images were given; pass a folder of landmark "
                                 "files named after the images instead" % (spec, n_images))
            self.one = spec
            return
        if not os.path.isdir(spec):
            raise UsageError("--landmarks %s does not exist" % spec)
        rank = {".pts": 0, ".txt": 1}
        for path in walk_files(spec, tuple(rank))[0]:
            n = os.path.basename(path)
            stem = _stem_key(n)
            prio = (0 if n.endswith("_landmarks.txt") else 1 + rank[os.path.splitext(n)[1].lower()])
            keys = [stem] + (["%s/%d" % (os.path.basename(os.path.dirname(path)), int(stem))] if stem.isdigit()
                             else [])
            for key in keys:
                if key not in self.index or prio < self.index[key][0]:
                    self.index[key] = (prio, path)

    def __call__(self, image: str) -> Optional[str]:
        """The landmark file of a photo or frame file, or None."""
        return self.one or self.index.get(_stem_key(image), (None, None))[1]

    def video(self, video: str, index: int) -> Optional[str]:
        """The landmark file of frame `index` of a video file, or None."""
        key = "%s/%d" % (os.path.splitext(os.path.basename(video))[0], index)
        return self.index.get(key, (None, None))[1]

    def find(self, frame: "Frame") -> Optional[str]:
        return self.video(frame.record["file"], frame.index) if frame.kind == "video" else self(frame.record["file"])


def landmark_finder(spec, n_images) -> LandmarkFinder:
    """-> LandmarkFinder (callable: image path -> landmark file or None)."""
    return LandmarkFinder(spec, n_images)


# ----------------------------------------------------------------------------------------------- frames
def read_image(path):
    """(grey uint8 image, None) or (None, reason); the decoder of the LMDB build (records.imread_gray)."""
    from gcnet.data.images import imread_gray
    try:
        return imread_gray(path), None
    except ValueError as e:
        return None, "cannot read the image (%s)" % e


def align_image(gray, landmarks=None):
    """(aligned 66x66 uint8 face, None) or (None, reason): exactly the test-LMDB path of gcnet.data.lmdb_build
    (5-point alignment onto its margin canvas, centre 66x66 crop)."""
    from gcnet.data import align as A
    from gcnet.data.lmdb_build import CANVAS_MARGIN, SIZE, crop
    canvas, why = A.align_frame(gray, landmarks, SIZE, CANVAS_MARGIN)
    if canvas is None:
        return None, why
    return np.ascontiguousarray(crop(canvas)), None


def load_aligned(path, landmarks=None):
    """An image file -> (aligned 66x66 uint8 face, None) or (None, reason), as the test LMDB holds it."""
    gray, why = read_image(path)
    return (None, why) if gray is None else align_image(gray, landmarks)


def _time(index: int, fps: Optional[float]):
    return round(index / fps, 4) if fps else None


def iter_frames(src: Source, wanted: Callable[[int], bool], fps: Optional[float] = None) -> Iterator[Frame]:
    """The frames of a source that `wanted(index)` selects (a photo is frame 0), decoded in one pass.  A video's
    time is index / its frame rate (None when the file gives none); a frame folder's is index / `fps` (None when
    not given).  A frame that cannot be decoded is a Frame with an error; a video that cannot be opened is one."""
    if src.kind == "image":
        gray, why = read_image(src.path)
        yield Frame("image", {"file": src.path}, 0, gray, why)
        return
    if src.kind == "frames":
        for i, f in enumerate(src.frames):
            if wanted(i):
                gray, why = read_image(f)
                yield Frame("frames", {"file": f, "video": src.path, "frame": i, "time": _time(i, fps)}, i, gray, why)
        return
    import cv2
    cap = cv2.VideoCapture(src.path)
    try:
        if not cap.isOpened():
            yield Frame("video", {"file": src.path}, -1, None, "unreadable video (OpenCV cannot open it)")
            return
        rate = cap.get(cv2.CAP_PROP_FPS)
        rate = rate if rate and math.isfinite(rate) and rate > 0 else None
        header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        i = 0
        while cap.grab():
            if wanted(i):
                ok, img = cap.retrieve()
                rec = {"file": src.path, "frame": i, "time": _time(i, rate)}
                if not ok or img is None:
                    yield Frame("video", rec, i, None, "cannot decode video frame %d" % i)
                else:
                    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
                    yield Frame("video", rec, i, gray, None)
            i += 1
        if i == 0:
            yield Frame("video", {"file": src.path}, -1, None, "no frame could be decoded")
        elif header > i:
            yield Frame("video", {"file": src.path, "frame": i, "time": _time(i, rate)}, i, None,
                        "decoding stopped at frame %d of the %d the file declares" % (i, header))
    finally:
        cap.release()


def parse_reference(spec: Optional[str]) -> Tuple[Optional[str], Optional[object]]:
    """--reference: None -> (None, None); "first:K" -> ("first", K); else ("image", path)."""
    if spec is None:
        return None, None
    if spec.startswith("first:"):
        k = spec[len("first:"):]
        if not k.isdigit() or int(k) < 1:
            raise UsageError("--reference %s: K of first:K must be a positive integer" % spec)
        return "first", int(k)
    if not os.path.isfile(spec):
        raise UsageError("--reference %s: no such image file (or first:K for videos)" % spec)
    return "image", spec
