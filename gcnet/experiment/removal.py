"""How much of the expression a generated reference removes, read by the fold's cnn: its mean probability of the
true class on X, on the true reference X_r, on the autoencoder's blurred copy A(X) and on each GCNet's G(X).
A generator that estimates X_r well (section 3.2) moves the cnn's belief from X's value towards X_r's; a
blurred copy of X does not.  -> <gcnet>/fold_K/expression_removal.json (the summary reads it).

Run by the runner after the models of a fold, in a subprocess (Caffe state and CHECK failures stay out of it):
    python -m gcnet.experiment.removal --cnn DIR --encdec DIR --test-lmdb LMDB --train-lmdb LMDB MODEL_DIR...
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from gcnet.layout import FINAL, REMOVAL
from gcnet.util import sha256_file, sha_text, write_json


def removal_key(cnn_dir, model_dir, encdec_dir, bn_samples: int, batch: int) -> str:
    """The inputs of one model's record: the three nets' weights and the re-estimation's samples."""
    return sha_text("removal-v1", *(sha256_file(Path(d) / FINAL) for d in (cnn_dir, model_dir, encdec_dir)),
                    bn_samples, batch)


def p_true(model, images, labels, preprocessed: bool = False) -> float:
    """Mean probability of the true class that `model` (a DeployModel) gives `images`."""
    import numpy as np
    prob = model.forward(images, ("prob",), 64, preprocessed=preprocessed)["prob"].reshape(len(labels), -1)
    return float(np.mean(prob[np.arange(len(labels)), labels]))


def expression_removal(cnn_dir: str, model_dirs: List[str], encdec_dir: str, test_lmdb: str, train_lmdb: str,
                       bn_samples: int = 1024, batch: int = 16, gpu: Optional[int] = None) -> Dict[str, dict]:
    """{model_dir: record} for the GCNet folders `model_dirs` of one fold."""
    import numpy as np
    from gcnet.bnstats import training_samples
    from gcnet.caffe_io import read_lmdb
    from gcnet.experiment.evaluate import autoencode
    from gcnet.inference import DeployModel
    items = read_lmdb(test_lmdb)
    pairs = np.stack([a for _, a, _ in items])
    labels = np.array([label for _, _, label in items])
    tx, _ = training_samples(train_lmdb, bn_samples, batch)
    cnn = DeployModel(cnn_dir, gpu=gpu)
    common = {"n": int(len(labels)), "p_true_x": p_true(cnn, pairs[:, :1], labels),
              "p_true_reference": p_true(cnn, pairs[:, 1:2], labels),
              "p_true_blurred_copy": p_true(cnn, autoencode(encdec_dir, pairs, tx, min(batch, len(tx)), gpu, 64),
                                            labels, preprocessed=True)}
    out = {}
    for d in model_dirs:
        gen = DeployModel(d, gpu=gpu).forward(pairs, ("gen_r",), 64)["gen_r"]
        out[d] = dict(common, p_true_generated=p_true(cnn, gen, labels, preprocessed=True), cnn=str(cnn_dir),
                      hash=removal_key(cnn_dir, d, encdec_dir, bn_samples, batch))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.experiment.removal", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="GCNet folders of one fold")
    ap.add_argument("--cnn", required=True)
    ap.add_argument("--encdec", required=True)
    ap.add_argument("--test-lmdb", required=True)
    ap.add_argument("--train-lmdb", required=True)
    ap.add_argument("--bn-samples", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gpu", type=int)
    a = ap.parse_args(argv)
    res = expression_removal(a.cnn, a.models, a.encdec, a.test_lmdb, a.train_lmdb, a.bn_samples, a.batch, a.gpu)
    for d, rec in res.items():
        write_json(Path(d) / REMOVAL, rec)
        print("%s: p(true class) by the cnn: X %.3f, G(X) %.3f, blurred copy %.3f, X_r %.3f" % (
            d, rec["p_true_x"], rec["p_true_generated"], rec["p_true_blurred_copy"], rec["p_true_reference"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
