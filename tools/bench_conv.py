#!/usr/bin/env python
"""The options for the nets' convolutions, measured on their real shapes (issue 23, BENCHMARKS.md):

1. the three GEMMs of Caffe's im2col convolution per layer shape -- forward W x col, backward data W^T x dy, backward
   weights dy x col^T -- with one image per product (Caffe) and with B images in one product (B = 2, 4, 8, 16), in
   GFLOP/s of the BLAS libcaffe uses, beside its 1024^3 sgemm rate;
2. Caffe's Convolution / Deconvolution layers (forward, and backward of data and weights) against PyTorch's
   F.conv2d / F.conv_transpose2d (oneDNN) on the same shapes, in ms (with --torch-python).

Run through tools/bench.sh's environment (source tools/env.sh first):

    python tools/bench_conv.py [--batch 16] [--repeats 7] [--torch-python PYTHON]

Times are the minimum over --repeats of the calling thread's CPU time (time.thread_time), so other jobs on the
machine inflate them less than wall time; one BLAS / PyTorch thread (OPENBLAS_NUM_THREADS=1 is set here).
"""
import argparse
import ctypes
import ctypes.util
import os
import subprocess
import sys
import tempfile
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np  # noqa: E402

# (name, input channels, output channels, kernel, size) of the conv side of each layer; Deconvolution layers mirror
# them (de*_deconv3 runs conv3's products, de*_deconv2 conv2's, de*_deconv1 conv1's)
LAYERS = [("conv1", 1, 32, 5, 64), ("conv2", 32, 64, 3, 31), ("conv3", 64, 96, 3, 15)]
GROUPS = (1, 2, 4, 8, 16)
_ROW, _NT, _T = 101, 111, 112

TORCH_SCRIPT = r"""
import json, sys, time, torch, torch.nn.functional as F
torch.set_num_threads(1)
batch, repeats, layers = json.loads(sys.argv[1])
def best(fn):
    fn(); t = 1e9
    for _ in range(repeats):
        s = time.thread_time(); fn(); t = min(t, time.thread_time() - s)
    return 1e3 * t
out = {}
for name, cin, cout, k, hw in layers:
    for deconv in (False, True):
        a, b = (cout, cin) if deconv else (cin, cout)        # a deconvolution mirrors its convolution
        x = torch.randn(batch, a, hw, hw, requires_grad=True)
        w = torch.randn(a, b, k, k, requires_grad=True) if deconv else torch.randn(b, a, k, k, requires_grad=True)
        bias = torch.zeros(b, requires_grad=True)
        op = (lambda: F.conv_transpose2d(x, w, bias, 1, k // 2)) if deconv else (lambda: F.conv2d(x, w, bias, 1, k // 2))
        with torch.no_grad():
            f = best(op)
        g = torch.randn_like(op())
        def fb():
            x.grad = w.grad = bias.grad = None
            torch.autograd.backward(op(), g)
        out[("de" if deconv else "") + name] = [f, best(fb) - f]
print(json.dumps(out))
"""


def blas():
    path = ctypes.util.find_library("openblas") or "libopenblas.so.0"
    lib = ctypes.CDLL(path)
    f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    return lib, path


def best_time(fn, repeats):
    fn()
    t = float("inf")
    for _ in range(repeats):
        s = time.thread_time()
        fn()
        t = min(t, time.thread_time() - s)
    return t


