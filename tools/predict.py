#!/usr/bin/env python3
"""Classify the facial expression of face images with a trained model folder.

usage: tools/predict.py --model results/<dataset>/<model>/fold_K IMAGE_OR_DIR... [--json]
                        [--save-reference DIR] [--landmarks FILE_OR_DIR]

Run `source tools/env.sh` first (pycaffe, OpenCV, mediapipe).  For each image: read it as grey, align the face
to 66x66 with 5 points (eyes, nose tip, mouth corners) taken from its landmark file when --landmarks is given
(.pts or CK+ *_landmarks.txt, 68 or 5 points; a folder is searched for <image stem>_landmarks.txt / .pts / .txt),
else from the mediapipe face detector; then the centre 64x64 crop goes through the deploy net (no reference frame
is needed: GCNet's generator makes it).  Prints the predicted label and the class probabilities (a table, or with
--json a list of {file, label, probs}).  --save-reference DIR writes, per image, the aligned input and the
generated reference gen_r side by side (PNG; GCNet models only).

A file that cannot be read or has no face is reported and the others are still processed.  Exit status: 0 ok,
1 when any file failed, 2 bad usage or a model folder that cannot be loaded, 130 interrupted.
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("GLOG_minloglevel", "2")           # keep Caffe's net-construction log out of the output

import numpy as np  # noqa: E402

from gcnet.util import IMAGE_EXTS, walk_files  # noqa: E402
from gcnet.inference import DeployModel, ModelError, crop_scale, predict_arrays  # noqa: E402,F401  (re-exported)

__all__ = ["predict_arrays", "read_image", "align_image", "load_aligned", "collect_images", "landmark_finder", "main"]


def collect_images(paths, notes=None):
    """[(file, None)] for files given and image files found (recursively, sorted, through links to folders) in
    folders given, [(path, reason)] for what is neither and for folders that cannot be listed, in the order of
    `paths`; `notes` (a list) receives "path: why" of each folder not walked twice (link loops)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found, left = walk_files(p, IMAGE_EXTS)
            out += [(f, None) for f in found]
            for where, why in left:
                if why.startswith("not followed") and notes is not None:
                    notes.append("%s: %s" % (where, why))
                else:
                    out.append((where, why))
            if not found and not left:
                out.append((p, "no image files (%s) in this folder" % " ".join(IMAGE_EXTS)))
        elif os.path.exists(p):
            out.append((p, None))
        else:
            out.append((p, "no such file or folder"))
    return out


def _stem_key(name):
    stem = os.path.splitext(os.path.basename(name))[0]
    return stem[:-len("_landmarks")] if stem.endswith("_landmarks") else stem


def landmark_finder(spec, n_images):
    """-> function(image path) -> landmark file or None.  spec: None, one file (one image only) or a folder
    (searched recursively for <stem>_landmarks.txt, <stem>.pts, <stem>.txt)."""
    if not spec:
        return lambda image: None
    if os.path.isfile(spec):
        if n_images != 1:
            raise SystemExit("predict: --landmarks %s is one file but %d images were given; pass a folder of "
                             "landmark files named after the images instead" % (spec, n_images))
        return lambda image: spec
    if not os.path.isdir(spec):
        raise SystemExit("predict: --landmarks %s does not exist" % spec)
    index = {}
    rank = {".pts": 0, ".txt": 1}
    for path in walk_files(spec, tuple(rank))[0]:
        n = os.path.basename(path)
        key = _stem_key(n)
        prio = (0 if n.endswith("_landmarks.txt") else 1 + rank[os.path.splitext(n)[1].lower()])
        if key not in index or prio < index[key][0]:
            index[key] = (prio, path)
    return lambda image: index.get(_stem_key(image), (None, None))[1]


def read_image(path):
    """(grey uint8 image, None) or (None, reason); the decoder of the LMDB build (records.imread_gray)."""
    from gcnet.data.records import imread_gray
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


