"""Oulu-CASIA VIS reader (dataset `oulu`).

Layout (possibly wrapped in one more folder):
    OriginalImg/VL/Strong/Pxxx/<Anger|Disgust|Fear|Happiness|Sadness|Surprise>/NNN.jpeg
The last 3 frames of a sequence are its peak samples, the first frame is the reference X_r.  The real set has no
landmarks: faces are found by the detector unless a landmarks mirror tree is given (or exists next to the root as
`<root>_landmarks/`), holding `OriginalImg/VL/Strong/Pxxx/<Emotion>/NNN.pts`.
"""
import os
from typing import Optional

from gcnet.data.images import check_image_file
from gcnet.data.records import (open_layout, ReadResult, Sample, SequenceInfo, auto_landmarks_root, class_index,
                                find_wrapped, last_frames, list_dirs, list_frames, mirror_landmarks, sequence_samples)

STRONG = os.path.join("OriginalImg", "VL", "Strong")
EMOTIONS = {"anger": "anger", "disgust": "disgust", "fear": "fear", "happiness": "happiness", "happy": "happiness",
            "sadness": "sadness", "sad": "sadness", "surprise": "surprise"}


def find_base(root: str) -> Optional[str]:
    """Folder holding OriginalImg/VL/Strong (root or one level down)."""
    return find_wrapped(root, lambda p: os.path.isdir(os.path.join(p, STRONG)))


def read(root: str, dataset_name: str = "oulu", landmarks_root: Optional[str] = None, peak_frames: int = None,
         **opts) -> ReadResult:
    spec, root, base = open_layout(root, dataset_name, "oulu", find_base, "an Oulu-CASIA", STRONG)
    k_peak = peak_frames or spec.peak_frames
    landmarks_root = landmarks_root or auto_landmarks_root(root) or auto_landmarks_root(base)
    strong = os.path.join(base, STRONG)
    res = ReadResult(layout="oulu", has_landmarks=bool(landmarks_root))
    short = []
    for subj in list_dirs(strong):
        for emo in list_dirs(os.path.join(strong, subj)):
            seq_dir = os.path.join(strong, subj, emo)
            frames, no_frames = list_frames(seq_dir)
            n_lost = sequence_samples(len(frames), k_peak)
            name = EMOTIONS.get(emo.lower())
            label = class_index(dataset_name, name) if name else -1
            if label < 0:
                res.skip(seq_dir, "unknown label code: folder name %r" % emo, n_lost)
                continue
            if no_frames:
                res.skip(seq_dir, no_frames, n_lost)
                continue
            lms = [mirror_landmarks(landmarks_root, [root, base], f) for f in frames]
            seq_id = "%s/%s" % (subj, emo)
            res.sequences.append(SequenceInfo(subj, seq_id, frames, lms))
            bad = check_image_file(frames[0])
            if bad:
                res.skip(frames[0], "no neutral frame: reference %s" % bad, n_lost)
                continue
            idx = last_frames(len(frames), k_peak)
            if len(idx) < k_peak:
                short.append(seq_id)
            for i in idx:
                bad = check_image_file(frames[i])
                if bad:
                    res.skip(frames[i], bad, 1)
                    continue
                res.samples.append(Sample(subj, seq_id, frames[i], label, frames[0], i, lms[i], lms[0]))
    if short:
        res.note("Oulu-CASIA: %d sequence(s) shorter than %d+1 frames give fewer peak samples" % (len(short), k_peak))
    res.note("Oulu-CASIA: landmarks from %s" % landmarks_root if landmarks_root
             else "Oulu-CASIA: no landmarks: faces located by the detector")
    return res
