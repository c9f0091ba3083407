"""Diagnostics written beside every test result, so that a model that did not train shows at a glance (issue of
stale BatchNorm statistics, starved classifier, dead generator; docs/choices.md):

* the training set scored in the TEST phase beside its batch-statistics score (gcnet.bnstats);
* the final value of each loss term of the training log;
* for GCNets, the per-image L_Gen,r = ||X_r - Generator(X)||^2 / 2 (Eq. 7, pixels scaled to [0, 1), the 64x64
  centre crop) on the test set beside its baselines (the mean training reference, "copy X", the autoencoder's
  "blurred copy") and the generator's fidelity on the reference itself; a generator whose every output pixel is
  <= 0 (its output ReLU died) is flagged dead.
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np

from gcnet.inference import crop_scale

DEAD_NOTE = "generator output is <= 0 everywhere (dead output ReLU): this model is a CNN on En_2(X) - En_2(0), " \
            "not a GCNet result"


def wilson_interval(k: int, n: int, z: float = 1.959964) -> Sequence[Optional[float]]:
    """95% Wilson score interval of a proportion k / n."""
    if n <= 0:
        return [None, None]
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def accuracy_entry(correct: int, n: int) -> dict:
    """{"accuracy", "n", "ci95"} of `correct` out of `n`."""
    return {"accuracy": correct / n if n else None, "n": n, "ci95": wilson_interval(correct, n)}


def per_image_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0.5 ||pred - target||^2 of each image (Eq. 7 without the batch mean), float64 (N,)."""
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return 0.5 * np.sum(d.reshape(len(d), -1) ** 2, axis=1)


def generator_diagnostics(test_pairs: np.ndarray, generated: np.ndarray, train_pairs: np.ndarray, crop: int,
                          scale: float, generated_from_reference: Optional[np.ndarray] = None,
                          autoencoded: Optional[np.ndarray] = None, subjects: Optional[Sequence] = None) -> dict:
    """How close Generator(X) comes to the reference X_r on the test set, per image 0.5 ||X_r - G(X)||^2 (Eq. 7,
    pixels scaled to [0, 1), the 64x64 centre crop), averaged over images, beside its baselines:

    * baseline_mean_reference: the mean training reference; baseline_copy_x: G(X) = X (no reference at all);
    * l_gen_r_on_reference: L(G(X_r), X_r), the generator's fidelity on the reference itself;
    * baseline_blurred_copy: L(A(X), X_r), A the autoencoder reconstructing X (the generator's own blur without
      any expression removed), and fraction_beats_blurred_copy (images where G(X) is closer to X_r than A(X));
      autoencoder_floor: L(A(X), X);
    * gain_over_copy_x: the mean per-image L(X, X_r) - L(G(X), X_r) with a subject-bootstrap 95% interval.
    `generated` / `generated_from_reference` / `autoencoded` are (N, 1, crop, crop) outputs for the test pairs'
    X / X_r / X; a generator whose every output pixel is <= 0 (its output ReLU died) is flagged dead."""
    from gcnet.stats import cluster_bootstrap_mean
    test = crop_scale(test_pairs, crop, scale, dtype=np.float64)
    x, xr = test[:, 0], test[:, 1]
    g = np.asarray(generated, np.float64).reshape(xr.shape)
    mean_ref = crop_scale(train_pairs[:, 1:2], crop, scale, dtype=np.float64)[:, 0].mean(0)
    err_g, err_x = per_image_error(g, xr), per_image_error(x, xr)
    out = {"l_gen_r": float(err_g.mean()), "baseline_mean_reference": float(per_image_error(
        np.broadcast_to(mean_ref, xr.shape), xr).mean()), "baseline_copy_x": float(err_x.mean()),
        "fraction_beats_copy_x": float(np.mean(err_g < err_x)),
        "output_max": float(g.max()) if g.size else None,
        "output_positive_fraction": float(np.mean(g > 0)) if g.size else None}
    out["beats_mean_reference"] = out["l_gen_r"] < out["baseline_mean_reference"]
    out["beats_copy_x"] = out["l_gen_r"] < out["baseline_copy_x"]
    out["dead"] = bool(g.size) and out["output_max"] <= 0
    if subjects is not None and len(subjects) == len(x):
        gain = cluster_bootstrap_mean(err_x - err_g, subjects)
        out["gain_over_copy_x"] = {"mean": gain["mean"], "ci95": gain["ci95"], "n": gain["n"],
                                   "n_subjects": gain["n_clusters"]}
    if generated_from_reference is not None:
        out["l_gen_r_on_reference"] = float(per_image_error(
            np.asarray(generated_from_reference, np.float64).reshape(xr.shape), xr).mean())
    if autoencoded is not None:
        a = np.asarray(autoencoded, np.float64).reshape(x.shape)
        err_a = per_image_error(a, xr)
        out.update(baseline_blurred_copy=float(err_a.mean()), autoencoder_floor=float(per_image_error(a, x).mean()),
                   fraction_beats_blurred_copy=float(np.mean(err_g < err_a)))
    return out


def final_losses(train_records: Sequence[dict]) -> Dict[str, float]:
    """{output name: value} of the last training record of a parsed Caffe log (gcnet.logparse) that has outputs,
    plus its total "loss"."""
    for r in reversed(train_records):
        if r.get("outputs"):
            out = dict(r["outputs"])
            if r.get("loss") is not None:
                out["loss"] = r["loss"]
            return out
    return {}
