"""tools/predict.py's work: classify the faces of photos, videos and frame folders with a trained model in Caffe or
onnxruntime, optionally with the person's own reference (paper: X_r, a neutral face of the same person) in place of
the generated one, and return one record per photo or processed frame."""
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from gcnet.inference import MissingVariant, crop_scale, open_model
from gcnet.predict.media import (LandmarkFinder, Source, align_image, collect_sources, iter_frames, load_aligned,
                                 parse_reference)
from gcnet.util import UsageError

# the keys of a record, in the order they are printed (--json)
RECORD_KEYS = ("file", "video", "frame", "time", "label", "probs", "with_reference", "given_reference",
               "reference_frames", "reference", "error")


@dataclass
class PredictOptions:
    model: str                           # a model folder (or an exported .onnx file for the onnx backend)
    inputs: List[str]                    # photos, folders of photos, videos, frame folders (frame_folders)
    backend: Optional[str] = None        # "caffe" | "onnx" | None: caffe where pycaffe imports, else onnx
    landmarks: Optional[str] = None      # landmark file (one photo) or folder
    reference: Optional[str] = None      # IMG or first:K (videos)
    every: int = 1                       # keep every N-th frame of a video
    frame_folders: bool = False          # a folder is one video's frames (else a folder of photos)
    fps: Optional[float] = None          # frame rate of frame folders (time = index / fps)
    save_reference: Optional[str] = None  # folder for aligned input | generated reference PNGs
    plot: Optional[str] = None           # timeline PNG of the videos' class probabilities


@dataclass
class PredictResult:
    records: List[dict]
    class_names: List[str]
    backend: str
    notes: List[str]
    plot: Optional[str] = None

    @property
    def failed(self) -> List[dict]:
        return [r for r in self.records if r.get("error")]


def save_reference(out_dir, name, aligned, model, gen_r):
    """PNG <name>_reference.png with the aligned input (centre crop, as the net sees it) and the generated
    reference side by side, 4x enlarged."""
    import cv2
    os.makedirs(out_dir, exist_ok=True)
    x = crop_scale(aligned[None, None], model.crop, 1.0)[0, 0]
    g = np.asarray(gen_r, np.float32).reshape(model.crop, model.crop) / model.scale + model.mean
    g = np.clip(np.rint(g), 0, 255)
    sep = np.full((model.crop, 2), 255, np.float32)
    pair = np.hstack([x, sep, g]).astype(np.uint8)
    pair = cv2.resize(pair, (pair.shape[1] * 4, pair.shape[0] * 4), interpolation=cv2.INTER_NEAREST)
    out = os.path.join(out_dir, name + "_reference.png")
    if not cv2.imwrite(out, pair):
        raise OSError("cannot write %s" % out)
    return out


def _open_models(o: PredictOptions):
    """(main model, model with the given reference or None); UsageError for a --reference the model cannot use."""
    main = open_model(o.model, o.backend)
    if main.needs_reference:                 # the deploy net itself takes the reference (a pair model)
        if o.reference is None:
            raise UsageError("%s takes the person's reference as its input `xr`: give --reference IMG (or "
                             "first:K for videos)" % o.model)
        return main, None
    if o.reference is None:
        return main, None
    try:
        return main, open_model(o.model, main.backend, "deploy_ref")
    except MissingVariant as e:
        if not main.has("gen_r"):
            raise UsageError("--reference: %s classifies X alone (%s: no generated reference to replace, no "
                             "reference input); use a GCNet model" % (o.model, main.meta.get("model", "no generator")))
        raise UsageError("--reference: %s (folders trained before it was written: rerun the same "
                         "tools/run_folds.sh command, which skips the finished stages, then for --backend onnx "
                         "tools/export_onnx.py)" % e)


def _round(probs, names):
    return {n: round(float(p), 6) for n, p in zip(names, probs)}


