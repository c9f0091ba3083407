"""MMI reader (dataset `mmi`).

Layout (possibly wrapped in one more folder):
    Sessions/<id>/<name>.avi          (or image frames <name>.jpg/.png ...)
    Sessions/<id>/session.xml         (or any *.xml in the folder; all are read)
        <Metatag Name="Emotion" Value="N"/>   1 anger, 2 disgust, 3 fear, 4 happiness, 5 sadness, 6 surprise
        <Metatag Name="View" Value="0"/>      0 = frontal; other views are skipped
The subject is taken from the XML (`<Subject id=..>` element, a Subject metatag, or a subject attribute of the root
element), else from the media file name (`S001-...`).
Peak frames: MMI gives none (the paper picked them by hand).  A CSV `session,peak_frame` (0-based frame index in the
session's frame list; `<root>/peaks.csv` is used automatically, or `peaks_csv=`) gives them; without it the middle
frame is used.  Samples are the 3 frames centred on the peak (window shifted inside the sequence, never frame 0);
the reference X_r is the first frame.
Video frames are written as "path/to/x.avi#<index>".  Landmarks mirror tree: `Sessions/<id>/<index %04d>.pts`
(or, for image frames, the image's relative path with suffix .pts).
"""
import csv
import math
import os
import re
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional

from gcnet.config import BASIC6
from gcnet.data.images import VIDEO_EXTS, check_image_file, video_frame_count
from gcnet.data.records import (open_layout, IMAGE_EXTS, DataError, ReadResult, Sample, SequenceInfo,
                                auto_landmarks_root, class_index, find_wrapped, list_dirs, list_files, mirror_landmarks,
                                natural_key, sequence_samples)

SESSIONS = "Sessions"
MMI_CODES = {i + 1: name for i, name in enumerate(BASIC6)}   # 1 anger ... 6 surprise
MIDDLE_NOTE = "MMI peak frames: middle of sequence (no peaks CSV)"


def find_base(root: str) -> Optional[str]:
    return find_wrapped(root, lambda p: os.path.isdir(os.path.join(p, SESSIONS)))


def int_code(text: str) -> Optional[int]:
    """"4", "4.0", "4e0" -> 4; anything that is not a finite whole number -> None."""
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v == int(v) else None


def read_peaks(path: str, res: Optional[ReadResult] = None) -> Dict[str, int]:
    """`session,peak_frame` lines (a header line is allowed) -> {session: index}; other bad lines are skipped
    (named in `res`) and their sessions use the middle frame."""
    peaks = {}
    try:
        with open(path, newline="") as f:
            first = True
            for line, row in enumerate(csv.reader(f), 1):
                if len(row) < 2 or row[0].strip().startswith("#"):
                    continue
                key, peak = row[0].strip(), int_code(row[1].strip())
                if peak is None and not first and res is not None:      # the first row may be a header
                    res.skip("%s:%d" % (path, line), "bad peak frame: %r (peaks CSV)" % row[1].strip()[:20])
                first = False
                if peak is not None:
                    peaks[str(int(key)) if key.isdigit() else key] = peak
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError("cannot read MMI peaks CSV %s: %s" % (path, getattr(e, "strerror", None) or e))
    return peaks


def _attr(el, *names):
    low = {k.lower(): v for k, v in el.attrib.items()}
    for n in names:
        if n in low:
            return low[n]
    return None


def _parse_xml(paths: List[str], res: ReadResult):
    """-> (metatags {name_lower: [values]}, subject or None); unreadable XML files are skipped with a reason."""
    tags: Dict[str, List[str]] = {}
    subject = None
    for p in paths:
        try:
            root = ET.parse(p).getroot()
        except (ET.ParseError, OSError) as e:
            res.skip(p, "unreadable xml: %s" % e)
            continue
        res.sources.append(p)
        if subject is None:
            subject = _attr(root, "subjectid", "subject_id", "subject")
        for el in root.iter():
            tag = el.tag.split("}")[-1].lower() if isinstance(el.tag, str) else ""
            if tag == "metatag":
                name, value = _attr(el, "name"), _attr(el, "value")
                if name is not None and value is not None:
                    tags.setdefault(name.strip().lower(), []).append(value.strip())
            elif tag == "subject" and subject is None:
                subject = _attr(el, "id", "subjectid", "name") or (el.text or "").strip() or None
    for k in ("subject", "subjectid", "subject id", "subject_id"):
        if subject is None and tags.get(k):
            subject = tags[k][0]
    return tags, subject


