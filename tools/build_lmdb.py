#!/usr/bin/env python3
"""Build the per-fold paired LMDBs of a facial expression data set (original layout) for GCNet.

Reads the data set in its original layout (CK+, Oulu-CASIA VIS, MMI), aligns every needed frame to a 66x66 grey
face (5 points: landmark files, else the mediapipe detector), splits the subjects into subject-independent folds
and writes under OUT:
    folds.json  manifest.json  build_report.json (skipped files with reasons)  align_cache.npz
    fold_K/{train,test,pretrain}  (Caffe Datum, 2 channels [X, X_r], 66x66, label = class index)
    fold_K/test_index.json  fold_K/manifest.json
A second run with the same inputs and options does nothing (after checking that each LMDB opens and holds the
entries its manifest records; a damaged one is rebuilt); a changed option or input file rebuilds.
Exit status: 0 ok, 1 the build failed (e.g. disk full), 2 bad input or usage (one line naming the path),
130 interrupted (rerun to resume).

examples:
  tools/build_lmdb.py ck+  --data /data/CK+ --out results/ck+/lmdb
  tools/build_lmdb.py mmi  --data /data/MMI --out results/mmi/lmdb --mmi-peaks mmi_peaks.csv
  tools/build_lmdb.py oulu --data /data/Oulu-CASIA --out results/oulu/lmdb --folds 0-2 --augment 0
  tools/build_lmdb.py ck+  --data data/synthetic/ck+ --out /tmp/lmdb --pretrain-data /data/CASIA-WebFace
"""
import argparse
import os
import sys

import _repo  # noqa: F401  (the repository on sys.path)

from gcnet.config import DATASETS, DEFAULT_AUGMENT  # noqa: E402
from gcnet.util import UsageError, os_error_line, parse_folds  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(DATASETS), help="protocol / label set (gcnet.config.DATASETS)")
    ap.add_argument("--data", required=True, metavar="ROOT", help="data set root in its original layout")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder of the LMDBs")
    ap.add_argument("--folds", default=None, metavar="LIST",
                    help="folds to build, e.g. 0-9 (default: all), 0,3 or 2")
    ap.add_argument("--n-folds", type=int, default=10, help="number of subject-independent folds (default 10)")
    ap.add_argument("--augment", type=int, default=DEFAULT_AUGMENT, metavar="K",
                    help="augmented copies per training sample (random scale 0.9-1.1, rotation +-10 deg, "
                         "intensity x0.8-1.2; default %(default)s; 0 = none)")
    ap.add_argument("--landmarks", default=None, metavar="DIR",
                    help="landmark mirror tree (relative image path with suffix .pts, 68 or 5 'x y' lines); "
                         "default: <ROOT>_landmarks/ next to the root when it exists")
    ap.add_argument("--pretrain-data", default=None, metavar="ROOT",
                    help="CASIA-WebFace root (<identity>/<n>.jpg) for the pretraining LMDB; default: the "
                         "training folds' own frames, labelled by subject")
    ap.add_argument("--pretrain-landmarks", default=None, metavar="DIR", help="landmark mirror tree of --pretrain-data")
    ap.add_argument("--mmi-peaks", default=None, metavar="CSV",
                    help="MMI peak frames, lines 'session,peak_frame' (0-based); default <ROOT>/peaks.csv when "
                         "present, else the middle frame")
    ap.add_argument("--seed", type=int, default=0, help="seed of shuffling and augmentation (default 0)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the manifest says up to date")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    try:
        from gcnet.data.lmdb_build import build_lmdbs
        folds = parse_folds(a.folds, a.n_folds) if a.folds else None
        m = build_lmdbs(a.dataset, a.data, a.out, n_folds=a.n_folds, folds=folds, augment_copies=a.augment,
                        seed=a.seed, landmarks_root=a.landmarks, pretrain_root=a.pretrain_data,
                        pretrain_landmarks=a.pretrain_landmarks, mmi_peaks=a.mmi_peaks, force=a.force,
                        progress=None if a.quiet else (lambda s: print(s, flush=True)))
    except UsageError as e:                      # DataError too
        print("build_lmdb: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("build_lmdb: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:                         # a full disk: one line naming the path
        print("build_lmdb: failed: %s" % os_error_line(e), file=sys.stderr)
        return 1
    if not a.quiet:
        print("samples per class: %s" % ", ".join("%s %d" % kv for kv in m["counts"]["per_class"].items()))
        for k, f in sorted(m["folds"].items(), key=lambda t: int(t[0])):
            print("fold %s: train %d (%d unique), test %d, pretrain %d (%d identities)"
                  % (k, f["n_train"], f["n_train_unique"], f["n_test"], f["n_pretrain"], f["n_identities"]))
        if m.get("skipped_by_reason"):
            print("skipped: %s; %d sample(s) lost (details: %s)"
                  % (", ".join("%s %d" % kv for kv in m["skipped_by_reason"].items()), m.get("n_samples_lost", 0),
                     os.path.join(a.out, "build_report.json")))
        for n in m.get("notes", []):
            print("note: %s" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