class _Run:
    def __init__(self, o: PredictOptions, sources: List[Source]):
        self.o = o
        self.main, self.ref_model = _open_models(o)
        self.names = self.main.class_names
        self.ref_kind, self.ref_arg = parse_reference(o.reference)
        n_images = sum(1 for s in sources if s.kind == "image" and not s.error)
        self.lm = LandmarkFinder(o.landmarks, n_images)
        if self.ref_kind == "first":
            photos = [s.path for s in sources if s.kind == "image" and not s.error]
            if photos:
                raise UsageError("--reference %s takes the first frames of each video; %s is a photo (give "
                                 "--reference IMG for photos)" % (o.reference, photos[0]))
        self.ref_image = None
        if self.ref_kind == "image":
            # a landmark folder must hold the reference's file too; a single landmark file is the photo's
            lm = self.lm(self.ref_arg) if o.landmarks and os.path.isdir(o.landmarks) else None
            if o.landmarks and os.path.isdir(o.landmarks) and lm is None:
                raise UsageError("--reference %s: no landmark file for it in %s" % (self.ref_arg, o.landmarks))
            aligned, why = load_aligned(self.ref_arg, lm)
            if aligned is None:
                raise UsageError("--reference %s: %s" % (self.ref_arg, why))
            self.ref_image = aligned[None]
        self.uses_reference = self.ref_kind is not None

    def source(self, src: Source) -> List[dict]:
        if src.error:
            return [{"file": src.path, "error": src.error}]
        every, k_first = self.o.every, self.ref_arg if self.ref_kind == "first" else 0
        firsts, kept = [], []

        def wanted(i):
            return i % every == 0 or len(firsts) < k_first

        for f in iter_frames(src, wanted, self.o.fps):
            keep = f.index < 0 or f.index % every == 0
            aligned, why = None, f.error
            if f.gray is not None:
                lm = self.lm.find(f)
                if self.o.landmarks and lm is None:
                    why = "no landmark file for it in %s" % self.o.landmarks
                else:
                    aligned, why = align_image(f.gray, lm)
            if aligned is not None and len(firsts) < k_first:
                firsts.append((f.index, aligned))
            if keep:
                kept.append((f, aligned, why))
        reference, ref_error, ref_note = self.ref_image, None, {}
        if self.ref_image is not None:
            ref_note = {"given_reference": self.ref_arg}
        elif k_first:
            ref_note = {"given_reference": self.o.reference, "reference_frames": [i for i, _ in firsts]}
            if len(firsts) < k_first:
                ref_error = "--reference %s: only %d frame(s) of %s have a face" % (self.o.reference, len(firsts),
                                                                                     src.path)
            else:
                reference = np.mean(np.stack([a for _, a in firsts]), axis=0)[None]
        ok = [j for j, (_, a, _) in enumerate(kept) if a is not None]
        faces = np.stack([kept[j][1] for j in ok]) if ok else None
        main_out, ref_out = {}, {}
        if faces is not None and (not self.main.needs_reference or reference is not None):
            main_out = self.main.forward(faces, ("prob", "gen_r"), reference=reference)
        if faces is not None and self.ref_model is not None and reference is not None:
            ref_out = self.ref_model.forward(faces, ("prob",), reference=reference)
        records = []
        row = {j: r for r, j in enumerate(ok)}
        for j, (f, aligned, why) in enumerate(kept):
            rec = dict(f.record)
            if aligned is None:
                rec["error"] = why
                records.append(rec)
                continue
            r = row[j]
            if "prob" in main_out:
                probs = main_out["prob"][r].reshape(-1)
                rec.update(label=self.names[int(np.argmax(probs))], probs=_round(probs, self.names))
            if "prob" in ref_out:
                probs = ref_out["prob"][r].reshape(-1)
                rec["with_reference"] = {"label": self.names[int(np.argmax(probs))],
                                         "probs": _round(probs, self.names)}
            rec.update(ref_note)
            if self.o.save_reference and "gen_r" in main_out:
                stem = os.path.splitext(os.path.basename(rec["file"]))[0]
                name = stem if f.kind != "video" else "%s_frame%06d" % (stem, f.index)
                try:
                    rec["reference"] = save_reference(self.o.save_reference, name, aligned, self.main,
                                                      main_out["gen_r"][r])
                except OSError as e:
                    rec["error"] = str(e)
            if ref_error:
                rec["error"] = ref_error
            records.append(rec)
        return records


def check_options(o: PredictOptions) -> None:
    if isinstance(o.every, bool) or not isinstance(o.every, int) or o.every < 1:
        raise UsageError("--every must be a positive integer, got %r" % (o.every,))
    if o.fps is not None and not (o.fps > 0 and np.isfinite(o.fps)):
        raise UsageError("--fps must be a positive number, got %r" % (o.fps,))
    if o.fps is not None and not o.frame_folders:
        raise UsageError("--fps is the frame rate of frame folders: give --frame-folders (a video file has its own)")


def run_predict(o: PredictOptions) -> PredictResult:
    """Records (RECORD_KEYS) for every photo and every processed frame, in input order: the label and class
    probabilities, with the given reference's too (`with_reference`) when --reference is given, or an error
    (a frame with no face is kept as an error record).  UsageError (exit 2) for bad options, ModelError for a
    model that cannot be loaded; errors of single inputs are records."""
    check_options(o)
    notes = []
    sources = collect_sources(o.inputs, o.frame_folders, notes)
    notes = ["note: %s" % n for n in notes]
    run = _Run(o, sources)
    if o.save_reference and not run.main.has("gen_r"):
        notes.append("--save-reference: %s has no generator (gen_r); only GCNet models make a reference" % o.model)
    videos = [s for s in sources if s.kind in ("video", "frames") and not s.error]
    if o.plot and not videos:
        raise UsageError("--plot %s draws the probabilities over time: give a video or a frame folder" % o.plot)
    records = []
    for src in sources:
        records += run.source(src)
    res = PredictResult(records, list(run.names), run.main.backend, notes)
    if o.plot:
        from gcnet.predict.timeline import plot_timeline
        res.plot = plot_timeline(records, [s.path for s in videos], run.names, o.plot)
    return res


def format_table(res: PredictResult) -> List[str]:
    """The text table of tools/predict.py: one line per record (video frames as <file>#<frame> and the time), a
    '+ reference' line with the given reference's prediction, 'ERROR: ...' for errors."""
    names = res.class_names

    def name(r):
        n = os.path.basename(r["file"])
        if "frame" in r and "video" not in r:
            n += "#%d" % r["frame"]
        if r.get("time") is not None:
            n += " %.2fs" % r["time"]
        return n
    width = max([len("file")] + [len(name(r)) for r in res.records])
    short = [n[:8] for n in names]
    lines = ["%-*s  %-10s %s" % (width, "file", "label", " ".join("%8s" % n for n in short))]
    for r in res.records:
        if "probs" in r:
            lines.append("%-*s  %-10s %s" % (width, name(r), r["label"], " ".join("%8.4f" % r["probs"][n]
                                                                                    for n in names)))
        if "with_reference" in r:
            w = r["with_reference"]
            lines.append("%-*s  %-10s %s" % (width, "  + reference", w["label"],
                                             " ".join("%8.4f" % w["probs"][n] for n in names)))
        if r.get("error"):
            lines.append("%-*s  ERROR: %s" % (width, name(r), r["error"]))
    return lines
