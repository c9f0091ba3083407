#!/usr/bin/env python3
"""Classify the facial expression of face images and videos with a trained model folder.

usage: tools/predict.py --model results/<dataset>/<model>/fold_K IMAGE_VIDEO_OR_DIR... [--json]
                        [--backend caffe|onnx] [--reference IMG|first:K] [--every N] [--plot timeline.png]
                        [--frame-folders [--fps F]] [--save-reference DIR] [--landmarks FILE_OR_DIR]

Run `source tools/env.sh` first.  For each photo, and each frame of a video (.avi, .mp4, ... what OpenCV reads) or
frame folder (--frame-folders: a folder is one video's frames in name order, else a folder of photos): read it as
grey, align the face to 66x66 with 5 points (eyes, nose tip, mouth corners) from its landmark file when --landmarks
is given (.pts or *_landmarks.txt, 68 or 5 points; a folder is searched for <image stem>_landmarks.txt / .pts /
.txt, and for frame i of video V, V/<i>.pts or V/<i>_landmarks.txt), else from the mediapipe face detector; then
the centre 64x64 crop goes through the deploy net (a GCNet's generator makes the reference).  Prints the label and
the class probabilities (a table, or with --json a list of records {file, [video, frame, time], label, probs,
...}); a video frame's time is its index / the video's frame rate (--fps for frame folders, else null).

--backend: caffe (default where pycaffe imports) or onnx (onnxruntime on the folder's model.onnx, written by
tools/export_onnx.py; --model may also name the .onnx file); the records are the same.
--reference IMG uses the person's own neutral face IMG as X_r in place of the generated one (GCNets; the
deploy_ref net / model_ref.onnx); --reference first:K uses, per video, the mean of its first K aligned frames.
Each record then also carries `with_reference` {label, probs}.  A model without a generator (cnn) has no
reference: exit 2.  --every N keeps frames 0, N, 2N, ...; --plot FILE draws each video's probabilities over time.
--save-reference DIR writes, per image, the aligned input and the generated reference gen_r side by side.

A file that cannot be read, a frame with no face, is an error record and the others are still processed.  Exit
status: 0 ok, 1 when any record has an error, 2 bad usage or a model that cannot be loaded, 130 interrupted.
"""
import argparse
import json
import os
import sys

import _repo  # noqa: F401  (the repository on sys.path)
os.environ.setdefault("GLOG_minloglevel", "2")           # keep Caffe's net-construction log out of the output


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("--model", required=True, help="a trained model folder results/<dataset>/<model>/fold_K "
                                                   "(deploy.prototxt, final.caffemodel, meta.json; model.onnx)")
    ap.add_argument("inputs", nargs="+", metavar="IMAGE_VIDEO_OR_DIR")
    ap.add_argument("--backend", choices=("caffe", "onnx"), help="default: caffe where pycaffe imports, else onnx")
    ap.add_argument("--json", action="store_true", help="print a JSON list of records")
    ap.add_argument("--reference", metavar="IMG|first:K", help="the person's own reference X_r (GCNets)")
    ap.add_argument("--every", type=int, default=1, metavar="N", help="keep every N-th video frame (default 1)")
    ap.add_argument("--frame-folders", action="store_true", help="each folder is one video's frames")
    ap.add_argument("--fps", type=float, metavar="F", help="frame rate of --frame-folders (time = index / F)")
    ap.add_argument("--plot", metavar="FILE", help="write the videos' probabilities over time (PNG, PDF, SVG)")
    ap.add_argument("--save-reference", metavar="DIR", help="write aligned input | generated reference PNGs here")
    ap.add_argument("--landmarks", metavar="FILE_OR_DIR", help="landmark file (one image) or folder of them")
    a = ap.parse_args(argv)

    try:
        import cv2  # noqa: F401
    except ImportError:
        print("predict: OpenCV (cv2) cannot be imported; run `source tools/env.sh` first", file=sys.stderr)
        return 1
    from gcnet.inference import ModelError
    from gcnet.predict.run import RECORD_KEYS, PredictOptions, format_table, run_predict
    from gcnet.util import UsageError
    opts = PredictOptions(a.model, a.inputs, a.backend, a.landmarks, a.reference, a.every, a.frame_folders, a.fps,
                          a.save_reference, a.plot)
    try:
        res = run_predict(opts)
    except (UsageError, ModelError) as e:
        print("predict: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:                   # --plot or --save-reference cannot be written
        print("predict: %s" % e, file=sys.stderr)
        return 1
    for n in res.notes:
        print("predict: %s" % n, file=sys.stderr)
    if a.json:
        print(json.dumps([{k: r[k] for k in RECORD_KEYS if k in r} for r in res.records], indent=1))
    else:
        print("\n".join(format_table(res)))
    if res.plot:
        print("predict: timeline written to %s" % res.plot, file=sys.stderr)
    for r in res.failed:
        where = r["file"] + ("#%d" % r["frame"] if "frame" in r and "video" not in r else "")
        print("predict: %s: %s" % (where, r["error"]), file=sys.stderr)
    if res.failed:
        print("predict: %d of %d record(s) failed" % (len(res.failed), len(res.records)), file=sys.stderr)
    return 1 if res.failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("predict: interrupted", file=sys.stderr)
        sys.exit(130)
