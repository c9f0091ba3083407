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

from gcnet.layout import DEPLOY_REF, META, STAGE, TEST
from gcnet.util import read_json, write_json

def evaluate(model_dir: str, lmdb_path: str, index_path: Optional[str], n_classes: int, gpu: Optional[int] = None,
             batch: int = 64, train_lmdb: Optional[str] = None, bn_samples: int = 1024, train_batch: int = 16,
             train_acc_batch_stats: Optional[float] = None, autoencoder: Optional[str] = None) -> dict:
    """Every sample of the test LMDB, centre crop, through deploy.prototxt + final.caffemodel (gcnet.inference: the
    same preprocessing as tools/predict.py; X, and X_r for a net given the true reference); with `train_lmdb`, the
    diagnostics of gcnet.diagnostics on the first `bn_samples` training samples (those of the BatchNorm
    re-estimation); `autoencoder` (a pretrained encdec folder) adds the blurred-copy baseline of the generator.
    A net without class probabilities (the generator stage) gets the generator measures only."""
    import numpy as np
    from gcnet import diagnostics as D
    from gcnet.caffe_io import read_lmdb
    from gcnet.inference import DeployModel
    items = read_lmdb(lmdb_path)
    labels = [label for _, _, label in items]
    n = len(items)
    model = DeployModel(model_dir, gpu=gpu)
    pairs = np.stack([a for _, a, _ in items]) if n else np.zeros((0, 2, 66, 66), np.uint8)
    index = read_json(index_path, []) if index_path else []
    entries = [e if isinstance(e, dict) else {"frame": e} for e in index] if len(index) == n else []
    res = {"n_test": n, "crop": model.crop, "scale": model.scale,
           "frames": [e.get("frame") for e in entries], "subjects": [e.get("subject") for e in entries]}
    out = model.forward(pairs, ("prob", "gen_r"), batch) if n else {}
    gen = out.get("gen_r")
    if model.has("prob"):
        probs = out["prob"].reshape(n, -1)[:, :n_classes] if n else np.zeros((0, n_classes), np.float32)
        pred = probs.argmax(1).tolist() if n else []
        conf = [[0] * n_classes for _ in range(n_classes)]
        for t, p in zip(labels, pred):
            conf[t][p] += 1
        correct = sum(int(t == p) for t, p in zip(labels, pred))
        res.update({"accuracy": correct / n if n else 0.0, "ci95": D.wilson_interval(correct, n), "confusion": conf,
                    "labels": labels, "predictions": pred, "probs": probs.round(6).tolist()})
    if train_lmdb:
        from gcnet.bnstats import training_samples
        tx, ty = training_samples(train_lmdb, bn_samples, train_batch)
        tb = min(train_batch, len(tx))
        if model.has("prob") and gen is not None and n and (Path(model_dir) / DEPLOY_REF).exists():
            res["true_reference"] = true_reference(model_dir, pairs, labels, tx, tb, gpu, batch, n_classes)
        if model.has("prob"):
            acc_test = float(np.mean(model.predict(tx).argmax(1) == ty))
            if train_acc_batch_stats is None:
                bs = DeployModel(model_dir, gpu=gpu, batch_stats=True)
                train_acc_batch_stats = float(np.mean(bs.forward(tx, ("prob",), tb)["prob"].reshape(len(tx), -1)
                                                      .argmax(1) == ty))
            res["train"] = {"accuracy_test_phase": acc_test, "accuracy_batch_stats": train_acc_batch_stats,
                            "n": int(len(tx)), "batch": tb}
        if gen is not None and n:
            gen_ref = model.forward(pairs[:, 1:2], ("gen_r",), batch)["gen_r"]     # G(X_r)
            auto = autoencode(autoencoder, pairs, tx, tb, gpu, batch) if autoencoder else None
            res["generator"] = D.generator_diagnostics(
                pairs, gen, tx, model.crop, model.scale, generated_from_reference=gen_ref, autoencoded=auto,
                subjects=res["subjects"] if entries else None)
            if autoencoder:
                res["generator"]["autoencoder"] = str(autoencoder)
    return res


