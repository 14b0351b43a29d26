import math

import numpy as np
import pytest
from sklearn import metrics as skm

from dermsynth import metrics as M


def test_hand_computed_confusion_and_rates():
    y = [0, 0, 0, 0, 1, 1, 1]
    yhat = [0, 0, 1, 0, 1, 0, 1]
    # TN=3 FP=1 FN=1 TP=2
    assert M.confusion(y, yhat).tolist() == [[3, 1], [1, 2]]
    assert M.accuracy(y, yhat) == pytest.approx(5 / 7)
    assert M.sensitivity(y, yhat) == pytest.approx(2 / 3)
    assert M.specificity(y, yhat) == pytest.approx(3 / 4)
    assert M.balanced_accuracy(y, yhat) == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert M.f1(y, yhat) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_auroc_hand_cases_with_ties():
    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0  # perfect
    assert M.auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0  # inverted
    assert M.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    # pairs (pos, neg): 0.8 vs {0.1, 0.8}: 1 + 0.5; 0.4 vs {0.1, 0.8}: 1 + 0 -> 2.5 / 4
    assert M.auroc([0, 0, 1, 1], [0.1, 0.8, 0.8, 0.4]) == pytest.approx(0.625)
    assert M.auroc([0, 0, 0, 1, 1], [0.3, 0.3, 0.3, 0.3, 0.3]) == 0.5


def test_single_class_edge_cases():
    y = [1, 1, 1]
    assert math.isnan(M.auroc(y, [0.1, 0.5, 0.9]))
    assert math.isnan(M.specificity(y, [1, 0, 1]))
    assert M.sensitivity(y, [1, 0, 1]) == pytest.approx(2 / 3)
    assert M.balanced_accuracy(y, [1, 0, 1]) == pytest.approx(2 / 3)  # mean over present classes
    assert math.isnan(M.f1([0, 0], [0, 0]))
    assert math.isnan(M.accuracy([], []))
    s = M.summarize([0, 0, 0], [0.1, 0.2, 0.7], n_boot=50)
    assert math.isnan(s["auroc"]["value"]) and math.isnan(s["auroc"]["lo"])
    assert s["accuracy"]["value"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    score = np.clip(0.3 * y + rng.normal(0.35, 0.25, 300), 0, 1).round(2)  # rounded: many ties
    yhat = (score >= 0.5).astype(int)
    assert M.accuracy(y, yhat) == pytest.approx(skm.accuracy_score(y, yhat))
    assert M.balanced_accuracy(y, yhat) == pytest.approx(skm.balanced_accuracy_score(y, yhat))
    assert M.auroc(y, score) == pytest.approx(skm.roc_auc_score(y, score))
    assert M.f1(y, yhat) == pytest.approx(skm.f1_score(y, yhat))
    assert M.sensitivity(y, yhat) == pytest.approx(skm.recall_score(y, yhat))
    assert M.specificity(y, yhat) == pytest.approx(skm.recall_score(y, yhat, pos_label=0))
    assert M.confusion(y, yhat).tolist() == skm.confusion_matrix(y, yhat).tolist()
    allm = M.all_metrics(y, score)
    assert allm["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat))
    fpr, tpr, _ = M.roc_curve(y, score)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, score))


def _noisy(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.4 * y + rng.normal(0.3, 0.2, n), 0, 1)


def test_bootstrap_ci_contains_estimate_and_narrows():
    y, s = _noisy(2000, 0)
    acc = M.metric_from_score("accuracy")
    widths = []
    for n_items in (100, 2000):
        yy, ss = y[:n_items], s[:n_items]
        lo, hi = M.bootstrap_ci(yy, ss, acc, n=400, seed=1)
        assert lo <= acc(yy, ss) <= hi
        widths.append(hi - lo)
        lo, hi = M.bootstrap_ci(yy, ss, M.auroc, n=400, seed=1)
        assert lo <= M.auroc(yy, ss) <= hi
    assert widths[1] < widths[0] * 0.5  # ~ 1/sqrt(20) narrower
    # a narrower CI level gives a narrower interval; the same seed gives the same interval
    a = M.bootstrap_ci(y, s, acc, n=300, ci=0.5, seed=3)
    b = M.bootstrap_ci(y, s, acc, n=300, ci=0.95, seed=3)
    assert a[1] - a[0] < b[1] - b[0]
    assert b == M.bootstrap_ci(y, s, acc, n=300, ci=0.95, seed=3)


