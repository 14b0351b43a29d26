"""Binary classification metrics with bootstrap confidence intervals (numpy only).

Convention: class 1 is the positive class (malignant). ``y`` holds 0/1 labels, ``score`` P(class 1),
``yhat`` 0/1 predictions. A metric that is undefined for its input (no positives for sensitivity,
one class only for AUROC, ...) returns ``nan`` instead of raising: bootstrap resamples and one-class
test sets then degrade gracefully.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

METRIC_NAMES = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1")


def _arr(a, dtype=None) -> np.ndarray:
    return np.asarray(a, dtype=dtype).ravel()


def _check_same_length(*arrays: np.ndarray) -> None:
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")


def confusion(y, yhat, n_classes: int = 2) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class."""
    y, yhat = _arr(y, np.int64), _arr(yhat, np.int64)
    _check_same_length(y, yhat)
    if len(y) and (min(y.min(), yhat.min()) < 0 or max(y.max(), yhat.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return np.bincount(y * n_classes + yhat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def accuracy(y, yhat) -> float:
    y, yhat = _arr(y), _arr(yhat)
    _check_same_length(y, yhat)
    return float(np.mean(y == yhat)) if len(y) else float("nan")


def sensitivity(y, yhat) -> float:
    """Recall of class 1 (malignant): TP / (TP + FN); nan without positives."""
    (tn, fp), (fn, tp) = confusion(y, yhat)
    return _ratio(tp, tp + fn)


def specificity(y, yhat) -> float:
    """Recall of class 0 (benign): TN / (TN + FP); nan without negatives."""
    (tn, fp), (fn, tp) = confusion(y, yhat)
    return _ratio(tn, tn + fp)


def balanced_accuracy(y, yhat) -> float:
    """Mean recall over the classes present in ``y`` (as scikit-learn defines it)."""
    recalls = [r for r in (sensitivity(y, yhat), specificity(y, yhat)) if not np.isnan(r)]
    return float(np.mean(recalls)) if recalls else float("nan")


def f1(y, yhat) -> float:
    """F1 of class 1; nan when there are neither positives nor positive predictions."""
    (tn, fp), (fn, tp) = confusion(y, yhat)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's ``rankdata(method='average')``)."""
    x = _arr(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y, score) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half).

    Returns nan when ``y`` holds only one class.
    """
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    _check_same_length(y, score)
    n_pos = int(np.sum(y == 1))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if not np.all(np.isfinite(score)):
        raise ValueError("scores must be finite")
    r = rankdata(score)
    u = r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score, starting at (0, 0)."""
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    order = np.argsort(-score, kind="mergesort")
    y, score = y[order], score[order]
    last = np.r_[np.flatnonzero(score[1:] != score[:-1]), len(score) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thr = np.r_[np.inf, score[last]]
    return fpr, tpr, thr


def predictions(score, threshold: float = 0.5) -> np.ndarray:
    """0/1 predictions: class 1 when P(class 1) >= threshold."""
    return (_arr(score, np.float64) >= threshold).astype(np.int64)


_THRESHOLDED: dict[str, Callable] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "f1": f1,
}


def metric_from_score(name: str, threshold: float = 0.5) -> Callable[[np.ndarray, np.ndarray], float]:
    """A ``fn(y, score)`` for any metric name: thresholded metrics apply ``threshold`` first."""
    if name == "auroc":
        return auroc
    if name not in _THRESHOLDED:
        raise ValueError(f"unknown metric '{name}': choose from {', '.join(METRIC_NAMES)}")
    fn = _THRESHOLDED[name]

    def scored(y, score):
        return fn(y, predictions(score, threshold))

    scored.__name__ = name
    return scored


def all_metrics(y, score, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of METRIC_NAMES for one set of scores."""
    return {name: metric_from_score(name, threshold)(y, score) for name in METRIC_NAMES}


def resample_indices(n_items: int, n: int, seed: int) -> np.ndarray:
    """(n, n_items) bootstrap resamples of item indices; the same seed gives the same resamples."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_items, size=(n, n_items))


def percentile_ci(values, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite values (nan, nan when there are none)."""
    _check_ci(ci)
    return _percentile_ci(np.asarray(values, dtype=np.float64), ci)


def _percentile_ci(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check_ci(ci: float) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")


def bootstrap_values(y, score, metric_fn: Callable, n: int = 1000, seed: int = 0) -> np.ndarray:
    """The metric on ``n`` resamples (with replacement) of the test images; undefined ones are nan."""
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    _check_same_length(y, score)
    if len(y) == 0 or n <= 0:
        return np.array([], dtype=np.float64)
    idx = resample_indices(len(y), n, seed)
    return np.array([metric_fn(y[i], score[i]) for i in idx], dtype=np.float64)


def bootstrap_ci(
    y, score, metric_fn: Callable, n: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI over test images; resamples where the metric is undefined are skipped."""
    _check_ci(ci)
    return _percentile_ci(bootstrap_values(y, score, metric_fn, n, seed), ci)


def summarize(
    y, score, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, threshold: float = 0.5
) -> dict[str, dict[str, float]]:
    """{metric: {"value", "lo", "hi"}} for every metric, all CIs from the same resamples."""
    _check_ci(ci)
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    _check_same_length(y, score)
    fns = {name: metric_from_score(name, threshold) for name in METRIC_NAMES}
    boot = {name: [] for name in METRIC_NAMES}
    if len(y) and n_boot > 0:
        for i in resample_indices(len(y), n_boot, seed):
            yi, si = y[i], score[i]
            for name, fn in fns.items():
                boot[name].append(fn(yi, si))
    out = {}
    for name, fn in fns.items():
        lo, hi = _percentile_ci(np.asarray(boot[name], dtype=np.float64), ci)
        out[name] = {"value": fn(y, score) if len(y) else float("nan"), "lo": lo, "hi": hi}
    return out


def paired_bootstrap_diff(
    y, score_a, score_b, metric_fn: Callable, n: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, float]:
    """metric(a) - metric(b) on the same test images, with a paired percentile CI and a two-sided p.

    Both models are scored on the same resampled images, so image difficulty cancels out.
    ``p`` is twice the smaller bootstrap tail beyond zero, with the +1 correction so it is never 0.
    """
    _check_ci(ci)
    y = _arr(y, np.int64)
    a, b = _arr(score_a, np.float64), _arr(score_b, np.float64)
    _check_same_length(y, a, b)
    diff = float(metric_fn(y, a) - metric_fn(y, b)) if len(y) else float("nan")
    if len(y) == 0 or n <= 0:
        return {"diff": diff, "lo": float("nan"), "hi": float("nan"), "p": float("nan"), "n_boot": 0}
    d = np.array([metric_fn(y[i], a[i]) - metric_fn(y[i], b[i]) for i in resample_indices(len(y), n, seed)])
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return {"diff": diff, "lo": float("nan"), "hi": float("nan"), "p": float("nan"), "n_boot": 0}
    lo, hi = _percentile_ci(d, ci)
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    p = min(1.0, 2.0 * (tail + 1) / (len(d) + 1))
    return {"diff": diff, "lo": lo, "hi": hi, "p": float(p), "n_boot": int(len(d))}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; sd is nan for fewer than 2."""
    v = _arr(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")
