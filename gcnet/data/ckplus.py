"""CK+ reader (datasets `ck+`, `ck+8`, `synthetic`).

Layout (the root may wrap everything in one more folder; it is searched one level down):
    cohn-kanade-images/Sxxx/yyy/Sxxx_yyy_zzzzzzzz.png
    Emotion/Sxxx/yyy/Sxxx_yyy_zzzzzzzz_emotion.txt      (or Emotion_labels/; one float, CK+ code 0-7)
    Landmarks/Sxxx/yyy/Sxxx_yyy_zzzzzzzz_landmarks.txt  (optional, 68 lines "x y")
Only labelled sequences give samples: the last 3 frames (label = class index of the CK+ code's emotion), and for
`ck+8` also the first frame as neutral.  The reference X_r is the first frame of the same sequence.
"""
import math
import os
import re
from typing import List, Optional

from gcnet.config import CKPLUS_EMOTIONS
from gcnet.data.images import check_image_file
from gcnet.data.records import (open_layout, auto_landmarks_root, DataError, ReadResult, Sample, SequenceInfo,
                                class_index, find_wrapped, last_frames, list_dirs, list_files, list_frames,
                                mirror_landmarks, natural_key, sequence_samples)

IMAGES_DIR = "cohn-kanade-images"
LABEL_DIRS = ("Emotion", "Emotion_labels")
LANDMARK_DIRS = ("Landmarks", "Landmarks_labels")


def _descend(path: str, names) -> str:
    """Some archives unpack as Emotion_labels/Emotion/Sxxx: step into a same-role child holding no subjects."""
    for _ in range(2):
        subs = list_dirs(path)
        if any(s[:1].upper() == "S" and s[1:].isdigit() for s in subs):
            return path
        inner = [s for s in subs if s in names]
        if len(inner) != 1:
            return path
        path = os.path.join(path, inner[0])
    return path


def _find_dir(bases: List[str], names) -> Optional[str]:
    for b in bases:
        for n in names:
            p = os.path.join(b, n)
            if os.path.isdir(p):
                return _descend(p, names)
    return None


def find_base(root: str) -> Optional[str]:
    return find_wrapped(root, lambda p: os.path.isdir(os.path.join(p, IMAGES_DIR)))


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _parse_code(path: str):
    """CK+ emotion file (one number, e.g. `3.0000000e+00`) -> int code 0-7, or a skip reason string."""
    try:
        with open(path, "r", errors="replace") as f:
            text = f.read().split()
    except OSError as e:
        return "unreadable label file: %s" % e.strerror
    if not text:
        return "unreadable label file: empty"
    if len(text) > 1 or not _NUMBER.fullmatch(text[0]):
        return "unknown label code: %r" % " ".join(text)[:40]
    v = float(text[0])
    if not math.isfinite(v) or v != int(v) or not 0 <= int(v) < len(CKPLUS_EMOTIONS):
        return "unknown label code: %s" % ("%g" % v if math.isfinite(v) else repr(text[0][:20]))
    return int(v)


def _sequences(images: str, labels: str):
    """(subject, sequence) pairs of the image tree and of the label tree (a label without images is a sequence)."""
    pairs = set()
    for tree in (images, labels):
        for subj in list_dirs(tree):
            pairs.update((subj, seq) for seq in list_dirs(os.path.join(tree, subj)))
    return sorted(pairs, key=lambda t: (natural_key(t[0]), natural_key(t[1])))


def read(root: str, dataset_name: str = "ck+", landmarks_root: Optional[str] = None, peak_frames: int = None,
         **opts) -> ReadResult:
    spec, root, base = open_layout(root, dataset_name, "ckplus", find_base, "a CK+", IMAGES_DIR)
    k_peak = peak_frames or spec.peak_frames
    images = _descend(os.path.join(base, IMAGES_DIR), (IMAGES_DIR,))
    bases = [base, root] + [os.path.join(root, d) for d in list_dirs(root)]
    labels = _find_dir(bases, LABEL_DIRS)
    lmdir = _find_dir(bases, LANDMARK_DIRS)
    res = ReadResult(layout="ckplus")
    if labels is None:
        raise DataError("CK+ root %s has no label folder (looked for %s in %s and one level down)"
                        % (root, " or ".join(d + "/" for d in LABEL_DIRS), root))
    mirror_roots = [root, base]
    landmarks_root = landmarks_root or auto_landmarks_root(root) or auto_landmarks_root(base)
    short = []
    res.has_landmarks = bool(lmdir or landmarks_root)
    neutral = spec.neutral_label >= 0
    for subj, seq in _sequences(images, labels):
        seq_dir = os.path.join(images, subj, seq)
        frames, no_frames = list_frames(seq_dir)
        lab_dir = os.path.join(labels, subj, seq)
        lab_files = [os.path.join(lab_dir, f) for f in list_files(lab_dir, (".txt",))]
        emo = [f for f in lab_files if f.endswith("_emotion.txt")] or lab_files
        if not emo:
            if os.path.isdir(seq_dir):      # a label folder without label file or images holds nothing
                res.skip(seq_dir, "unlabelled sequence")
            continue
        n_lost = sequence_samples(len(frames), k_peak, neutral)
        res.sources.append(emo[0])
        code = _parse_code(emo[0])
        if isinstance(code, str):
            res.skip(emo[0], code, n_lost)
            continue
        label = class_index(dataset_name, CKPLUS_EMOTIONS[code])
        if label < 0:
            res.skip(emo[0], "unknown label code: %d (%s is not a class of %s)"
                     % (code, CKPLUS_EMOTIONS[code], dataset_name))
            continue
        if no_frames:
            res.skip(seq_dir, no_frames, n_lost)
            continue

        def lm(path):
            if lmdir:
                stem = os.path.splitext(os.path.basename(path))[0]
                p = os.path.join(lmdir, subj, seq, stem + "_landmarks.txt")
                if os.path.isfile(p):
                    return p
            return mirror_landmarks(landmarks_root, mirror_roots, path)

        lms = [lm(f) for f in frames]
        seq_id = "%s/%s" % (subj, seq)
        res.sequences.append(SequenceInfo(subj, seq_id, frames, lms))
        ref = frames[0]
        bad = check_image_file(ref)
        if bad:
            res.skip(ref, "no neutral frame: reference %s" % bad, n_lost)
            continue
        idx = last_frames(len(frames), k_peak)
        if len(idx) < k_peak:
            short.append(seq_id)
        if neutral:
            idx = [0] + idx
        for i in idx:
            bad = check_image_file(frames[i]) if i else None
            if bad:
                res.skip(frames[i], bad, 1)
                continue
            res.samples.append(Sample(subj, seq_id, frames[i], spec.neutral_label if i == 0 else label, ref, i,
                                      lms[i], lms[0]))
    if short:
        res.note("CK+: %d sequence(s) shorter than %d+1 frames give fewer peak samples (%s)"
                 % (len(short), k_peak, ", ".join(short[:5]) + (" ..." if len(short) > 5 else "")))
    if lmdir is None and not landmarks_root:
        res.note("CK+: no Landmarks/ folder: faces located by the detector")
    return res