def test_bootstrap_skips_resamples_missing_a_class():
    y = np.array([1] + [0] * 9)
    s = np.linspace(0, 1, 10)
    vals = M.bootstrap_values(y, s, M.auroc, n=200, seed=0)
    assert np.isnan(vals).any() and np.isfinite(vals).any()
    lo, hi = M.bootstrap_ci(y, s, M.auroc, n=200, seed=0)
    assert np.isfinite(lo) and np.isfinite(hi)


def test_summarize_structure():
    y, s = _noisy(300, 4)
    out = M.summarize(y, s, n_boot=200, ci=0.95, seed=0)
    assert set(out) == set(M.METRIC_NAMES)
    for v in out.values():
        assert v["lo"] <= v["value"] <= v["hi"]


def test_paired_bootstrap_diff():
    y, good = _noisy(500, 5)
    rng = np.random.default_rng(9)
    bad = np.clip(good + rng.normal(0, 0.4, len(good)), 0, 1)
    acc = M.metric_from_score("accuracy")
    r = M.paired_bootstrap_diff(y, good, bad, acc, n=500, seed=0)
    assert r["diff"] == pytest.approx(acc(y, good) - acc(y, bad))
    assert r["lo"] <= r["diff"] <= r["hi"]
    assert r["lo"] > 0 and r["p"] < 0.01
    same = M.paired_bootstrap_diff(y, good, good, acc, n=200, seed=0)
    assert same["diff"] == 0 and same["p"] == 1.0
    auc = M.paired_bootstrap_diff(y, good, bad, M.auroc, n=200, seed=0)
    assert auc["diff"] > 0


def test_mean_sd():
    m, sd = M.mean_sd([1.0, 2.0, 3.0])
    assert m == 2.0 and sd == pytest.approx(1.0)
    m, sd = M.mean_sd([0.7])
    assert m == 0.7 and math.isnan(sd)
    assert all(math.isnan(v) for v in M.mean_sd([]))


def test_roc_curve_points_match_sklearn_with_ties():
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    s = np.array([0.1, 0.4, 0.4, 0.4, 0.9, 0.2, 0.9, 0.6])  # ties across classes
    fpr, tpr, thr = M.roc_curve(y, s)
    sf, st, sthr = skm.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sf) and np.allclose(tpr, st) and np.allclose(thr[1:], sthr[1:])
    # by hand: at threshold 0.4 the positives 0.9, 0.6, 0.4, 0.4 (all 4) and negatives 0.9, 0.4 (2 of 4)
    k = int(np.flatnonzero(thr == 0.4)[0])
    assert (tpr[k], fpr[k]) == (1.0, 0.5)


def test_one_class_and_degenerate_cases_agree_with_sklearn():
    import warnings

    y, yhat = np.array([1, 1, 1, 1]), np.array([1, 0, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the class missing from y
        assert M.balanced_accuracy(y, yhat) == pytest.approx(skm.balanced_accuracy_score(y, yhat))
        assert math.isnan(skm.f1_score([0, 0], [0, 0], zero_division=np.nan))
    assert math.isnan(M.f1([0, 0], [0, 0]))
    assert M.f1([0, 1], [0, 0]) == pytest.approx(skm.f1_score([0, 1], [0, 0], zero_division=0.0)) == 0.0
    # every score tied: AUROC 0.5 exactly, as sklearn
    assert M.auroc([0, 1, 0, 1], [0.3] * 4) == skm.roc_auc_score([0, 1, 0, 1], [0.3] * 4) == 0.5
    # threshold: a score equal to it counts as malignant
    assert M.predictions([0.5, 0.4999]).tolist() == [1, 0]


def test_bootstrap_ci_is_the_percentile_of_the_resampled_metric():
    y, s = _noisy(60, 8)
    acc = M.metric_from_score("accuracy")
    idx = M.resample_indices(len(y), 300, seed=5)
    by_hand = np.array([np.mean(y[i] == (s[i] >= 0.5)) for i in idx])
    assert np.allclose(M.bootstrap_values(y, s, acc, n=300, seed=5), by_hand)
    lo, hi = M.bootstrap_ci(y, s, acc, n=300, ci=0.9, seed=5)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(by_hand, [0.05, 0.95])))
    summ = M.summarize(y, s, n_boot=300, ci=0.9, seed=5)["accuracy"]
    assert (summ["lo"], summ["hi"]) == pytest.approx((lo, hi))  # same resamples for every metric


