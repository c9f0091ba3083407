#!/usr/bin/env python
"""MaxUnpool forward + backward time: the working tree's python_layers/gcnet_layers.py against the one of a git ref,
interleaved in one run, on the three unpooling shapes of a GCNet decoder at the given batch (masks from a MAX
pooling of random data, so overlapping windows collide as in training).  No Caffe needed (numpy stand-in blobs).

    python tools/bench_unpool.py [--ref main] [--batch 64] [--repeats 9]

Prints per shape and in total the median ms of each version and the ratio new / old; checks that both give the
same output and gradient (bit for bit).
"""
import argparse
import os
import subprocess
import sys
import time
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (C, H, W, kernel) of the en*_pool1..3 inputs (= MaxUnpool outputs) of the default nets, stride 2
SHAPES = [(32, 64, 64, 5), (64, 31, 31, 3), (96, 15, 15, 3)]


class Blob(object):
    def __init__(self, data):
        self.data = data
        self.diff = np.zeros_like(data)

    def reshape(self, *shape):
        if tuple(shape) != self.data.shape:
            self.data = np.zeros(shape, np.float32)
            self.diff = np.zeros_like(self.data)


def load(source, name):
    mod = types.ModuleType(name)
    sys.modules[name] = mod
    exec(compile(source, name, "exec"), mod.__dict__)
    return mod


def pooled(x, k, s=2):
    """MAX pooling values and mask (Caffe semantics, stride 2, no pad) of x (N, C, H, W)."""
    n, c, h, w = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    top = np.full((n, c, oh, ow), -np.finfo(np.float32).max, np.float32)
    mask = np.full((n, c, oh, ow), -1, np.int64)
    xp = np.full((n, c, (oh - 1) * s + k, (ow - 1) * s + k), np.nan, np.float32)
    xp[:, :, :h, :w] = x
    for i in range(k):
        for j in range(k):
            cand = xp[:, :, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s]
            gt = cand > top
            top = np.where(gt, cand, top)
            mask = np.where(gt, (np.arange(oh) * s + i)[:, None] * w + (np.arange(ow) * s + j)[None, :], mask)
    return top, mask.astype(np.float32)


def make_layer(mod, h, w):
    layer = mod.MaxUnpool.__new__(mod.MaxUnpool)
    layer.param_str = '{"out_h": %d, "out_w": %d}' % (h, w)
    return layer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="main")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    old_src = subprocess.run(["git", "-C", REPO, "show", "%s:python_layers/gcnet_layers.py" % a.ref],
                             check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    new_src = open(os.path.join(REPO, "python_layers", "gcnet_layers.py")).read()
    mods = {"old": load(old_src, "gcnet_layers_old"), "new": load(new_src, "gcnet_layers_new")}
    rng = np.random.RandomState(0)
    cases = []
    for c, h, w, k in SHAPES:
        x = rng.randn(a.batch, c, h, w).astype(np.float32)
        p, m = pooled(x, k)
        dtop = rng.randn(a.batch, c, h, w).astype(np.float32)
        per = {}
        for name, mod in mods.items():
            bottom, top = [Blob(p.copy()), Blob(m.copy())], [Blob(np.zeros((1,), np.float32))]
            layer = make_layer(mod, h, w)
            layer.setup(bottom, top)
            layer.reshape(bottom, top)
            per[name] = (layer, bottom, top)
        cases.append(((c, h, w, k), per, dtop))
    times = {(s, n): [] for s, _, _ in cases for n in mods}
    for _ in range(a.repeats):
        for shape, per, dtop in cases:
            for name in ("old", "new"):
                layer, bottom, top = per[name]
                t0 = time.perf_counter()
                layer.forward(bottom, top)
                t1 = time.perf_counter()
                top[0].diff[...] = dtop               # (what the layer above would write; not timed)
                t2 = time.perf_counter()
                layer.backward(top, [True, False], bottom)
                times[(shape, name)].append(t1 - t0 + time.perf_counter() - t2)
    for shape, per, _ in cases:
        (lo, bo, to), (ln, bn, tn) = per["old"], per["new"]
        assert to[0].data.tobytes() == tn[0].data.tobytes(), "outputs differ for %s" % (shape,)
        assert bo[0].diff.tobytes() == bn[0].diff.tobytes(), "gradients differ for %s" % (shape,)
    print("MaxUnpool forward+backward, batch %d, median of %d, old = %s, new = working tree (outputs and gradients "
          "bit-identical)" % (a.batch, a.repeats, a.ref))
    tot = {"old": 0.0, "new": 0.0}
    for shape, _, _ in cases:
        o, n = (1e3 * np.median(times[(shape, k)]) for k in ("old", "new"))
        tot["old"] += o
        tot["new"] += n
        print("  C=%-3d %3dx%-3d k%d: old %7.2f ms  new %7.2f ms  ratio %.2f" % (shape + (o, n, n / o)))
    print("  one decoder (3 unpools): old %.2f ms  new %.2f ms  ratio %.2f" % (tot["old"], tot["new"],
                                                                            tot["new"] / tot["old"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
