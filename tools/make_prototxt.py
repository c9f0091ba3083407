#!/usr/bin/env python
"""Write prototxt/<model>/{train_val,deploy,solver}.prototxt for every model from gcnet/nets.py (and
deploy_ref.prototxt, the deploy net with the person's reference as an input, for the GCNets).

    python tools/make_prototxt.py             regenerate the committed files (paper defaults, CK+ 7 classes)
    python tools/make_prototxt.py --check     exit 1 and name each committed file that differs from the source
    python tools/make_prototxt.py --out DIR --classes 6 --margin 2 ...   variants for your own experiments

The committed train_val nets read `data/lmdb/ck+/fold_0/{train,test,pretrain}` (the run_folds.sh layout); the
runner regenerates per-fold nets with the real paths from the same source.
"""
import argparse
import difflib
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcnet.config import (ALL_MODELS, CONTRASTIVE_DISTANCES, FINETUNE_OUTPUT_SCALE, PRETRAIN_CLIP_GRADIENTS,  # noqa: E402
                          PRETRAIN_MODELS, NetOptions, SolverOptions)
from gcnet.config import has_reference_variant  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "prototxt"), help="output folder (default: prototxt/)")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma list (default: all)")
    ap.add_argument("--classes", type=int, default=7, help="number of expression classes (6, 7 or 8)")
    ap.add_argument("--neutral-label", type=int, default=-1, help="class index of neutral, -1 for none (alpha)")
    ap.add_argument("--identities", type=int, default=100, help="cnn_id outputs (identities in pretraining)")
    ap.add_argument("--margin", type=float, default=NetOptions.margin, help="contrastive margin m (Eq. 4)")
    ap.add_argument("--decoder-lr-mult", type=float, default=NetOptions.decoder_lr_mult)
    ap.add_argument("--pool-stride", type=int, default=NetOptions.pool_stride)
    ap.add_argument("--batch", type=int, default=NetOptions.batch_size)
    ap.add_argument("--gamma", type=float, default=SolverOptions.gamma, help="inv policy gamma")
    ap.add_argument("--power", type=float, default=SolverOptions.power, help="inv policy power")
    ap.add_argument("--iters", type=int, default=SolverOptions.max_iter)
    ap.add_argument("--clip-gradients", type=float, default=SolverOptions.clip_gradients,
                    help="solver clip_gradients of the expression models (0 = off)")
    ap.add_argument("--pretrain-clip-gradients", type=float, default=PRETRAIN_CLIP_GRADIENTS,
                    help="solver clip_gradients of encdec and cnn_id (0 = off)")
    ap.add_argument("--finetune-output-scale", choices=FINETUNE_OUTPUT_SCALE, default=NetOptions.finetune_output_scale)
    ap.add_argument("--contrastive-distance", choices=CONTRASTIVE_DISTANCES, default=NetOptions.contrastive_distance)
    ap.add_argument("--data-root", default="data/lmdb/ck+/fold_0", help="LMDB folder named in train_val nets")
    return ap.parse_args(argv)


def generate(args, out_dir):
    """Write every requested model's three files under out_dir; return the written paths."""
    from gcnet.nets import write_net
    from gcnet.solver import make_solver
    written = []
    for model in [m for m in args.models.split(",") if m]:
        if model not in ALL_MODELS:
            raise SystemExit("make_prototxt: unknown model %r (known: %s)" % (model, ", ".join(ALL_MODELS)))
        pre = model in PRETRAIN_MODELS
        opts = NetOptions(n_classes=args.classes, neutral_label=args.neutral_label, n_identities=args.identities,
                          margin=args.margin, decoder_lr_mult=args.decoder_lr_mult, pool_stride=args.pool_stride,
                          finetune_output_scale=args.finetune_output_scale,
                          contrastive_distance=args.contrastive_distance,
                          batch_size=args.batch,
                          train_source="%s/%s" % (args.data_root, "pretrain" if pre else "train"),
                          test_source="%s/%s" % (args.data_root, "pretrain" if pre else "test"))
        sopts = SolverOptions(gamma=args.gamma, power=args.power, max_iter=args.iters,
                              clip_gradients=args.pretrain_clip_gradients if pre else args.clip_gradients)
        d = os.path.join(out_dir, model)
        os.makedirs(d, exist_ok=True)
        for phase in ("train_val", "deploy") + (("deploy_ref",) if has_reference_variant(model) else ()):
            path = os.path.join(d, phase + ".prototxt")
            write_net(model, opts, phase, path)
            written.append(path)
        path = os.path.join(d, "solver.prototxt")
        with open(path, "w") as f:
            f.write(make_solver("prototxt/%s/train_val.prototxt" % model, sopts, "snapshots/%s" % model))
        written.append(path)
    return written


def main(argv=None):
    args = parse_args(argv)
    if not args.check:
        for path in generate(args, args.out):
            print("wrote", os.path.relpath(path, REPO))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        different = []
        for path in generate(args, tmp):
            rel = os.path.relpath(path, tmp)
            committed = os.path.join(args.out, rel)
            new = open(path).read()
            old = open(committed).read() if os.path.exists(committed) else None
            if old != new:
                different.append(os.path.join(os.path.relpath(args.out, REPO), rel))
                diff = difflib.unified_diff((old or "").splitlines(), new.splitlines(), "committed", "generated",
                                            lineterm="", n=1)
                print("\n".join(list(diff)[:20]))
    if different:
        for rel in different:
            print("make_prototxt --check: %s differs from what gcnet/nets.py generates" % rel, file=sys.stderr)
        print("run: python tools/make_prototxt.py", file=sys.stderr)
        return 1
    print("make_prototxt --check: all %s prototxt files match the source" % "generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
