#!/usr/bin/env python3
"""Export a trained model folder to ONNX, for onnxruntime where Caffe is not installed.

usage: tools/export_onnx.py --model results/<dataset>/<model>/fold_K [--out model.onnx] [--check]

Writes <folder>/model.onnx (or --out): the deploy net with final.caffemodel's weights, opset 17, inputs `x`
(N, 1, 64, 64), outputs `prob` and, for GCNets, `gen_r` (+ `rec_r`, `rec_i` for R1); class names and the input
transform are stored in the file's metadata.  A GCNet folder's deploy_ref.prototxt (the net with the person's
reference as input `xr`) is exported beside it as model_ref.onnx (<out stem>_ref.onnx).  The conversion builds no
Caffe net; a layer it cannot map exactly is an error naming the layer.

--check then runs Caffe and onnxruntime (one thread) on the same inputs (random images and the first images of
the fold's test LMDB), prints the worst difference per output and how many max-pooling argmax positions differ,
and fails unless the outputs agree within 1e-4 on every input whose argmaxes agree and the argmaxes differ only
at near ties (docs/choices.md, "Trained models outside Caffe").

Exit status: 0 ok, 1 the check failed, 2 bad usage, a folder that cannot be exported or a layer with no mapping,
130 interrupted.
"""
import argparse
import os
import sys

import _repo  # noqa: F401  (the repository on sys.path)
os.environ.setdefault("GLOG_minloglevel", "2")           # keep Caffe's net-construction log out of the output

from gcnet.util import UsageError  # noqa: E402


def non_negative(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0, got %s" % text)
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("--model", required=True, help="a trained model folder results/<dataset>/<model>/fold_K")
    ap.add_argument("--out", help="the .onnx file to write (default <folder>/model.onnx)")
    ap.add_argument("--check", action="store_true", help="compare with Caffe (exit 1 beyond 1e-4)")
    ap.add_argument("--random", type=non_negative, default=8, metavar="N", help="random inputs of --check (default 8)")
    ap.add_argument("--lmdb", type=non_negative, default=32, metavar="N",
                    help="test-LMDB images of --check (default 32, 0: none)")
    a = ap.parse_args(argv)
    if a.out and not a.out.endswith(".onnx"):
        print("export_onnx: --out %s: the file name must end in .onnx" % a.out, file=sys.stderr)
        return 2
    if a.check and a.random + a.lmdb == 0:
        print("export_onnx: --check needs inputs: --random and --lmdb are both 0", file=sys.stderr)
        return 2
    from gcnet.onnx_export import TOLERANCE, export_model
    try:
        done, notes = export_model(a.model, a.out)
    except UsageError as e:
        print("export_onnx: %s" % e, file=sys.stderr)
        return 2
    for e in done:
        print("wrote %s (%s, %.1f MB): inputs %s -> outputs %s" % (e["onnx"], e["variant"], e["bytes"] / 1e6,
                                                                  ", ".join(e["inputs"]), ", ".join(e["outputs"])))
    for n in notes:
        print("note: %s" % n)
    if not a.check:
        return 0
    from gcnet.inference import ModelError
    from gcnet.onnx_check import check_export
    try:
        reports = check_export(a.model, done, n_random=a.random, n_lmdb=a.lmdb)
    except ModelError as e:
        print("export_onnx: --check: %s" % e, file=sys.stderr)
        return 2
    for r in reports:
        print("check %s (%s): %s" % (os.path.basename(r["onnx"]), r["variant"], r["inputs"]))
        for n in r["notes"]:
            print("  note: %s" % n)
        f = r["flips"]
        for b, o in r["outputs"].items():
            line = "  %-6s worst |caffe - onnxruntime| %.2e" % (b, o["worst"])
            if f["images"]:
                line += "; %.2e on the %d images whose pooling argmaxes all agree; beyond %g on %d image(s)" % (
                    o["worst_agreeing"], r["n"] - f["images"], TOLERANCE, o["beyond"])
            print(line + ("  ok" if o["worst_agreeing"] <= TOLERANCE else "  FAILED"))
        if f["of"]:
            print("  max-pooling argmax positions that differ: %d of %d, in %d of %d images (largest gap where no "
                  "earlier difference explains it: %.1e in Caffe's pooling input%s)"
                  % (f["positions"], f["of"], f["images"], r["n"], f["max_gap"],
                     ", a near tie" if f["max_gap"] <= TOLERANCE else ": not a near tie, FAILED"))
        if "labels_agree" in r:
            print("  labels agree on %d of %d images" % (r["labels_agree"], r["n"]))
    failed = [r for r in reports if not r["ok"]]
    if failed:
        print("export_onnx: --check failed for %s" % ", ".join(r["onnx"] for r in failed), file=sys.stderr)
        return 1
    print("check passed: within %g of Caffe" % TOLERANCE)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("export_onnx: interrupted", file=sys.stderr)
        sys.exit(130)