def true_reference(model_dir: str, pairs, labels, train_pairs, train_batch: int, gpu: Optional[int], batch: int,
                   n_classes: int) -> dict:
    """Where the gain is lost: the GCNet's trained weights given the TRUE reference X_r in place of G(X) (its
    deploy_ref net), En_2's BatchNorm statistics of the reference branch re-estimated on the training pairs' true
    references (those of G(X) would misnormalise real faces) -> accuracy (n, interval) and predictions."""
    import numpy as np
    from gcnet import diagnostics as D
    from gcnet.bnstats import estimate_stats
    from gcnet.inference import DeployModel
    stats = estimate_stats(DeployModel(model_dir, gpu=gpu, batch_stats=True, deploy=DEPLOY_REF), train_pairs,
                           train_batch)
    ref = DeployModel(model_dir, gpu=gpu, deploy=DEPLOY_REF)
    ref.set_batchnorm_stats(stats)
    pred = ref.forward(pairs, ("prob",), batch)["prob"].reshape(len(pairs), -1)[:, :n_classes].argmax(1)
    k = int(np.sum(pred == np.asarray(labels)))
    return dict(D.accuracy_entry(k, len(pairs)), predictions=pred.tolist(), bn_statistics="re-estimated on X, X_r")


def autoencode(encdec_dir: str, pairs, train_pairs, train_batch: int, gpu: Optional[int], batch: int):
    """A(X): the pretrained autoencoder (encdec) reconstructing the test pairs' X, with BatchNorm statistics
    re-estimated on the training samples' X (as for every evaluated net)."""
    from gcnet.bnstats import estimate_stats
    from gcnet.inference import DeployModel
    stats = estimate_stats(DeployModel(encdec_dir, gpu=gpu, batch_stats=True), train_pairs, train_batch)
    auto = DeployModel(encdec_dir, gpu=gpu)
    auto.set_batchnorm_stats(stats)
    return auto.forward(pairs, ("gen_r",), batch)["gen_r"]


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
    ap.add_argument("--autoencoder", help="pretrained encdec folder: the generator's blurred-copy baseline")
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
                       bn_samples=a.bn_samples, train_batch=a.batch, train_acc_batch_stats=known,
                       autoencoder=a.autoencoder)
    except ModelError as e:             # damaged weights, or weights of another net: one line, exit 2
        print("error: %s" % e, file=sys.stderr)
        return 2
    meta = read_json(Path(a.dir) / META, {}) or {}
    res.update(n_train=a.n_train, inputs_hash=a.hash, seconds=round(time.time() - t0, 2))
    res["class_names"] = meta.get("class_names")
    order = [k for k in ("accuracy", "n_train", "n_test", "confusion", "labels", "predictions", "frames", "probs")
             if k in res]
    write_json(Path(a.dir) / TEST, {k: res[k] for k in order + [k for k in res if k not in order]})
    print(result_line(res))
    return 0


def result_line(tj: dict) -> str:
    """One line of a test.json: accuracy with n and interval, the training set in TEST phase and with batch
    statistics, and the generator against its baselines."""
    n = tj.get("n_test") or 0
    parts = []
    if tj.get("accuracy") is not None:
        k = int(round(tj["accuracy"] * n))
        parts.append("accuracy %.4f (%d/%d, 95%% CI %s)" % (tj["accuracy"], k, n, _fmt_ci(tj.get("ci95"))))
    tr = tj.get("train") or {}
    if tr.get("accuracy_test_phase") is not None:
        parts.append("train %.3f TEST phase / %s batch stats (n %d)" % (
            tr["accuracy_test_phase"], "-" if tr.get("accuracy_batch_stats") is None else
            "%.3f" % tr["accuracy_batch_stats"], tr.get("n", 0)))
    g = tj.get("generator")
    if g:
        parts.append(generator_line(g))
    return "; ".join(parts)


def generator_line(g: dict) -> str:
    """L_Gen,r on the test set against its baselines, one line."""
    extra = ""
    if g.get("baseline_blurred_copy") is not None:
        extra = ", blurred copy %.2f, beats it on %.0f%%" % (g["baseline_blurred_copy"],
                                                              100 * g["fraction_beats_blurred_copy"])
    if g.get("l_gen_r_on_reference") is not None:
        extra += ", G(X_r) %.2f" % g["l_gen_r_on_reference"]
    verdict = " DEAD GENERATOR" if g["dead"] else (" beats copy X" if g.get("beats_copy_x") else
                                                   " does NOT beat copy X")
    return "L_Gen,r %.2f (copy X %.2f, mean ref %.2f%s)%s" % (g["l_gen_r"], g["baseline_copy_x"],
                                                          g["baseline_mean_reference"], extra, verdict)


def _fmt_ci(ci) -> str:
    return "-" if ci is None or ci[0] is None else "%.3f-%.3f" % tuple(ci)


if __name__ == "__main__":
    sys.exit(main())