def test_paired_bootstrap_hand_cases():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    right = np.where(y == 1, 0.9, 0.1)
    wrong = 1 - right
    acc = M.metric_from_score("accuracy")
    r = M.paired_bootstrap_diff(y, right, wrong, acc, n=99, seed=0)
    # a always right, b always wrong: every resample differs by exactly +1; p = 2 * (0 + 1) / (99 + 1)
    assert (r["diff"], r["lo"], r["hi"]) == (1.0, 1.0, 1.0) and r["p"] == pytest.approx(0.02)
    # ties: identical predictions on every resample -> difference 0 everywhere, p = 1
    tie = M.paired_bootstrap_diff(y, right, right.copy(), acc, n=50, seed=0)
    assert (tie["diff"], tie["lo"], tie["hi"], tie["p"]) == (0.0, 0.0, 0.0, 1.0)
    # one class only: AUROC undefined on every resample -> no interval, no p, no crash
    one = M.paired_bootstrap_diff(np.zeros(6, int), right[:6], wrong[:6], M.auroc, n=30)
    assert one["n_boot"] == 0 and math.isnan(one["p"]) and math.isnan(one["diff"])
    # swapping the models negates the difference and mirrors the interval
    y2, a = _noisy(200, 3)
    b = np.clip(a + np.random.default_rng(1).normal(0, 0.3, 200), 0, 1)
    ab = M.paired_bootstrap_diff(y2, a, b, acc, n=300, seed=2)
    ba = M.paired_bootstrap_diff(y2, b, a, acc, n=300, seed=2)
    assert ab["diff"] == pytest.approx(-ba["diff"]) and ab["lo"] == pytest.approx(-ba["hi"])
    assert ab["p"] == pytest.approx(ba["p"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_metrics_are_sklearn_on_each_resample(seed):
    import warnings

    rng = np.random.default_rng(seed)
    n = 40
    y = rng.integers(0, 2, n) if seed else np.r_[np.ones(3, int), np.zeros(n - 3, int)]  # seed 0: rare
    score = np.clip(0.3 * y + rng.normal(0.35, 0.25, n), 0, 1).round(1)  # rounded: many ties
    idx = M.resample_indices(n, 200, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on resamples without a class
        by_hand = {
            "accuracy": [skm.accuracy_score(y[i], score[i] >= 0.5) for i in idx],
            "balanced_accuracy": [skm.balanced_accuracy_score(y[i], score[i] >= 0.5) for i in idx],
            "sensitivity": [skm.recall_score(y[i], score[i] >= 0.5, zero_division=np.nan) for i in idx],
            "specificity": [
                skm.recall_score(y[i], score[i] >= 0.5, pos_label=0, zero_division=np.nan) for i in idx
            ],
            "f1": [skm.f1_score(y[i], score[i] >= 0.5, zero_division=np.nan) for i in idx],
            "auroc": [skm.roc_auc_score(y[i], score[i]) if len(set(y[i])) == 2 else np.nan for i in idx],
        }
    for name, expected in by_hand.items():
        got = M.metric_from_score(name).resampled(y, score, idx)
        np.testing.assert_allclose(got, np.array(expected, dtype=float), rtol=0, atol=1e-12, err_msg=name)
    assert np.isnan(by_hand["auroc"]).any() == (seed == 0)  # the rare class drops out of some resamples


def test_threshold_at_specificity_is_the_most_sensitive_point_that_keeps_it():
    from dermsynth.metrics import predictions, sensitivity, specificity, threshold_at_specificity

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    for target in (0.9, 0.95):
        t = threshold_at_specificity(y, s, target)
        assert specificity(y, predictions(s, t)) >= target
        # any lower threshold (the next negative score down) loses the target
        lower = s[(y == 0) & (s < t)].max()
        assert specificity(y, predictions(s, lower)) < target
        assert sensitivity(y, predictions(s, t)) >= sensitivity(y, predictions(s, 1.0))
    assert np.isnan(threshold_at_specificity(np.zeros(5), np.linspace(0, 1, 5), 0.9))


def test_calibration_against_sklearn_and_by_hand():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    from dermsynth.metrics import brier, expected_calibration_error, reliability

    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 2000)
    y = (rng.uniform(0, 1, 2000) < p).astype(int)  # calibrated by construction
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p))
    rows = reliability(y, p, 10)
    frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert [r["frac_pos"] for r in rows] == pytest.approx(list(frac))
    assert [r["mean_p"] for r in rows] == pytest.approx(list(mean_p))
    assert expected_calibration_error(y, p) < 0.05
    over = np.clip(p * 0.5 + 0.5, 0, 1)  # overconfident in class 1 by ~0.25 on average
    assert expected_calibration_error(y, over) == pytest.approx(np.mean(np.abs(over - p)), abs=0.05)
