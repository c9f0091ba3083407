"""Records shared by the readers (Sample, ReadResult), the fatal-input error, and small file helpers (reading
images and video frames: gcnet.data.images).

A *frame* is a string: an image path, or ``"path/to/video.avi#<index>"`` for frame <index> (0-based) of a video.
Skip reasons are ``"<category>"`` or ``"<category>: <detail>"``; reports count them by category.
"""
import collections
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from gcnet.data.images import split_frame
from gcnet.util import IMAGE_EXTS, DataError  # noqa: F401  (the readers import them from here)

@dataclass(frozen=True)
class Sample:
    subject: str
    sequence: str
    frame: str                      # absolute image path, or "video.avi#index"
    label: int                      # class index of the dataset (gcnet.config.DATASETS[name].class_names)
    reference: str                  # the neutral frame X_r of the same sequence (first frame)
    frame_index: int                # index of `frame` in its sequence
    landmarks: Optional[str] = None  # landmark file of `frame` (68 or 5 points) or None -> detector
    ref_landmarks: Optional[str] = None


@dataclass
class SequenceInfo:
    """All frames of one labelled sequence (used for the pretraining LMDB when no WebFace root is given)."""
    subject: str
    sequence: str
    frames: List[str]
    landmarks: List[Optional[str]]