def _window(peak: int, n: int, k: int) -> List[int]:
    """k frames centred on `peak`, shifted to stay inside frames 1..n-1."""
    k = min(k, n - 1)
    start = min(max(peak - k // 2, 1), n - k)
    return list(range(start, start + k))


def read(root: str, dataset_name: str = "mmi", landmarks_root: Optional[str] = None, peaks_csv: Optional[str] = None,
         peak_frames: int = None, **opts) -> ReadResult:
    spec, root, base = open_layout(root, dataset_name, "mmi", find_base, "an MMI", SESSIONS)
    k_peak = peak_frames or spec.peak_frames
    landmarks_root = landmarks_root or auto_landmarks_root(root) or auto_landmarks_root(base)
    res = ReadResult(layout="mmi", has_landmarks=bool(landmarks_root))
    if peaks_csv is None:
        for b in (root, base):
            if os.path.isfile(os.path.join(b, "peaks.csv")):
                peaks_csv = os.path.join(b, "peaks.csv")
                break
    peaks = None
    if peaks_csv:
        peaks = read_peaks(peaks_csv, res)
        res.sources.append(os.path.abspath(peaks_csv))
        res.note("MMI peak frames: from %s" % os.path.abspath(peaks_csv))
    else:
        res.note(MIDDLE_NOTE)
    not_in_csv, unknown_subject, no_view = [], [], []
    sessions = os.path.join(base, SESSIONS)
    for sid in list_dirs(sessions):
        sdir = os.path.join(sessions, sid)
        xmls = list_files(sdir, (".xml",))
        xmls.sort(key=lambda n: (n.lower() != "session.xml", natural_key(n)))
        if not xmls:
            res.skip(sdir, "unlabelled sequence: no XML")
            continue
        tags, subject = _parse_xml([os.path.join(sdir, x) for x in xmls], res)
        emos = sorted(set(tags.get("emotion", [])))
        if not emos:
            res.skip(sdir, "unlabelled sequence")
            continue
        if len(emos) > 1:
            res.skip(sdir, "multiple emotions: %s" % ",".join(emos), k_peak)
            continue
        code = int_code(emos[0])
        if code not in MMI_CODES:
            res.skip(sdir, "unknown label code: %s" % emos[0], k_peak)
            continue
        views = sorted(set(tags.get("view", [])))
        if not views:
            no_view.append(sid)
        elif views != ["0"]:
            res.skip(sdir, "non-frontal view: View=%s" % ",".join(views))
            continue
        label = class_index(dataset_name, MMI_CODES[code])
        videos = list_files(sdir, VIDEO_EXTS)
        if videos:
            vpath = os.path.join(sdir, videos[0])
            n = video_frame_count(vpath)
            if n < 0:
                res.skip(vpath, "unreadable video", k_peak)
                continue
            frames = ["%s#%d" % (vpath, i) for i in range(n)]
            media = videos[0]
        else:
            imgs = list_files(sdir, IMAGE_EXTS)
            frames = [os.path.join(sdir, f) for f in imgs]
            media = imgs[0] if imgs else ""
        if not frames:
            res.skip(sdir, "no frames: %s" % ("the video has none" if videos else "no video or image in the folder"),
                     k_peak)
            continue
        if len(frames) < 2:
            res.skip(sdir, "no neutral frame: session has %d frame(s)" % len(frames), k_peak)
            continue
        if subject is None:
            m = re.match(r"^(S\d+)[-_]", media, re.IGNORECASE)
            subject = m.group(1) if m else None
        if subject is None:
            subject = "session_%s" % sid
            unknown_subject.append(sid)
        subject = str(subject).strip()

        rel_dirs = [os.path.relpath(sdir, r) for r in (root, base)]

        def lm(i, frame):
            p = None if videos else mirror_landmarks(landmarks_root, [root, base], frame)
            if p is None and landmarks_root:
                for rd in rel_dirs:
                    c = os.path.join(landmarks_root, rd, "%04d.pts" % i)
                    if os.path.isfile(c):
                        return c
            return p

        lms = [lm(i, f) for i, f in enumerate(frames)]
        seq_id = sid
        res.sequences.append(SequenceInfo(subject, seq_id, frames, lms))
        if not videos:
            bad = check_image_file(frames[0])
            if bad:
                res.skip(frames[0], "no neutral frame: reference %s" % bad, sequence_samples(len(frames), k_peak))
                continue
        pkey = sid if (peaks is None or sid in peaks or not sid.isdigit()) else str(int(sid))
        if peaks is not None and pkey in peaks:
            peak = peaks[pkey]
            if not 0 <= peak < len(frames):
                res.skip(sdir, "bad peak frame: %d not in 0..%d (peaks CSV)" % (peak, len(frames) - 1),
                         sequence_samples(len(frames), k_peak))
                continue
        else:
            if peaks is not None:
                not_in_csv.append(sid)
            peak = len(frames) // 2
        for i in _window(peak, len(frames), k_peak):
            bad = None if videos else check_image_file(frames[i])
            if bad:
                res.skip(frames[i], bad, 1)
                continue
            res.samples.append(Sample(subject, seq_id, frames[i], label, frames[0], i, lms[i], lms[0]))
    if not_in_csv:
        res.note("MMI peak frames: %d session(s) not in the peaks CSV use the middle frame (%s)"
                 % (len(not_in_csv), ", ".join(not_in_csv[:5]) + (" ..." if len(not_in_csv) > 5 else "")))
    if unknown_subject:
        res.note("MMI: no subject found for %d session(s); each is its own subject (%s)"
                 % (len(unknown_subject), ", ".join(unknown_subject[:5])))
    if no_view:
        res.note("MMI: %d session(s) without a View metatag are taken as frontal" % len(no_view))
    return res
