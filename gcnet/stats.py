"""Paired statistics of two models scored on the same test images (issue: a GCNet against the cnn).

* exact McNemar test: under H0 the b images only model A gets right and the c images only model B gets right are
  b + c fair coin flips; two-sided p = min(1, 2 P(Binomial(b + c, 1/2) <= min(b, c)));
* the accuracy difference with a 95% percentile interval from a bootstrap over test SUBJECTS (a subject's images
  are not independent: the same face, 3 peak frames of each sequence), and the same for any per-image quantity.
Pure numpy (and math); nothing here imports caffe.
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 10000
BOOTSTRAP_SEED = 0


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of b vs c discordant pairs (1.0 when there are none)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0, got %d and %d" % (b, c))
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # P(X <= k), X ~ Binomial(n, 1/2), summed in log space so that n in the thousands does not underflow
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def cluster_bootstrap_mean(values: Sequence[float], clusters: Sequence, n_boot: int = BOOTSTRAP_SAMPLES,
                           seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> Dict[str, float]:
    """Mean of per-image `values` and its percentile interval from resampling whole clusters (subjects) with
    replacement; each replicate's mean is over the images of the drawn subjects."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) != len(clusters):
        raise ValueError("values and clusters must be 1-D of the same length (%s vs %d)" % (v.shape, len(clusters)))
    if len(v) == 0:
        return {"mean": None, "ci95": [None, None], "n": 0, "n_clusters": 0}
    _, idx = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    g = int(idx.max()) + 1
    sums = np.bincount(idx, weights=v, minlength=g)
    counts = np.bincount(idx, minlength=g).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, g, size=(n_boot, g))
    # times each subject was drawn in each replicate
    weights = np.bincount((draws + g * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * g).reshape(n_boot, g)
    reps = (weights @ sums) / (weights @ counts)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return {"mean": float(v.mean()), "ci95": [float(lo), float(hi)], "n": int(len(v)), "n_clusters": g}


def paired_comparison(correct_a: Sequence[bool], correct_b: Sequence[bool], subjects: Sequence,
                      n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Dict[str, object]:
    """Model A against model B on the same images: accuracies, the difference A - B with its subject-bootstrap
    95% interval, the discordant counts (b: only A right, c: only B right) and the exact McNemar p-value."""
    a = np.asarray(correct_a, bool)
    b_ = np.asarray(correct_b, bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise ValueError("the two models were not scored on the same images (%s vs %s)" % (a.shape, b_.shape))
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    diff = cluster_bootstrap_mean(a.astype(float) - b_.astype(float), subjects, n_boot, seed)
    return {"n": int(len(a)), "n_subjects": diff["n_clusters"], "accuracy": float(a.mean()) if len(a) else None,
            "accuracy_baseline": float(b_.mean()) if len(a) else None, "difference": diff["mean"],
            "difference_ci95": diff["ci95"], "only_model_right": b, "only_baseline_right": c,
            "mcnemar_p": mcnemar_exact(b, c), "bootstrap": {"samples": n_boot, "seed": seed, "over": "subjects"}}


def significant(entry: Optional[dict], alpha: float = 0.05) -> bool:
    """A paired comparison in which the model beats the baseline: McNemar p < alpha and the subject-bootstrap
    interval of the difference above 0."""
    if not entry or entry.get("difference_ci95", [None])[0] is None:
        return False
    return entry["mcnemar_p"] < alpha and entry["difference_ci95"][0] > 0


# two-sided 99% Student t quantiles t(0.995, df), df 1-10; df > 10 uses df 10's (wider than its own: conservative)
_T995 = {1: 63.6567, 2: 9.9248, 3: 5.8409, 4: 4.6041, 5: 4.0321, 6: 3.7074, 7: 3.4995, 8: 3.3554, 9: 3.2498,
         10: 3.1693}


def prediction_interval(values: Sequence[float], floor: float = 0.0) -> Dict[str, object]:
    """The 99% prediction interval of ONE more draw from the population of `values` (k >= 2 draws, normal model):
    mean +- t(0.995, k-1) * sd * sqrt(1 + 1/k), with sd raised to `floor` when smaller (draws that happen to agree
    exactly).  Used to judge a GPU training against CPU trainings with other seeds (docs/choices.md)."""
    v = np.asarray(list(values), dtype=np.float64)
    if len(v) < 2 or not np.all(np.isfinite(v)):
        raise ValueError("a prediction interval needs >= 2 finite values, got %s" % list(v))
    k = len(v)
    sd = max(float(v.std(ddof=1)), float(floor))
    half = _T995[min(k - 1, 10)] * sd * math.sqrt(1.0 + 1.0 / k)
    return {"mean": float(v.mean()), "sd": sd, "k": k, "level": 0.99, "interval": [float(v.mean()) - half,
                                                                                     float(v.mean()) + half]}