@dataclass
class ReadResult:
    samples: List[Sample] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)   # (path, reason)
    notes: List[str] = field(default_factory=list)
    sequences: List[SequenceInfo] = field(default_factory=list)    # labelled sequences, all frames
    sources: List[str] = field(default_factory=list)               # label/xml/csv files read (for the manifest)
    layout: str = ""
    lost: Dict[str, int] = field(default_factory=dict)             # path of a skip entry -> samples it cost
    has_landmarks: bool = False                                    # a landmark source exists (else: detector)

    def skip(self, path: str, reason: str, lost: int = 0) -> None:
        """Record a skipped file once (the first reason wins); `lost`: samples it costs, added up."""
        path = str(path)
        if path not in self.lost:
            self.skipped.append((path, reason))
            self.lost[path] = 0
        self.lost[path] += int(lost)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def reason_category(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def count_reasons(skipped: Iterable[Tuple[str, str]], lost: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """Entries per reason category, or (with `lost`: path -> samples) samples lost per category."""
    c = collections.Counter()
    for p, r in skipped:
        c[reason_category(r)] += 1 if lost is None else lost.get(p, 0)
    return dict(sorted(c.items()))


# ----------------------------------------------------------------------------------------------- small helpers
def natural_key(s: str):
    """Sort key with digit runs compared as numbers ("S5" < "S10")."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(s)) if t != ""]


def list_dirs(path: str) -> List[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted((n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n))),
                  key=natural_key)


def list_files(path: str, exts: Tuple[str, ...]) -> List[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted((n for n in names if not n.startswith(".") and n.lower().endswith(exts)
                   and os.path.isfile(os.path.join(path, n))), key=natural_key)


def list_frames(seq_dir: str) -> Tuple[List[str], Optional[str]]:
    """(image paths of a sequence folder, None), or (what was found, skip reason) when the folder is missing,
    unreadable, holds no image, or holds a single frame (no neutral frame besides the peak)."""
    if not os.path.isdir(seq_dir):
        return [], "no frames: image folder missing"
    try:
        os.listdir(seq_dir)
    except OSError as e:
        return [], "no frames: cannot list the image folder (%s)" % e.strerror
    frames = [os.path.join(seq_dir, f) for f in list_files(seq_dir, IMAGE_EXTS)]
    if not frames:
        return frames, "no frames: no image in the folder"
    if len(frames) < 2:
        return frames, "no neutral frame: sequence has %d frame(s)" % len(frames)
    return frames, None


def check_writable(path: str, what: str = "output folder") -> str:
    """Create `path` if needed and write a probe file in it -> absolute path; DataError naming it otherwise."""
    a = os.path.abspath(os.path.expanduser(str(path)))
    try:
        os.makedirs(a, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=a)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise DataError("%s %s is not writable (%s): choose another folder" % (what, a, e.strerror or e))
    return a


def auto_landmarks_root(root: str) -> Optional[str]:
    """`<root>/../<basename(root)>_landmarks/` when it exists (written by the synthetic sets)."""
    root = os.path.abspath(root)
    cand = os.path.join(os.path.dirname(root), os.path.basename(root.rstrip(os.sep)) + "_landmarks")
    return cand if os.path.isdir(cand) else None


def mirror_landmarks(landmarks_root: Optional[str], roots: Iterable[str], path: str) -> Optional[str]:
    """Landmark file of image `path` in a mirror tree: its path relative to one of `roots`, suffix -> .pts."""
    if not landmarks_root:
        return None
    for r in roots:
        try:
            rel = os.path.relpath(path, r)
        except ValueError:
            continue
        if rel.startswith(".."):
            continue
        cand = os.path.join(landmarks_root, os.path.splitext(rel)[0] + ".pts")
        if os.path.isfile(cand):
            return cand
    return None


def find_wrapped(root: str, test) -> Optional[str]:
    """`root` if test(root) else the single (first, sorted) child folder of root passing test, else None."""
    if test(root):
        return root
    for d in list_dirs(root):
        p = os.path.join(root, d)
        if test(p):
            return p
    return None


def open_layout(root: str, dataset_name: str, reader: str, find_base, title: str, marker: str):
    """Common start of every reader: the dataset is one this reader serves, the root exists and holds the layout
    (`find_base(root)` -> folder holding `marker`, or None).  Returns (DatasetSpec, root, base)."""
    from gcnet.config import DATASETS
    spec = DATASETS.get(dataset_name)
    if spec is None or spec.reader != reader:
        served = ", ".join(k for k, v in DATASETS.items() if v.reader == reader)
        raise DataError("the %s reader serves %s, not '%s'" % (title, served, dataset_name))
    root = check_root(root)
    base = find_base(root)
    if base is None:
        raise DataError("not %s root (no %s/ in %s or one level down)" % (title, marker, root))
    return spec, root, base


def check_root(root: str) -> str:
    """Absolute root; DataError when it is missing, not a folder, or empty."""
    if root is None:
        raise DataError("no data root given")
    a = os.path.abspath(os.path.expanduser(root))
    if not os.path.exists(a):
        raise DataError("data root does not exist: %s" % a)
    if not os.path.isdir(a):
        raise DataError("data root is not a folder: %s" % a)
    try:
        entries = [n for n in os.listdir(a) if not n.startswith(".")]
    except OSError as e:
        raise DataError("cannot list data root %s: %s" % (a, e.strerror))
    if not entries:
        raise DataError("data root is empty: %s" % a)
    return a


def subject_folder(subject: str, frame: str) -> str:
    """The folder named after `subject` above a frame (CK+ Sxxx/, Oulu Pxxx/), else the frame's own folder (MMI
    sessions, whose subject comes from the XML)."""
    d = os.path.dirname(split_frame(frame)[0])
    p = d
    while p and os.path.dirname(p) != p:
        if os.path.basename(p) == subject:
            return p
        p = os.path.dirname(p)
    return d


def check_subject_case(res: "ReadResult") -> None:
    """DataError naming both folders when two subject ids differ only in letter case (S005 and s005, e.g. after
    trees were merged on a case-insensitive disk): the same person would land in two folds, in training and in
    test.  Stopping is the one safe choice: which spelling is right, and whether two same-named sequences are one,
    only the user can tell."""
    first: Dict[str, Tuple[str, str]] = {}
    for subject, frame in [(s.subject, s.frame) for s in res.samples] + [
            (q.subject, q.frames[0]) for q in res.sequences if q.frames]:
        key = subject.casefold()
        if key not in first:
            first[key] = (subject, frame)
        elif first[key][0] != subject:
            a, b = sorted([first[key], (subject, frame)])
            raise DataError("subject ids %s and %s differ only in letter case (%s, %s): they would be two subjects "
                            "in different folds, the same person in training and test; rename one folder (or its "
                            "subject id) so that they match" % (a[0], b[0], subject_folder(*a), subject_folder(*b)))


def class_index(dataset_name: str, class_name: str) -> int:
    """Index of `class_name` in the dataset's class list, -1 when the protocol has no such class."""
    from gcnet.config import dataset_spec
    names = dataset_spec(dataset_name).class_names
    return names.index(class_name) if class_name in names else -1


def last_frames(n: int, k: int) -> List[int]:
    """Indices of the last k frames of an n-frame sequence, never the first frame (the reference)."""
    return list(range(max(1, n - k), n))


def sequence_samples(n: int, k: int, neutral: bool = False) -> int:
    """Samples a labelled n-frame sequence gives (k peaks, + the neutral frame); k (+1) when n < 2 (unknown)."""
    return (len(last_frames(n, k)) if n >= 2 else k) + (1 if neutral else 0)
