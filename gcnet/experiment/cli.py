"""The command line of tools/run_folds.sh: the parser and main() (the settings it resolves: gcnet.experiment.settings).

Exit status: 0 all requested folds done, 1 some fold failed (the summary says which and why), 2 bad input,
130 interrupted (snapshots kept: rerun the same command to resume).
"""
import argparse
import sys

from gcnet import config as C
from gcnet.experiment.procs import REPO, Interrupted, Supervisor
from gcnet.experiment.settings import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Settings, array_tasks,
                                       resolve_settings, select_task)
from gcnet.layout import RESULTS
from gcnet.util import NO_SPACE, UsageError, os_error_line, say

SYNTHETIC = C.SCHEDULES["synthetic-cpu"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/run_folds.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the GCNet experiments of the paper (Kim et al., section 4) on one dataset:\n"
                    "  1 per-fold LMDBs  2 pretraining (encdec, cnn_id)  3 net surgery  4 caffe train of each model\n"
                    "  on each fold  5 test on the held-out fold  6 summary (+ figures).\n"
                    "Every stage is cached; rerunning the same command resumes where it stopped (Ctrl-C snapshots).",
        epilog="Defaults are the paper's: all five models, ten folds, 3e5 iterations, batch 64.  `synthetic` "
               "without --iters uses a CPU-sized profile (gcnet/config.py SCHEDULES['synthetic-cpu']: %s) on "
               "data/synthetic/ck+_<N>subjects_seed<S>, generated on first use.\n\n"
               "Examples:\n"
               "  tools/run_folds.sh synthetic\n"
               "  tools/run_folds.sh ck+ --data /data/CK+ --gpu 0,1,2,3\n"
               "  tools/run_folds.sh mmi --data /data/MMI --mmi-peaks peaks.csv --models cnn,gcnet_s1r1 --folds 0-4\n"
               "  tools/run_folds.sh ck+ --collect          # rebuild the summary from what is on disk\n\n"
               "Exit status: 0 ok, 1 some fold failed (see the summary), 2 bad input, 130 interrupted "
               "(rerun to resume)." % ", ".join("%s=%s" % kv for kv in SYNTHETIC.items()))
    ap.add_argument("dataset", help="one of: %s" % ", ".join(C.DATASETS))
    g = ap.add_argument_group("data")
    g.add_argument("--data", metavar="ROOT", help="dataset root in its original layout (required except for "
                   "synthetic, whose default is data/synthetic/ck+_<N>subjects_seed<S>, generated when missing)")
    g.add_argument("--landmarks", metavar="DIR", help="landmark files mirroring the dataset tree (else the "
                   "dataset's own / the face detector)")
    g.add_argument("--mmi-peaks", metavar="CSV", help="MMI peak frames (session,peak_frame)")
    g.add_argument("--augment", type=int, metavar="K", help="augmented copies per training sample in the LMDB "
                   "(default %d)" % C.DEFAULT_AUGMENT)
    g.add_argument("--pretrain-data", metavar="ROOT", help="CASIA-WebFace root for pretraining (paper), or `folds` "
                   "for the training folds' faces with identity labels (fold_K/pretrain); default: `folds`, except "
                   "the synthetic profiles, which make a synthetic WebFace set of other identities")
    g.add_argument("--synthetic-subjects", type=int, metavar="N",
                   help="identities when the synthetic set is generated (default %d)" % SYNTHETIC["subjects"])
    g = ap.add_argument_group("experiment")
    g.add_argument("--profile", choices=C.SYNTHETIC_PROFILES, help="schedule of the synthetic set: synthetic-cpu (the "
                   "default without --iters: %s) or ablation (%s); explicit options override it" % (
                       _profile_text(SYNTHETIC), _profile_text(C.SCHEDULES["ablation"])))
    g.add_argument("--models", default=",".join(C.EXPRESSION_MODELS),
                   help="comma-separated subset of %s (default all)" % ",".join(C.EXPRESSION_MODELS))
    g.add_argument("--folds", help="folds to run, e.g. 0-9, 3 or 0,2,5-7 (default all)")
    g.add_argument("--n-folds", type=int, help="number of cross-validation folds (default 10)")
    g.add_argument("--iters", type=int,
                   help="training iterations of each expression model (default %d)" % C.SCHEDULES["paper"]["iters"])
    g.add_argument("--pretrain-iters", type=int,
                   help="iterations of encdec and cnn_id (default: --iters)")
    g.add_argument("--generator-iters", type=int,
                   help="iterations of the per-fold generator stage, the first of the paper's two steps "
                        "(Generator(X) -> X_r from encdec; the GCNets start from it); 0 = none, the GCNets start "
                        "from encdec (default: --iters / 10)")
    g.add_argument("--no-fit-output-scale", dest="fit_output_scale", action="store_false",
                   help="keep the output Scale (gamma, beta of de1r_scale1) of encdec and of the generator stage as "
                        "training left it instead of fitting it to the targets (X, X_r) by least squares before "
                        "the GCNets freeze it (docs/choices.md)")
    g.add_argument("--batch", type=int, help="mini-batch size (default %d)" % C.SCHEDULES["paper"]["batch"])
    g.add_argument("--contrastive-distance", choices=C.CONTRASTIVE_DISTANCES, default=C.NetOptions.contrastive_distance,
                   help="S of Eq. 4-5: l2 = ||En_2(X) - En_2(X_r hat)|| (paper), rms = l2 / sqrt(feature size) "
                        "(default %(default)s; docs/choices.md)")
    g.add_argument("--margin", type=float, help="contrastive margin m (Eq. 4; default %s)" % ", ".join(
        "%g for %s" % (v, k) for k, v in C.DEFAULT_MARGIN.items()))
    g.add_argument("--finetune-output-scale", choices=C.FINETUNE_OUTPUT_SCALE, default=C.NetOptions.finetune_output_scale,
                   help="Scale of each decoder's 1-channel output block while fine-tuning: frozen at its pretrained "
                        "values, or trained at the decoder rate (paper; default %(default)s; docs/choices.md)")
    g.add_argument("--fused-unpool", action=argparse.BooleanOptionalAction, default=None,
                   help="each decoder's 5x5 unpooling + deconvolution as one Caffe layer (UnpoolDeconvolution, patch "
                        "0012: same results, no mostly-zero unpooled blob written) instead of the MaxUnpool Python "
                        "layer + Deconvolution (default: on for CPU runs, off with --gpu, where it would run on the "
                        "CPU; docs/choices.md)")
    g.add_argument("--clip-gradients", type=float,
                   help="solver clip_gradients of the expression models, 0 = off (default %g)" % C.Schedule.clip_gradients)
    g.add_argument("--pretrain-clip-gradients", type=float,
                   help="solver clip_gradients of encdec / cnn_id, 0 = off (default %g; docs/choices.md)"
                        % C.Schedule.pretrain_clip_gradients)
    g.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                   help="test with the BatchNorm running averages of training instead of statistics re-estimated "
                        "for the final weights on the training set (docs/choices.md)")
    g.add_argument("--bn-samples", type=int, help="training samples used to re-estimate the BatchNorm statistics "
                   "and to score the training set (default 1024)")
    g.add_argument("--surgery-bn-stats", choices=("zero", "copy"), default="zero",
                   help="BatchNorm statistics of init.caffemodel: zeroed (default) or copied from pretraining")
    g.add_argument("--gamma", type=float, help="inv policy gamma (default %g)" % C.Schedule.gamma)
    g.add_argument("--power", type=float, help="inv policy power (default %g)" % C.Schedule.power)
    g.add_argument("--base-lr", type=float, help="base learning rate (default %g)" % C.Schedule.base_lr)
    g.add_argument("--display", type=int, help="log/progress interval in iterations (default min(100, iters/20))")
    g.add_argument("--snapshot", type=int, help="snapshot interval (default min(10000, iters/4))")
    g.add_argument("--test-interval", type=int, help="in-training test interval (default min(1000, iters/5))")
    g.add_argument("--seed", type=int, default=0, help="seed of the LMDB shuffling/augmentation and of the "
                   "synthetic set")
    g = ap.add_argument_group("execution")
    g.add_argument("--gpu", default="cpu", metavar="ID[,ID..]|cpu", help="GPUs; each job gets its own "
                   "(default cpu)")
    g.add_argument("--jobs", type=int, help="fold trainings run at once (default: number of GPUs; on CPU one per "
                   "core, which with the --threads default gives each job one BLAS thread)")
    g.add_argument("--threads", type=int, help="BLAS/OpenMP threads per job (default: cores // jobs, so one "
                   "per job when the jobs fill the cores)")
    g.add_argument("--out", default=str(REPO / RESULTS), help="results root (default %(default)s); "
                   "everything goes to <out>/<dataset>/")
    g.add_argument("--no-figures", action="store_true", help="skip the figures step")
    g.add_argument("--no-summary", action="store_true", help="skip summary and figures (Slurm array tasks)")
    g.add_argument("--collect", action="store_true", help="only build summary (+figures) from what is on disk")
    g.add_argument("--stop-after", choices=("lmdb", "pretrain", "generator"),
                   help="stop after this stage (Slurm prep jobs; `lmdb`: the LMDBs that prototxt/*/train_val.prototxt read)")
    g.add_argument("--keep-snapshots", type=int, default=2, help="snapshots kept per training (default 2)")
    g = ap.add_argument_group("Slurm arrays (tools/slurm/)")
    g.add_argument("--task-index", type=int, metavar="I", help="run only task I of the selected models x folds "
                   "(I = fold position * number of models + model position); with --stop-after pretrain or "
                   "generator, task I = the I-th selected fold")
    g.add_argument("--count-tasks", action="store_true", help="print the number of tasks (models x folds, or "
                   "folds with --stop-after pretrain or generator) and exit")
    return ap


def _profile_text(p: dict) -> str:
    return "%d subjects, folds %s, %d iterations, batch %d" % (p["subjects"], p["folds"], p["iters"], p["batch"])


def settings_from(argv) -> Settings:
    """The Settings of a command line (tools/run_folds.sh's arguments)."""
    return resolve_settings(build_parser().parse_args(list(argv)))


def main(argv=None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from gcnet.experiment.pipeline import collect, run      # (after --help, which works before tools/setup.sh)
    sup = Supervisor()
    sup.install_signal_handlers()
    try:
        s = resolve_settings(a)
        if a.count_tasks:
            print(len(array_tasks(s)))
            return EXIT_OK
        if a.task_index is not None:
            select_task(s, a.task_index)
        return collect(s) if a.collect else run(s, sup)
    except UsageError as e:                  # DataError (gcnet.data) too
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except FileExistsError as e:             # the synthetic generator refusing to overwrite a folder
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        print("error: %s" % os_error_line(e), file=sys.stderr)   # a full disk: one line, the finished work kept
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt):
        say("Interrupted; rerun the same command to resume.")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
