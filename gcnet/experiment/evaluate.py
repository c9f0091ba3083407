"""The test stage of one model folder: every sample of the held-out fold's test LMDB through deploy.prototxt +
final.caffemodel (gcnet.inference: centre crop, as tools/predict.py), and the diagnostics -> test.json.

Run by the runner as `python -m gcnet.experiment.evaluate` in a subprocess: a Caffe CHECK failure then cannot
kill the runner, and each job gets its own BLAS threads and GPU (Caffe's mode and device are process state).
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from gcnet.layout import META, STAGE, TEST
from gcnet.util import read_json, write_json

def evaluate(model_dir: str, lmdb_path: str, index_path: Optional[str], n_classes: int, gpu: Optional[int] = None,
             batch: int = 64, train_lmdb: Optional[str] = None, bn_samples: int = 1024, train_batch: int = 16,
             train_acc_batch_stats: Optional[float] = None) -> dict:
    """Every sample of the test LMDB, X channel only, centre crop, through deploy.prototxt + final.caffemodel
    (gcnet.inference: the same preprocessing as tools/predict.py); with `train_lmdb`, the diagnostics of
    gcnet.diagnostics on the first `bn_samples` training samples (those of the BatchNorm re-estimation)."""
    import numpy as np
    from gcnet import diagnostics as D
    from gcnet.caffe_io import read_lmdb
    from gcnet.inference import DeployModel
    items = read_lmdb(lmdb_path)
    labels = [label for _, _, label in items]
    n = len(items)
    model = DeployModel(model_dir, gpu=gpu)
    pairs = np.stack([a for _, a, _ in items]) if n else np.zeros((0, 2, 66, 66), np.uint8)
    probs = np.zeros((n, n_classes), np.float32)
    gen = None
    if n:
        out = model.forward(pairs, ("prob", "gen_r"), batch)
        probs[:] = out["prob"].reshape(n, -1)[:, :n_classes]
        gen = out.get("gen_r")
    pred = probs.argmax(1).tolist() if n else []
    conf = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(labels, pred):
        conf[t][p] += 1
    index = read_json(index_path, []) if index_path else []
    frames = [e.get("frame") if isinstance(e, dict) else e for e in index] if len(index) == n else []
    correct = sum(int(t == p) for t, p in zip(labels, pred))
    res = {"accuracy": correct / n if n else 0.0, "n_test": n, "ci95": D.wilson_interval(correct, n),
           "confusion": conf, "labels": labels, "predictions": pred, "frames": frames,
           "probs": probs.round(6).tolist(), "crop": model.crop, "scale": model.scale}
    if train_lmdb:
        from gcnet.bnstats import training_samples
        tx, ty = training_samples(train_lmdb, bn_samples, train_batch)
        tb = min(train_batch, len(tx))
        acc_test = float(np.mean(model.predict(tx).argmax(1) == ty))
        if train_acc_batch_stats is None:
            bs = DeployModel(model_dir, gpu=gpu, batch_stats=True)
            train_acc_batch_stats = float(np.mean(bs.forward(tx, ("prob",), tb)["prob"].reshape(len(tx), -1)
                                                  .argmax(1) == ty))
        res["train"] = {"accuracy_test_phase": acc_test, "accuracy_batch_stats": train_acc_batch_stats,
                        "n": int(len(tx)), "batch": tb}
        if gen is not None and n:
            res["generator"] = D.generator_diagnostics(pairs, gen, tx, model.crop, model.scale)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.experiment.evaluate")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--lmdb", required=True)
    ap.add_argument("--index")
    ap.add_argument("--n-classes", type=int, required=True)
    ap.add_argument("--n-train", type=int, default=0)
    ap.add_argument("--hash", default="")
    ap.add_argument("--gpu", type=int)
    ap.add_argument("--train-lmdb")
    ap.add_argument("--bn-samples", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="training batch size (batch statistics)")
    a = ap.parse_args(argv)
    t0 = time.time()
    st = read_json(Path(a.dir) / STAGE, {}) or {}
    bn = st.get("bnstats") or {}
    # batch statistics do not depend on the stored ones: the re-estimation pass already scored these samples
    known = bn.get("train_accuracy_batch_stats") if bn.get("n_samples") and bn.get("batch") == min(
        a.batch, bn.get("n_samples")) else None
    from gcnet.inference import ModelError
    try:
        res = evaluate(a.dir, a.lmdb, a.index, a.n_classes, a.gpu, train_lmdb=a.train_lmdb,
                       bn_samples=a.bn_samples, train_batch=a.batch, train_acc_batch_stats=known)
    except ModelError as e:             # damaged weights, or weights of another net: one line, exit 2
        print("error: %s" % e, file=sys.stderr)
        return 2
    meta = read_json(Path(a.dir) / META, {}) or {}
    res.update(n_train=a.n_train, inputs_hash=a.hash, seconds=round(time.time() - t0, 2))
    res["class_names"] = meta.get("class_names")
    order = ["accuracy", "n_train", "n_test", "confusion", "labels", "predictions", "frames", "probs"]
    write_json(Path(a.dir) / TEST, {k: res[k] for k in order + [k for k in res if k not in order]})
    print("accuracy %.4f on %d test images" % (res["accuracy"], res["n_test"]))
    return 0


def result_line(tj: dict) -> str:
    """One line of a test.json: accuracy with n and interval, the training set in TEST phase and with batch
    statistics, and the generator against its baselines."""
    n = tj.get("n_test") or 0
    k = int(round(tj["accuracy"] * n))
    ci = tj.get("ci95") or [None, None]
    parts = ["accuracy %.4f (%d/%d, 95%% CI %s)" % (tj["accuracy"], k, n, _fmt_ci(ci))]
    tr = tj.get("train") or {}
    if tr.get("accuracy_test_phase") is not None:
        parts.append("train %.3f TEST phase / %s batch stats (n %d)" % (
            tr["accuracy_test_phase"], "-" if tr.get("accuracy_batch_stats") is None else
            "%.3f" % tr["accuracy_batch_stats"], tr.get("n", 0)))
    g = tj.get("generator")
    if g:
        parts.append("L_Gen,r %.2f (mean ref %.2f, copy X %.2f)%s" % (
            g["l_gen_r"], g["baseline_mean_reference"], g["baseline_copy_x"],
            " DEAD GENERATOR" if g["dead"] else ("" if g["beats_mean_reference"] else " (no better than the mean)")))
    return "; ".join(parts)


def _fmt_ci(ci) -> str:
    return "-" if ci is None or ci[0] is None else "%.3f-%.3f" % tuple(ci)


if __name__ == "__main__":
    sys.exit(main())