def save_reference(out_dir, image_path, aligned, model, gen_r):
    """PNG with the aligned input (centre crop, as the net sees it) and the generated reference side by side."""
    import cv2
    os.makedirs(out_dir, exist_ok=True)
    x = crop_scale(aligned[None, None], model.crop, 1.0)[0, 0]
    g = np.asarray(gen_r, np.float32).reshape(model.crop, model.crop) / model.scale + model.mean
    g = np.clip(np.rint(g), 0, 255)
    sep = np.full((model.crop, 2), 255, np.float32)
    pair = np.hstack([x, sep, g]).astype(np.uint8)
    pair = cv2.resize(pair, (pair.shape[1] * 4, pair.shape[0] * 4), interpolation=cv2.INTER_NEAREST)
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(image_path))[0] + "_reference.png")
    if not cv2.imwrite(out, pair):
        raise OSError("cannot write %s" % out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("--model", required=True, help="a trained model folder results/<dataset>/<model>/fold_K "
                                                   "(deploy.prototxt, final.caffemodel, meta.json)")
    ap.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    ap.add_argument("--json", action="store_true", help="print a JSON list of {file, label, probs}")
    ap.add_argument("--save-reference", metavar="DIR", help="write aligned input | generated reference PNGs here")
    ap.add_argument("--landmarks", metavar="FILE_OR_DIR", help="landmark file (one image) or folder of them")
    a = ap.parse_args(argv)

    try:
        import cv2  # noqa: F401
    except ImportError:
        print("predict: OpenCV (cv2) cannot be imported; run `source tools/env.sh` first", file=sys.stderr)
        return 1
    try:
        model = DeployModel(a.model)
    except ModelError as e:
        print("predict: %s" % e, file=sys.stderr)
        return 2
    if a.save_reference and not model.has("gen_r"):
        print("predict: --save-reference: %s has no generator (gen_r); only GCNet models make a reference"
              % a.model, file=sys.stderr)
    notes = []
    items = collect_images(a.images, notes)
    for n in notes:
        print("predict: note: %s" % n, file=sys.stderr)
    lm_of = landmark_finder(a.landmarks, len([p for p, why in items if why is None]))
    results = []
    for path, why in items:
        if why:
            results.append({"file": path, "error": why})
            continue
        gray, why = read_image(path)
        if gray is None:
            results.append({"file": path, "error": why})
            continue
        lm = lm_of(path)
        if a.landmarks and lm is None:
            results.append({"file": path, "error": "no landmark file for it in %s" % a.landmarks})
            continue
        aligned, why = align_image(gray, lm)
        if aligned is None:
            results.append({"file": path, "error": why})
            continue
        out = model.forward(aligned[None], ("prob", "gen_r"))
        probs = out["prob"].reshape(-1)
        k = int(np.argmax(probs))
        res = {"file": path, "label": model.class_names[k],
               "probs": {n: round(float(p), 6) for n, p in zip(model.class_names, probs)}}
        if lm:
            res["landmarks"] = lm
        if a.save_reference and "gen_r" in out:
            try:
                res["reference"] = save_reference(a.save_reference, path, aligned, model, out["gen_r"][0])
            except OSError as e:
                res["error"] = str(e)
        results.append(res)

    failed = [r for r in results if r.get("error")]
    if a.json:
        print(json.dumps([{k: r.get(k) for k in ("file", "label", "probs", "error", "reference") if k in r}
                          for r in results], indent=1))
    else:
        names = model.class_names
        width = max([len("file")] + [len(os.path.basename(r["file"])) for r in results])
        short = [n[:8] for n in names]
        print("%-*s  %-10s %s" % (width, "file", "label", " ".join("%8s" % n for n in short)))
        for r in results:
            name = os.path.basename(r["file"])
            if "probs" in r and not (r.get("error") and "label" not in r):
                print("%-*s  %-10s %s" % (width, name, r["label"],
                                          " ".join("%8.4f" % r["probs"][n] for n in names)))
            if r.get("error"):
                print("%-*s  ERROR: %s" % (width, name, r["error"]))
    for r in failed:
        print("predict: %s: %s" % (r["file"], r["error"]), file=sys.stderr)
    if failed:
        print("predict: %d of %d file(s) failed" % (len(failed), len(results)), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("predict: interrupted", file=sys.stderr)
        sys.exit(130)
