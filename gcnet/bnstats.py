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
from typing import Dict, List, Optional

import numpy as np

from gcnet.caffe_io import load_net_param, read_lmdb, save_net_param
from gcnet.util import write_json

__all__ = ["training_samples", "estimate_stats", "fit_output_scale", "recalibrate", "write_params", "main"]


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


def estimate_stats(model, x: np.ndarray, batch: int) -> Dict[str, List[np.ndarray]]:
    """{BatchNorm layer: [mean, var, 1]} of a DeployModel loaded with batch_stats=True, from the aligned samples
    `x` in batches of `batch` (the sums zeroed first, then averaged); the forward outputs stay in model.net."""
    names = model.batchnorm_layers()
    for name in names:
        for blob in model.net.params[name]:
            blob.data[...] = 0
    model.last = model.forward(x, ("prob",), batch=len(x) if len(x) < batch else batch)
    stats: Dict[str, List[np.ndarray]] = {}
    for name in names:
        mean, var, factor = (b.data.copy() for b in model.net.params[name])
        k = float(factor.reshape(-1)[0])
        stats[name] = [mean / k, var / k, np.ones_like(factor)]
    return stats


# the decoder whose output Scale fit_output_scale fits, and the BatchNorm before it (gcnet/nets.py names)
OUTPUT_SCALE, OUTPUT_BN, OUTPUT_BLOB = "de1r_scale1", "de1r_bn1", "gen_r"
FIT_TARGETS = {"x": 0, "xr": 1}         # --fit-output-scale: the channel of the pairs [X, X_r] it is fitted to


def fit_output_scale(model, pairs: np.ndarray, target: str) -> dict:
    """Least-squares fit of the generator's output Scale (gamma, beta of `de1r_scale1`, the last block
    DeConv(5x5, 1) - BNorm - Scale - ReLU of Table 1) to the target channel of the training pairs, the rest of the
    net fixed: its two values get gradients summed over every pixel and drift far from their optimum in a short
    run (docs/choices.md).  Sets them in `model` (a DeployModel with re-estimated statistics); returns the report."""
    from gcnet.diagnostics import per_image_error
    from gcnet.inference import crop_scale
    x = crop_scale(pairs[:, :1], model.crop, model.scale, model.mean)
    y = crop_scale(pairs, model.crop, model.scale, model.mean, dtype=np.float64)[:, FIT_TARGETS[target]]
    before = model.forward(pairs, (OUTPUT_BLOB,), 64)[OUTPUT_BLOB][:, 0]
    z = []
    for i in range(0, len(x), 64):                # the BatchNorm output, before the Scale (in place on one blob)
        model.net.blobs[model.input].reshape(*x[i:i + 64].shape)
        model.net.reshape()
        model.net.blobs[model.input].data[...] = x[i:i + 64]
        model.net.forward(end=OUTPUT_BN)
        z.append(model.net.blobs[OUTPUT_BLOB].data[:, 0].astype(np.float64))
    z = np.concatenate(z).ravel()
    gamma, beta = np.linalg.lstsq(np.stack([z, np.ones_like(z)], 1), y.ravel(), rcond=None)[0]
    blobs = model.net.params[OUTPUT_SCALE]
    old = [float(blobs[0].data.ravel()[0]), float(blobs[1].data.ravel()[0])]
    blobs[0].data[...] = gamma
    blobs[1].data[...] = beta
    after = model.forward(pairs, (OUTPUT_BLOB,), 64)[OUTPUT_BLOB][:, 0]
    return {"layer": OUTPUT_SCALE, "target": target, "gamma_beta_before": old,
            "gamma_beta": [float(gamma), float(beta)], "n_samples": int(len(x)),
            "train_error_before": float(per_image_error(before, y).mean()),
            "train_error": float(per_image_error(after, y).mean())}


def recalibrate(model_dir: str, weights: str, out: str, train_lmdb: str, n_samples: int = 1024, batch: int = 16,
                gpu=None, fit_scale: Optional[str] = None) -> dict:
    """Write `out`: `weights` with every BatchNorm layer's statistics re-estimated on the training set (and, with
    `fit_scale` "x" or "xr", the generator's output Scale fitted to that target); returns a report with the
    batch-statistics accuracy of the samples used (nets with a `prob` output) and, per layer, how far the stored
    mean was from the re-estimated one (in units of the re-estimated standard deviation)."""
    from gcnet.inference import DeployModel
    t0 = time.time()
    x, labels = training_samples(train_lmdb, n_samples, batch)
    model = DeployModel(model_dir, weights=weights, gpu=gpu, batch_stats=True)
    names = model.batchnorm_layers()
    old = {name: [b.data.copy() for b in model.net.params[name]] for name in names}
    stats = estimate_stats(model, x, batch)
    shift = {}
    for name in names:
        old_k = float(old[name][2].reshape(-1)[0])
        old_mean = old[name][0] / old_k if old_k else np.zeros_like(stats[name][0])
        shift[name] = float(np.mean(np.abs(old_mean - stats[name][0]) / np.sqrt(stats[name][1] + 1e-5)))
    prob = model.last.get("prob")
    report = {"n_samples": int(len(x)), "batch": int(min(batch, len(x))), "layers": len(names),
              "train_accuracy_batch_stats": None if prob is None else
              float(np.mean(prob.reshape(len(x), -1).argmax(1) == labels)),
              "stale_mean_shift": shift}
    replace = dict(stats)
    if fit_scale:
        fitted = DeployModel(model_dir, weights=weights, gpu=gpu)
        fitted.set_batchnorm_stats(stats)
        report["output_scale"] = fit_output_scale(fitted, x, fit_scale)
        replace[OUTPUT_SCALE] = [b.data.copy() for b in fitted.net.params[OUTPUT_SCALE]]
    write_params(weights, out, replace)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def write_params(weights: str, out: str, values: Dict[str, List[np.ndarray]]) -> None:
    """Copy the .caffemodel `weights` to `out` with the blobs of the layers in `values` replaced; every BatchNorm
    layer of the model must be among them (its statistics re-estimated)."""
    net = load_net_param(weights)
    missing = []
    for layer in net.layer:
        if layer.name not in values:
            if layer.type == "BatchNorm":
                missing.append(layer.name)
            continue
        for blob, value in zip(layer.blobs, values[layer.name]):
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
    ap.add_argument("--fit-output-scale", choices=tuple(FIT_TARGETS),
                    help="also fit the generator's output Scale (%s) to this channel of the pairs" % OUTPUT_SCALE)
    a = ap.parse_args(argv)
    from gcnet.inference import ModelError
    try:
        rep = recalibrate(a.model_dir, a.weights, a.out, a.train_lmdb, a.samples, a.batch, a.gpu,
                          a.fit_output_scale)
    except (BNStatsError, ModelError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    if a.report:
        write_json(a.report, rep)
    acc = rep["train_accuracy_batch_stats"]
    if rep.get("output_scale"):
        o = rep["output_scale"]
        print("output Scale %s fitted to %s: gamma, beta %.4f, %.4f -> %.4f, %.4f; training error %.2f -> %.2f" % (
            o["layer"], o["target"], *o["gamma_beta_before"], *o["gamma_beta"], o["train_error_before"],
            o["train_error"]))
    print("BatchNorm statistics of %d layers re-estimated on %d training samples%s -> %s" % (
        rep["layers"], rep["n_samples"], "" if acc is None else " (batch-statistics accuracy %.4f)" % acc, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
