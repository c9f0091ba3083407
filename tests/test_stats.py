"""Paired statistics (gcnet.stats) against hand-computed cases and an independent reference (scipy)."""
import numpy as np
import pytest
from scipy import stats as sps

from gcnet.stats import cluster_bootstrap_mean, mcnemar_exact, paired_comparison, significant


@pytest.mark.parametrize("b,c,p", [
    (0, 5, 2 / 32),                    # 2 * 0.5^5
    (1, 5, 2 * 7 / 64),                # 2 * (1 + 6) / 2^6
    (10, 0, 2 / 1024),
    (3, 3, 1.0),                       # min(1, 2 * P(X <= 3 | n 6)) = min(1, 2 * 42/64)
    (0, 0, 1.0),                       # no discordant pair: no evidence
    (0, 1, 1.0),
])
def test_mcnemar_exact_hand_computed(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("b,c", [(45, 20), (7, 19), (300, 355), (1200, 1000)])
def test_mcnemar_exact_matches_scipy_binomial_test(b, c):
    ref = sps.binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_cluster_bootstrap_two_subjects_hand_computed():
    # subject A: three images of value 1, subject B: one image of value 0.  A replicate draws two subjects:
    # AA (p 1/4) -> 1, BB (1/4) -> 0, AB or BA (1/2) -> 3/4.  The 2.5% / 97.5% quantiles are 0 and 1.
    r = cluster_bootstrap_mean([1, 1, 1, 0], ["A", "A", "A", "B"], n_boot=4000, seed=3)
    assert r["mean"] == 0.75 and r["n"] == 4 and r["n_clusters"] == 2
    assert r["ci95"] == [0.0, 1.0]


def test_cluster_bootstrap_resamples_subjects_not_images():
    # 20 subjects whose 5 images agree: the subject-level interval is wider than one from images resampled alone
    rng = np.random.default_rng(0)
    subj_values = rng.random(20) < 0.5
    values = np.repeat(subj_values.astype(float), 5)
    subjects = np.repeat(np.arange(20), 5)
    by_subject = cluster_bootstrap_mean(values, subjects, seed=1)
    by_image = cluster_bootstrap_mean(values, np.arange(100), seed=1)
    width = lambda r: r["ci95"][1] - r["ci95"][0]
    assert width(by_subject) > 1.8 * width(by_image)
    # a constant quantity has a zero-width interval
    const = cluster_bootstrap_mean(np.full(12, 0.3), np.repeat(np.arange(4), 3))
    assert const["ci95"] == pytest.approx([0.3, 0.3])


def test_cluster_bootstrap_checks_lengths():
    with pytest.raises(ValueError):
        cluster_bootstrap_mean([1, 0], ["a"])


def test_paired_comparison_counts_and_difference():
    a = [1, 1, 1, 1, 0, 0, 1, 1]          # model
    b = [1, 0, 0, 1, 0, 1, 0, 1]          # baseline
    subj = ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"]
    r = paired_comparison(a, b, subj, n_boot=2000)
    assert (r["only_model_right"], r["only_baseline_right"]) == (3, 1)
    assert r["accuracy"] == 0.75 and r["accuracy_baseline"] == 0.5 and r["difference"] == 0.25
    assert r["mcnemar_p"] == pytest.approx(mcnemar_exact(3, 1))
    assert r["n"] == 8 and r["n_subjects"] == 4
    lo, hi = r["difference_ci95"]
    assert lo <= 0.25 <= hi
    with pytest.raises(ValueError):
        paired_comparison([1, 0], [1], ["a", "b"])


def test_significant_needs_both_the_test_and_the_interval():
    assert significant({"mcnemar_p": 0.01, "difference_ci95": [0.02, 0.1]})
    assert not significant({"mcnemar_p": 0.01, "difference_ci95": [-0.01, 0.1]})
    assert not significant({"mcnemar_p": 0.2, "difference_ci95": [0.02, 0.1]})
    assert not significant(None)