def gemm_rates(lib, batch, repeats):
    """{(layer, kind): {images per product: GFLOP/s}} and the 1024^3 sgemm rate."""
    rng = np.random.RandomState(0)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    n = 1024
    a, b, c = (rng.rand(n, n).astype(np.float32) for _ in range(3))
    big = 2.0 * n ** 3 / best_time(lambda: lib.cblas_sgemm(_ROW, _NT, _NT, n, n, n, 1.0, ptr(a), n, ptr(b), n, 0.0,
                                                           ptr(c), n), repeats) / 1e9
    out = {}
    for name, cin, cout, k, hw in LAYERS:
        m, kk, nn = cout, cin * k * k, hw * hw
        w = rng.rand(m, kk).astype(np.float32)
        dw = np.zeros((m, kk), np.float32)
        flop = 2.0 * m * kk * nn * batch
        for kind in ("forward", "backward data", "backward weights"):
            rates = {}
            for g in GROUPS:
                if g > batch or batch % g:
                    continue
                ng = nn * g         # g images side by side: col (K, g N), top (M, g N), each contiguous
                cols = [rng.rand(kk, ng).astype(np.float32) for _ in range(batch // g)]
                tops = [rng.rand(m, ng).astype(np.float32) for _ in range(batch // g)]

                def run():
                    for col, top in zip(cols, tops):
                        if kind == "forward":
                            lib.cblas_sgemm(_ROW, _NT, _NT, m, ng, kk, 1.0, ptr(w), kk, ptr(col), ng, 0.0, ptr(top), ng)
                        elif kind == "backward data":
                            lib.cblas_sgemm(_ROW, _T, _NT, kk, ng, m, 1.0, ptr(w), kk, ptr(top), ng, 0.0, ptr(col), ng)
                        else:
                            lib.cblas_sgemm(_ROW, _NT, _T, m, kk, ng, 1.0, ptr(top), ng, ptr(col), ng, 1.0, ptr(dw), kk)
                rates[g] = flop / best_time(run, repeats) / 1e9
            out[(name, kind)] = rates
    return out, big


def caffe_layers(batch, repeats):
    """{layer: [forward ms, backward ms]} of Caffe's Convolution / Deconvolution layers (bottom needs a gradient)."""
    import caffe
    from caffe import layers as L
    caffe.set_mode_cpu()
    out = {}
    rng = np.random.RandomState(0)
    for name, cin, cout, k, hw in LAYERS:
        for deconv in (False, True):
            a, b = (cout, cin) if deconv else (cin, cout)
            n = caffe.NetSpec()
            n.x = L.Input(shape=dict(dim=[batch, a, hw, hw]))
            layer = L.Deconvolution if deconv else L.Convolution
            n.y = layer(n.x, convolution_param=dict(num_output=b, kernel_size=k, pad=k // 2,
                                                     weight_filler=dict(type="xavier")))
            param = n.to_proto()
            param.force_backward = True
            with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
                f.write(str(param))
            net = caffe.Net(f.name, caffe.TRAIN)
            os.unlink(f.name)
            net.blobs["x"].data[...] = rng.randn(*net.blobs["x"].data.shape)
            net.blobs["y"].diff[...] = rng.randn(*net.blobs["y"].data.shape)
            out[("de" if deconv else "") + name] = [1e3 * best_time(net.forward, repeats),
                                                    1e3 * best_time(net.backward, repeats)]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--torch-python", default="", help="a Python with torch: also time PyTorch's oneDNN layers")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")
    lib, path = blas()
    rates, big = gemm_rates(lib, a.batch, a.repeats)
    print("GEMMs of the im2col convolution, batch %d, GFLOP/s (%s, 1 thread; sgemm 1024^3: %.1f)" % (a.batch, path, big))
    print("%-6s %-17s %s" % ("layer", "product", "  ".join("%6s" % ("B=%d" % g) for g in GROUPS if g <= a.batch)))
    for (name, kind), r in rates.items():
        print("%-6s %-17s %s" % (name, kind, "  ".join("%6.1f" % r[g] for g in GROUPS if g in r)))
    ours = caffe_layers(a.batch, a.repeats)
    theirs = {}
    if a.torch_python:
        import json
        r = subprocess.run([a.torch_python, "-c", TORCH_SCRIPT, json.dumps([a.batch, a.repeats, LAYERS])],
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if r.returncode != 0:
            sys.stderr.write(r.stderr[-1500:])
            raise SystemExit("bench_conv: the PyTorch part failed in %s" % a.torch_python)
        theirs = json.loads(r.stdout.strip().splitlines()[-1])
    print("\nlayers, batch %d, ms (forward / backward of data and weights)%s"
          % (a.batch, "; PyTorch F.conv2d / F.conv_transpose2d" if theirs else ""))
    for name, (f, b) in ours.items():
        line = "%-8s Caffe %7.2f / %7.2f" % (name, f, b)
        if name in theirs:
            line += "    PyTorch %7.2f / %7.2f" % tuple(theirs[name])
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
