#!/usr/bin/env python
"""Per-group gradient norms of a model's training objective, and the scale Caffe's clip_gradients would apply.

    tools/grad_norms.py results/synthetic/gcnet_s1r1/fold_0                  # at init.caffemodel
    tools/grad_norms.py results/synthetic/gcnet_s1r1/fold_0 --weights trained.caffemodel --batches 4 --clip 10

Runs TRAIN-phase forward + backward passes of the folder's train_val.prototxt (the weights stay unchanged) and
prints, averaged over the batches, the L2 norm of the parameter gradients per group (En_1, De_1r, En_2, De_2r,
De_2i, classifier, and each decoder's single-channel output Scale separately), the total, each loss term and what
`clip_gradients: C` would scale every gradient by (C / total when total > C).  Measure this before explaining a
training failure (docs/choices.md).
"""
import argparse
import sys

import _repo  # noqa: F401  (the repository on sys.path)

from gcnet.gradnorms import gradient_norms  # noqa: E402
from gcnet.inference import ModelError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="a <out>/<dataset>/<model>/fold_K folder (train_val.prototxt + weights)")
    ap.add_argument("--weights", default="init.caffemodel", help="weights in the folder (default %(default)s)")
    ap.add_argument("--batches", type=int, default=4, help="batches averaged (default %(default)s)")
    ap.add_argument("--clip", type=float, default=10.0, help="clip_gradients value to evaluate (default %(default)g)")
    a = ap.parse_args(argv)
    try:
        res = gradient_norms(a.model_dir, a.weights, a.batches)
    except (OSError, ValueError, ModelError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    total = res["total"]
    print("gradient L2 norms, mean over %d TRAIN batches of %s (%s):" % (a.batches, a.model_dir, a.weights))
    for group, v in res["groups"].items():
        print("  %-20s %10.4g  (%4.1f%% of the squared total)" % (group, v, 100 * v * v / total ** 2 if total else 0))
    print("  %-20s %10.4g" % ("total", total))
    print("losses: " + ", ".join("%s %.4g" % kv for kv in res["losses"].items()))
    scale = min(1.0, a.clip / total) if total > 0 else 1.0
    print("clip_gradients %g would scale every gradient by %.4g" % (a.clip, scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
