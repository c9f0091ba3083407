"""Diagnostics written beside every test result, so that a model that did not train shows at a glance (issue of
stale BatchNorm statistics, starved classifier, dead generator; docs/choices.md):

* the training set scored in the TEST phase beside its batch-statistics score (gcnet.bnstats);
* the final value of each loss term of the training log;
* for GCNets, the per-image L_Gen,r = ||X_r - Generator(X)||^2 / 2 (Eq. 7, pixels scaled to [0, 1), the 64x64
  centre crop) on the test set beside two baselines: the mean training reference and "copy X" (Generator(X) = X);
  a generator whose every output pixel is <= 0 (its output ReLU died) is flagged dead.
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


def generator_diagnostics(test_pairs: np.ndarray, generated: np.ndarray, train_pairs: np.ndarray, crop: int,
                          scale: float) -> dict:
    """Per-image L_Gen,r on the test set (mean over images) against the mean-training-reference and copy-X
    baselines; `generated` is the deploy net's `gen_r` (N, 1, crop, crop) for `test_pairs` [X, X_r]."""
    test = crop_scale(test_pairs, crop, scale, dtype=np.float64)
    x, xr = test[:, 0], test[:, 1]
    g = np.asarray(generated, np.float64).reshape(xr.shape)
    mean_ref = crop_scale(train_pairs[:, 1:2], crop, scale, dtype=np.float64)[:, 0].mean(0)

    def per_image(pred):
        return float(np.mean(0.5 * np.sum((xr - pred) ** 2, axis=(1, 2))))

    out = {"l_gen_r": per_image(g), "baseline_mean_reference": per_image(mean_ref[None]),
           "baseline_copy_x": per_image(x), "output_max": float(g.max()) if g.size else None,
           "output_positive_fraction": float(np.mean(g > 0)) if g.size else None}
    out["beats_mean_reference"] = out["l_gen_r"] < out["baseline_mean_reference"]
    out["dead"] = bool(g.size) and out["output_max"] <= 0
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
