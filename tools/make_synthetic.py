#!/usr/bin/env python3
"""Write a synthetic facial-expression data set in the real on-disk layout of CK+, Oulu-CASIA, MMI or
CASIA-WebFace (procedural grey faces with 68-point landmarks; see gcnet/data/synthetic.py for the face model).

Examples:
  python tools/make_synthetic.py --layout ck+ --subjects 100 --seed 0 --out data/synthetic/ck+
  python tools/make_synthetic.py --layout oulu --subjects 20 --seed 1 --out data/synthetic/oulu
  python tools/make_synthetic.py --layout mmi --subjects 10 --seed 2 --out data/synthetic/mmi --frames 20
  python tools/make_synthetic.py --layout webface --subjects 50 --seed 3 --out data/synthetic/webface --size 128x128
"""
import argparse
import sys

import _repo  # noqa: F401  (the repository on sys.path)

from gcnet.data.synthetic import DEFAULT_FRAMES, DEFAULT_SIZE, LAYOUTS, make_synthetic  # noqa: E402
from gcnet.data.records import DataError  # noqa: E402

EPILOG = """layouts written under OUT:
  ck+      cohn-kanade-images/S005/001/S005_001_00000001.png, Emotion/.../S005_001_000000NN_emotion.txt (last
           frame of labelled sequences, ~5 in 6), Landmarks/.../S005_001_%08d_landmarks.txt (every frame)
  oulu     OriginalImg/VL/Strong/P001/<Anger|Disgust|Fear|Happiness|Sadness|Surprise>/000.jpeg ...
  mmi      Sessions/<id>/{S001-<n>.avi | frame_0000.png ...} + session.xml (Subject, Emotion 1-6, View 0/1),
           peaks.csv (session,peak_frame)
  webface  <identity %07d>/<%03d>.jpg
oulu, mmi and webface also get sidecar landmarks (68 lines "x y") in OUT/../<basename(OUT)>_landmarks/,
mirroring the image paths with suffix .pts (MMI: Sessions/<id>/<frame %04d>.pts).
Output is built in OUT.partial and renamed when complete; the same seed gives identical files.
Exit status: 0 ok, 1 writing failed (e.g. disk full), 2 bad usage or an OUT that cannot be written, 130 interrupted."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):             # one line, exit code 2, no usage dump
        sys.stderr.write("%s: error: %s (see --help)\n" % (self.prog, message))
        sys.exit(2)


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % v)
    if n < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % v)
    return n


def _seed(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an integer seed, got %r" % v)
    if n < 0:
        raise argparse.ArgumentTypeError("seed must be >= 0, got %r" % v)
    return n


def _size(v: str):
    parts = v.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError("expected WxH such as 160x120, got %r" % v)
    w, h = int(parts[0]), int(parts[1])
    if not (48 <= w <= 4096 and 48 <= h <= 4096):
        raise argparse.ArgumentTypeError("each side of --size must be 48..4096, got %r" % v)
    return w, h


def main(argv=None) -> int:
    ap = _Parser(prog="make_synthetic.py", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    ap.add_argument("--layout", required=True, choices=LAYOUTS, help="on-disk layout to write")
    ap.add_argument("--subjects", required=True, type=_positive, help="number of identities")
    ap.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    ap.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
    ap.add_argument("--frames", type=_positive, default=None,
                    help="frames per sequence (webface: images per identity); default per layout: "
                    + ", ".join("%s %d-%d" % (k, a, b) for k, (a, b) in DEFAULT_FRAMES.items()))
    ap.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="WxH",
                    help="image size (default %dx%d)" % DEFAULT_SIZE)
    ap.add_argument("--force", action="store_true", help="replace a non-empty OUT (and its sidecar landmarks)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    if a.frames is not None and a.layout == "mmi" and a.frames < 3:
        ap.error("--frames must be >= 3 for mmi (neutral, peak, neutral)")
    if a.frames is not None and a.layout in ("ck+", "oulu") and a.frames < 2:
        ap.error("--frames must be >= 2 for %s (a neutral and a peak frame)" % a.layout)

    step = max(1, round(a.subjects / 10))

    def progress(done, total, frames, elapsed):
        if a.quiet or (done % step and done != total):
            return
        eta = elapsed / done * (total - done)
        print("[%s] %*d/%d subjects  %6d frames  %6.1f s  ETA %5.1f s"
              % (a.layout, len(str(total)), done, total, frames, elapsed, eta), flush=True)

    try:
        s = make_synthetic(a.layout, a.out, a.subjects, a.seed, frames=a.frames, size=a.size, force=a.force,
                           progress=progress)
    except (FileExistsError, DataError) as e:
        sys.stderr.write("make_synthetic.py: error: %s\n" % e)
        return 2
    except ValueError as e:
        sys.stderr.write("make_synthetic.py: error: %s\n" % e)
        return 2
    except OSError as e:
        sys.stderr.write("make_synthetic.py: error: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("make_synthetic.py: interrupted (partial output removed)\n")
        return 130
    what = ("%d images" % s["frames"]) if s["layout"] == "webface" else \
        "%d sequences (%d labelled), %d frames" % (s["sequences"], s["labelled"], s["frames"])
    print("wrote %s layout: %d subjects, %s in %.1f s -> %s" % (s["layout"], s["subjects"], what, s["seconds"],
                                                              s["out"]))
    if s["per_class"]:
        print("  labelled sequences per class: " + ", ".join("%s %d" % kv for kv in s["per_class"].items()))
    if s["landmarks_dir"]:
        print("  sidecar landmarks: %s" % s["landmarks_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
