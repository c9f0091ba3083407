#!/usr/bin/env python
"""Write prototxt/<model>/{train_val,deploy,solver}.prototxt for every model from gcnet/nets.py (and
deploy_ref.prototxt, the deploy net with the person's reference as an input, for the GCNets).

    python tools/make_prototxt.py             regenerate the committed files (paper schedule, CK+ 7 classes)
    python tools/make_prototxt.py --check     exit 1 and name each committed file that differs from the source
    python tools/make_prototxt.py --out DIR --dataset oulu --margin 2 ...   variants for your own experiments

The committed nets read the LMDBs of fold 0 that `tools/run_folds.sh ck+ --data ROOT --stop-after lmdb` writes
(results/ck+/lmdb/fold_0/{train,test,pretrain}) and snapshot to results/ck+/caffe_<model>_iter_N; every path is
relative to the repository root, where Caffe runs:  caffe train --solver prototxt/cnn/solver.prototxt.
The solver is config.solver_options of the schedule (config.SCHEDULES["paper"] and the options below), the one
mapping the runner uses; the runner writes per-fold nets with its own paths from the same source.
"""
import argparse
import os
import sys

from _repo import REPO

from gcnet import config as C  # noqa: E402
from gcnet.layout import RESULTS  # noqa: E402
from gcnet.prototxts import committed_files, differences, write_files  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "prototxt"), help="output folder (default: prototxt/)")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    ap.add_argument("--models", default=",".join(C.ALL_MODELS), help="comma list (default: all)")
    ap.add_argument("--dataset", default="ck+", choices=sorted(C.DATASETS),
                    help="its classes and neutral label, and its results folder %s/<dataset> (default %%(default)s)"
                         % RESULTS)
    ap.add_argument("--classes", type=int, help="number of expression classes (default: the dataset's)")
    ap.add_argument("--neutral-label", type=int, help="class index of neutral, -1 for none (alpha; default: the "
                    "dataset's)")
    ap.add_argument("--identities", type=int, default=100, help="cnn_id outputs (identities in pretraining)")
    ap.add_argument("--margin", type=float, default=C.NetOptions.margin, help="contrastive margin m (Eq. 4)")
    ap.add_argument("--decoder-lr-mult", type=float, default=C.NetOptions.decoder_lr_mult)
    ap.add_argument("--pool-stride", type=int, default=C.NetOptions.pool_stride)
    ap.add_argument("--batch", type=int, default=C.SCHEDULES["paper"]["batch"])
    ap.add_argument("--iters", type=int, help="expression-model iterations (default: the paper schedule's %d)"
                    % C.SCHEDULES["paper"]["iters"])
    ap.add_argument("--pretrain-iters", type=int, help="encdec and cnn_id iterations (default: --iters)")
    ap.add_argument("--generator-iters", type=int, help="the generator stage's iterations (default: --iters / 10)")
    ap.add_argument("--gamma", type=float, help="inv policy gamma (default %g)" % C.Schedule.gamma)
    ap.add_argument("--power", type=float, help="inv policy power (default %g)" % C.Schedule.power)
    ap.add_argument("--clip-gradients", type=float,
                    help="solver clip_gradients of the expression models (0 = off; default %g)"
                         % C.Schedule.clip_gradients)
    ap.add_argument("--pretrain-clip-gradients", type=float,
                    help="solver clip_gradients of encdec and cnn_id (0 = off; default %g)"
                         % C.Schedule.pretrain_clip_gradients)
    ap.add_argument("--finetune-output-scale", choices=C.FINETUNE_OUTPUT_SCALE,
                    default=C.NetOptions.finetune_output_scale)
    ap.add_argument("--contrastive-distance", choices=C.CONTRASTIVE_DISTANCES,
                    default=C.NetOptions.contrastive_distance)
    ap.add_argument("--fused-unpool", action=argparse.BooleanOptionalAction, default=C.NetOptions.fused_unpool,
                    help="each decoder's 5x5 unpooling + deconvolution as one UnpoolDeconvolution layer (Caffe patch "
                         "0012; default on); --no-fused-unpool: the MaxUnpool Python layer + Deconvolution")
    ap.add_argument("--results", help="results folder whose lmdb/fold_0 the train_val nets read and where the "
                    "snapshots go (default %s/<dataset>, relative to the repository root)" % RESULTS)
    ap.add_argument("--data-root", help="LMDB folder (its train, test, pretrain) named in the train_val nets "
                    "instead of <results>/lmdb/fold_0")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    schedule = C.make_schedule("paper", iters=args.iters, pretrain_iters=args.pretrain_iters,
                               generator_iters=args.generator_iters, gamma=args.gamma, power=args.power,
                               clip_gradients=args.clip_gradients, pretrain_clip_gradients=args.pretrain_clip_gradients)
    models = [m for m in args.models.split(",") if m]
    try:
        files = committed_files(models, args.dataset, schedule, args.results, args.classes, args.neutral_label,
                                args.data_root, os.path.abspath(args.out), n_identities=args.identities,
                                margin=args.margin,
                                decoder_lr_mult=args.decoder_lr_mult, pool_stride=args.pool_stride,
                                finetune_output_scale=args.finetune_output_scale,
                                contrastive_distance=args.contrastive_distance, batch_size=args.batch,
                                fused_unpool=args.fused_unpool)
    except ValueError as e:
        print("make_prototxt: %s" % e, file=sys.stderr)
        return 2
    if not args.check:
        for path in write_files(files, args.out):
            print("wrote", os.path.relpath(path, REPO))
        return 0
    different = differences(files, args.out)
    for rel, diff in different:
        print("\n".join(diff))
    for rel, _ in different:
        print("make_prototxt --check: %s differs from what gcnet/nets.py generates"
              % os.path.join(os.path.relpath(args.out, REPO), rel), file=sys.stderr)
    if different:
        print("run: python tools/make_prototxt.py", file=sys.stderr)
        return 1
    print("make_prototxt --check: all %d generated prototxt files match the source" % len(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
