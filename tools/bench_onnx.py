#!/usr/bin/env python3
"""Forward time per image of trained model folders in Caffe and in onnxruntime (BENCHMARKS.md, issue 24).

usage: source tools/env.sh && tools/bench_onnx.py --model DIR [--model DIR ...] [--batch 1,16] [--rounds 7]
                                                  [--iterations 20]

Each folder's deploy net is exported to ONNX in memory (gcnet.onnx_export, as tools/export_onnx.py writes it) and
loaded in both backends, one thread each (OPENBLAS_NUM_THREADS=1 for Caffe, set here before Caffe loads;
onnxruntime intra-op 1).  Inputs are random (N, 1, 64, 64) images.  One round times --iterations forward passes
of every (batch, folder, backend) in turn, so the backends run interleaved under the same load; the table gives
the median over the rounds of the milliseconds per image, and onnxruntime's time as a fraction of Caffe's.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"          # before numpy / Caffe load OpenBLAS
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("GLOG_minloglevel", "2")
import _repo  # noqa: E402,F401  (the repository on sys.path)

import numpy as np  # noqa: E402


def positive_list(text):
    try:
        v = [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma list of positive integers, got %r" % text)
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError("a comma list of positive integers, got %r" % text)
    return v


def positive(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1, got %s" % text)
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="DIR", help="a trained model folder")
    ap.add_argument("--batch", type=positive_list, default=[1, 16], help="batch sizes (default 1,16)")
    ap.add_argument("--rounds", type=positive, default=7)
    ap.add_argument("--iterations", type=positive, default=20)
    a = ap.parse_args(argv)
    from gcnet.inference import DeployModel, ModelError, OnnxModel
    from gcnet.onnx_export import export_model
    from gcnet.util import UsageError
    nets, tmp = {}, tempfile.TemporaryDirectory(prefix="bench_onnx_")
    try:
        for i, d in enumerate(a.model):
            try:
                done, _ = export_model(d, os.path.join(tmp.name, "m%d.onnx" % i))
                name = "%s (%s)" % (DeployModel(d).meta.get("model", "?"), d)
                nets[name] = {"caffe": DeployModel(d), "onnxruntime": OnnxModel(done[0]["onnx"], threads=1)}
            except (UsageError, ModelError) as e:
                print("bench_onnx: %s" % e, file=sys.stderr)
                return 2
        rng = np.random.default_rng(0)
        feeds = {b: {"x": rng.random((b, 1, 64, 64), dtype=np.float32)} for b in a.batch}
        times = {}
        for b in a.batch:                                        # warm-up (allocation, reshape)
            for name, backends in nets.items():
                for be, m in backends.items():
                    m.run(feeds[b], ["prob"])
        for _ in range(a.rounds):
            for b in a.batch:
                for name, backends in nets.items():
                    for be, m in backends.items():
                        t0 = time.perf_counter()
                        for _ in range(a.iterations):
                            m.run(feeds[b], ["prob"])
                        ms = (time.perf_counter() - t0) * 1000 / (a.iterations * b)
                        times.setdefault((b, name, be), []).append(ms)
    finally:
        tmp.cleanup()
    print("forward ms per image, median of %d interleaved rounds x %d passes, 1 thread each; load average "
          "at the end %.2f" % (a.rounds, a.iterations, os.getloadavg()[0]))
    print("| model | batch | Caffe ms/image | onnxruntime ms/image | onnxruntime / Caffe |")
    print("|---|---|---|---|---|")
    for b in a.batch:
        for name in nets:
            c, o = statistics.median(times[(b, name, "caffe")]), statistics.median(times[(b, name, "onnxruntime")])
            print("| %s | %d | %.2f | %.2f | %.2f |" % (name, b, c, o, o / c))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_onnx: interrupted", file=sys.stderr)
        sys.exit(130)
