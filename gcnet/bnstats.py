"""BatchNorm statistics re-estimated for a model's final weights ("precise BN"), between training and test
(why: docs/choices.md).  The BatchNorm sums are zeroed, the first n training samples (TEST-phase transform) go
through the deploy net with batch statistics in batches of the training size, and their plain average replaces the
stored statistics; that pass also scores the training set with batch statistics (the diagnostics).

CLI (run by the experiment in a subprocess, so that a Caffe CHECK failure cannot kill the runner):
    python -m gcnet.bnstats MODEL_DIR --weights trained.caffemodel --out final.caffemodel --train-lmdb LMDB
        [--samples 1024] [--batch 16] [--gpu ID] [--report bn_stats.json]
"""
import argparse
import sys
import time
from typing import Dict, List

import numpy as np

from gcnet.caffe_io import load_net_param, read_lmdb, save_net_param
from gcnet.util import write_json

__all__ = ["training_samples", "recalibrate", "write_batchnorm_stats", "main"]


class BNStatsError(Exception):
    pass


def training_samples(train_lmdb: str, n: int, batch: int):
    """(aligned pairs (m, 2, 66, 66) uint8, labels (m,)) of the first m samples of the training LMDB, m = the
    largest multiple of `batch` <= n (all samples, one batch, when there are fewer than `batch`)."""
    items = read_lmdb(train_lmdb, limit=n)
    if not items:
        raise BNStatsError("training LMDB %s is empty" % train_lmdb)
    m = len(items) if len(items) < batch else (len(items) // batch) * batch
    items = items[:m]
    return np.stack([a for _, a, _ in items]), np.array([label for _, _, label in items], np.int64)


def recalibrate(model_dir: str, weights: str, out: str, train_lmdb: str, n_samples: int = 1024, batch: int = 16,
                gpu=None) -> dict:
    """Write `out`: `weights` with every BatchNorm layer's statistics re-estimated on the training set; returns a
    report with the batch-statistics accuracy of the samples used and, per layer, how far the stored mean was from
    the re-estimated one (in units of the re-estimated standard deviation)."""
    from gcnet.inference import DeployModel
    t0 = time.time()
    x, labels = training_samples(train_lmdb, n_samples, batch)
    model = DeployModel(model_dir, weights=weights, gpu=gpu, batch_stats=True)
    names = model.batchnorm_layers()
    old = {name: [b.data.copy() for b in model.net.params[name]] for name in names}
    for name in names:
        for blob in model.net.params[name]:
            blob.data[...] = 0
    prob = model.forward(x, ("prob",), batch=len(x) if len(x) < batch else batch)["prob"].reshape(len(x), -1)
    stats: Dict[str, List[np.ndarray]] = {}
    shift = {}
    for name in names:
        mean, var, factor = (b.data.copy() for b in model.net.params[name])
        k = float(factor.reshape(-1)[0])
        stats[name] = [mean / k, var / k, np.ones_like(factor)]
        old_k = float(old[name][2].reshape(-1)[0])
        old_mean = old[name][0] / old_k if old_k else np.zeros_like(mean)
        shift[name] = float(np.mean(np.abs(old_mean - stats[name][0]) / np.sqrt(stats[name][1] + 1e-5)))
    write_batchnorm_stats(weights, out, stats)
    return {"n_samples": int(len(x)), "batch": int(min(batch, len(x))), "layers": len(names),
            "train_accuracy_batch_stats": float(np.mean(prob.argmax(1) == labels)),
            "stale_mean_shift": shift, "seconds": round(time.time() - t0, 1)}


def write_batchnorm_stats(weights: str, out: str, stats: Dict[str, List[np.ndarray]]) -> None:
    """Copy the .caffemodel `weights` to `out` with the blobs of the BatchNorm layers in `stats` replaced; every
    BatchNorm layer of the model must be in `stats`."""
    net = load_net_param(weights)
    missing = []
    for layer in net.layer:
        if layer.type != "BatchNorm":
            continue
        if layer.name not in stats:
            missing.append(layer.name)
            continue
        for blob, value in zip(layer.blobs, stats[layer.name]):
            if blob.data and len(blob.data) != value.size:
                raise BNStatsError("layer %s: %d stored values, %d re-estimated" % (layer.name, len(blob.data),
                                                                                   value.size))
            del blob.data[:]
            blob.data.extend(np.asarray(value, np.float32).reshape(-1).tolist())
    if missing:
        raise BNStatsError("BatchNorm layers of %s not in the deploy net, so not re-estimated: %s"
                           % (weights, ", ".join(missing)))
    save_net_param(net, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.bnstats", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-lmdb", required=True)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gpu", type=int)
    ap.add_argument("--report")
    a = ap.parse_args(argv)
    from gcnet.inference import ModelError
    try:
        rep = recalibrate(a.model_dir, a.weights, a.out, a.train_lmdb, a.samples, a.batch, a.gpu)
    except (BNStatsError, ModelError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    if a.report:
        write_json(a.report, rep)
    print("BatchNorm statistics of %d layers re-estimated on %d training samples (batch-statistics accuracy %.4f) "
          "-> %s" % (rep["layers"], rep["n_samples"], rep["train_accuracy_batch_stats"], a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
