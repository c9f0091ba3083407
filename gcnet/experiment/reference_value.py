"""Where a generated reference loses the value of the true one: the paired-reference net cnn_pair (Fig. 2b) retrained
with its reference channel replaced by
    blurred-true  G(X_r): the fold's generator (first step) applied to the TRUE reference: its blur, none of the
                  error of estimating X_r from X;
    generated     G(X):   the generator's estimate of X_r from X (a GCNet's reference, generator frozen).
Same init.caffemodel, solver, iterations, BatchNorm re-estimation and test as the run's cnn_pair; then paired
statistics on the same test images against cnn, cnn_pair (the true X_r) and each other.  cnn_pair measures the
information in X_r; G(X) is a function of X, so whatever value it has must come from what the generator learnt
(docs/choices.md, "The paper's mechanism").

    python -m gcnet.experiment.reference_value RESULTS/<dataset> [--folds 0,1] [--references blurred-true,generated]
-> RESULTS/<dataset>/reference_value/<reference>/fold_K/ (LMDBs, weights, test.json) and reference_value.json.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from gcnet.layout import (BN_REPORT, DEPLOY, FINAL, INIT, META, SNAPSHOTS, SOLVER, TEST, TRAIN_LOG, TRAIN_VAL, TRAINED,
                          ResultsLayout)
from gcnet.util import UsageError, copy_file, parse_folds, say, write_json, write_text

REFERENCES = ("blurred-true", "generated")
SOURCE_CHANNEL = {"blurred-true": 1, "generated": 0}     # the generator's input: X_r or X
BASELINES = ("cnn", "cnn_pair")


def replace_reference(generator_dir: Path, src_lmdb: Path, dst_lmdb: Path, reference: str) -> int:
    """Copy the pairs [X, X_r] of `src_lmdb` to `dst_lmdb` with X_r's centre crop replaced by G(X_r) or G(X)
    (rounded to uint8 pixels; the border outside the crop keeps X_r's pixels).  -> number of pairs."""
    from gcnet.caffe_io import read_lmdb
    from gcnet.data.lmdb_build.store import write_lmdb
    from gcnet.inference import DeployModel
    items = read_lmdb(str(src_lmdb))
    pairs = np.stack([a for _, a, _ in items])
    gen = DeployModel(str(generator_dir))
    c = SOURCE_CHANNEL[reference]
    out = gen.forward(pairs[:, c:c + 1], ("gen_r",), 64)["gen_r"][:, 0] / gen.scale
    o = (pairs.shape[2] - out.shape[1]) // 2
    new = pairs.copy()
    new[:, 1, o:o + out.shape[1], o:o + out.shape[2]] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return write_lmdb(str(dst_lmdb), ((a, y) for a, (_, _, y) in zip(new, items)), len(items),
                      "%s references" % reference)


def with_sources(net_text: str, lmdbs: Dict[str, Path]) -> str:
    """A train_val net's text with its TRAIN / TEST Data layers reading lmdbs["train"] / lmdbs["test"]."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = text_format.Parse(net_text, caffe_pb2.NetParameter())
    data = [layer for layer in net.layer if layer.type == "Data"]
    phases = sorted(layer.include[0].phase for layer in data if layer.include)
    if phases != [caffe_pb2.TRAIN, caffe_pb2.TEST]:
        raise SystemExit("error: expected one TRAIN and one TEST Data layer in the cnn_pair net")
    for layer in data:
        layer.data_param.source = str(lmdbs["train" if layer.include[0].phase == caffe_pb2.TRAIN else "test"])
    return text_format.MessageToString(net)


def retrain(lay: ResultsLayout, k: int, reference: str) -> Path:
    """cnn_pair of fold k trained and tested on the pairs with the replaced reference -> its folder."""
    from gcnet.bnstats import recalibrate
    from gcnet.experiment.evaluate import evaluate
    from gcnet.experiment.procs import caffe_binary, child_env
    from gcnet.experiment.train import snapshots
    src, d = lay.model_dir("cnn_pair", k), lay.reference_value_dir(reference, k)
    d.mkdir(parents=True, exist_ok=True)
    lmdbs = {s: d / ("lmdb_" + s) for s in ("train", "test")}
    for s, path in lmdbs.items():
        if not (path / "data.mdb").exists():
            say("[fold %d %s] %d pairs -> %s" % (k, reference, replace_reference(
                lay.generator_dir(k), lay.lmdb(k, s), path, reference), path))
    for name in (DEPLOY, INIT, SOLVER):
        copy_file(src / name, d / name)
    meta = json.loads((src / META).read_text())
    meta.pop("weights_sha256", None)        # other weights than the run's cnn_pair
    write_json(d / META, dict(meta, reference=reference))
    write_text(d / TRAIN_VAL, with_sources((src / TRAIN_VAL).read_text(), lmdbs))
    if not (d / TRAINED).exists():
        (d / SNAPSHOTS).mkdir(exist_ok=True)
        say("[fold %d %s] caffe train (%s)" % (k, reference, d / TRAIN_LOG))
        with open(d / TRAIN_LOG, "w") as log:
            rc = subprocess.call([caffe_binary(), "train", "--solver", SOLVER, "--weights", INIT], cwd=str(d),
                                 stdout=log, stderr=subprocess.STDOUT, env=child_env(1))
        snaps = snapshots(d)
        if rc or not snaps:
            raise SystemExit("error: caffe train failed (exit %d), see %s" % (rc, d / TRAIN_LOG))
        copy_file(snaps[-1][2], d / TRAINED)
    n_bn = int(json.loads((src / BN_REPORT).read_text()).get("n_samples", 1024))
    batch = int(meta.get("batch", 16))
    recalibrate(str(d), str(d / TRAINED), str(d / FINAL), str(lmdbs["train"]), n_bn, batch)
    res = evaluate(str(d), str(lmdbs["test"]), str(lay.test_index(k)), int(meta["n_classes"]))
    write_json(d / TEST, res)
    say("[fold %d %s] accuracy %.4f (n %d)" % (k, reference, res["accuracy"], res["n_test"]))
    return d


def compare(lay: ResultsLayout, folds: List[int], references) -> Dict[str, dict]:
    """Paired statistics, pooled over `folds`: each reference against cnn and cnn_pair, and blurred-true against
    generated (the summary's paired_folds)."""
    from gcnet.experiment.summary import paired_folds
    pairs = [(r, b, lay.reference_value_dir, lay.model_dir) for r in references for b in BASELINES]
    if set(REFERENCES) <= set(references):
        pairs.append(("blurred-true", "generated", lay.reference_value_dir, lay.reference_value_dir))
    out = {}
    for a, b, dir_a, dir_b in pairs:
        pooled, _, mismatched = paired_folds(lay, {k: dir_a(a, k) for k in folds}, {k: dir_b(b, k) for k in folds})
        if mismatched or pooled is None:
            raise SystemExit("error: %s and %s were not tested on the same images (folds %s)" % (a, b, mismatched))
        out["%s_vs_%s" % (a, b)] = pooled
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.experiment.reference_value",
                                 description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", help="a dataset's results folder (<out>/<dataset>) with cnn, cnn_pair and the "
                                    "generator stage done")
    ap.add_argument("--folds", default=None, help="e.g. 0-1 or 0,2 (default: every fold with cnn_pair tested)")
    ap.add_argument("--references", default=",".join(REFERENCES), help="comma-separated: " + ", ".join(REFERENCES))
    a = ap.parse_args(argv)
    lay = ResultsLayout.at(a.results)
    refs = [r for r in a.references.split(",") if r]
    bad = [r for r in refs if r not in REFERENCES]
    if bad or not refs:
        print("error: --references: choose from %s" % ", ".join(REFERENCES), file=sys.stderr)
        return 2
    done = sorted(lay.trained_models(["cnn_pair"], need=(TEST,)).get("cnn_pair", {}))
    try:
        folds = done if a.folds is None else parse_folds(a.folds)
    except UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    missing = [k for k in folds if k not in done or not (lay.generator_dir(k) / FINAL).exists()
               or not (lay.model_dir("cnn", k) / TEST).exists()]
    if missing or not folds:
        print("error: %s: fold(s) %s lack a tested cnn, cnn_pair or a generator stage"
              % (a.results, ",".join(map(str, missing)) or "-"), file=sys.stderr)
        return 2
    for k in folds:
        for r in refs:
            retrain(lay, k, r)
    res = {"folds": folds, "references": refs, "paired": compare(lay, folds, refs)}
    write_json(lay.reference_value_json, res)
    for name, p in res["paired"].items():
        lo, hi = p["difference_ci95"]
        say("%-28s n %d: %.1f%% vs %.1f%%, %+.1f points (%+.1f to %+.1f), McNemar p %.3g"
            % (name, p["n"], 100 * p["accuracy"], 100 * p["accuracy_baseline"], 100 * p["difference"], 100 * lo,
               100 * hi, p["mcnemar_p"]))
    say("-> %s" % lay.reference_value_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
