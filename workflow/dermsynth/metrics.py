"""Binary classification metrics (scikit-learn) with bootstrap confidence intervals.

Convention: class 1 is the positive class (malignant). ``y`` holds 0/1 labels, ``score`` P(class 1),
``yhat`` 0/1 predictions. A metric that is undefined for its input (no positives for sensitivity,
one class only for AUROC, ...) returns ``nan`` instead of raising: bootstrap resamples and one-class
test sets then degrade gracefully.

The metrics of one sample are scikit-learn's. The bootstrap is this module's own: scikit-learn has
none, and it computes every resample at once from confusion counts (AUROC: the Mann-Whitney U of the
resample's multiplicities), because one scikit-learn call costs 0.5-1.5 ms of input checks. Measured
on 1,000 test images x 1,000 resamples, the six metrics of ``summarize`` take 6.6 s through
scikit-learn per resample, 0.16 s with the former numpy loop and 0.06 s vectorised (the report
bootstraps every model x regime x test set, seeds pooled, and its paired differences); a test
asserts that the vectorised values are scikit-learn's on each resample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1")


def _arr(a, dtype=None) -> np.ndarray:
    return np.asarray(a, dtype=dtype).ravel()


def _check_same_length(*arrays: np.ndarray) -> None:
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")


# ---------------------------------------------------------------- one sample (scikit-learn)


def confusion(y, yhat, n_classes: int = 2) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class."""
    y, yhat = _arr(y, np.int64), _arr(yhat, np.int64)
    _check_same_length(y, yhat)
    if not len(y):
        return np.zeros((n_classes, n_classes), np.int64)
    if min(y.min(), yhat.min()) < 0 or max(y.max(), yhat.max()) >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return skm.confusion_matrix(y, yhat, labels=np.arange(n_classes))


def accuracy(y, yhat) -> float:
    y, yhat = _arr(y), _arr(yhat)
    _check_same_length(y, yhat)
    return float(skm.accuracy_score(y, yhat)) if len(y) else float("nan")


def _recall(y, yhat, positive: int) -> float:
    y, yhat = _arr(y, np.int64), _arr(yhat, np.int64)
    _check_same_length(y, yhat)
    if not len(y):
        return float("nan")
    return float(skm.recall_score(y, yhat, labels=[0, 1], pos_label=positive, zero_division=np.nan))


def sensitivity(y, yhat) -> float:
    """Recall of class 1 (malignant): TP / (TP + FN); nan without positives."""
    return _recall(y, yhat, 1)


def specificity(y, yhat) -> float:
    """Recall of class 0 (benign): TN / (TN + FP); nan without negatives."""
    return _recall(y, yhat, 0)


def balanced_accuracy(y, yhat) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's definition)."""
    y, yhat = _arr(y), _arr(yhat)
    _check_same_length(y, yhat)
    if not len(y):
        return float("nan")
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": by definition here
        warnings.simplefilter("ignore", UserWarning)
        return float(skm.balanced_accuracy_score(y, yhat))


def f1(y, yhat) -> float:
    """F1 of class 1; nan when there are neither positives nor positive predictions."""
    y, yhat = _arr(y, np.int64), _arr(yhat, np.int64)
    _check_same_length(y, yhat)
    if not len(y):
        return float("nan")
    return float(skm.f1_score(y, yhat, labels=[0, 1], pos_label=1, zero_division=np.nan))


def auroc(y, score) -> float:
    """Area under the ROC curve (ties count one half); nan when ``y`` holds only one class."""
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    _check_same_length(y, score)
    if len(np.unique(y)) < 2:
        return float("nan")
    if not np.all(np.isfinite(score)):
        raise ValueError("scores must be finite")
    return float(skm.roc_auc_score(y, score))


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score, starting at (0, 0) with threshold inf."""
    return skm.roc_curve(_arr(y, np.int64), _arr(score, np.float64), drop_intermediate=False)


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


# ---------------------------------------------------------------- many resamples at once


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _counts(y: np.ndarray, yhat: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn, tn) of every resample (the rows of ``idx``)."""
    pos, hit = y[idx] == 1, yhat[idx] == 1
    tp = np.sum(pos & hit, axis=1)
    fn = np.sum(pos, axis=1) - tp
    fp = np.sum(hit, axis=1) - tp
    return tp, fp, fn, idx.shape[1] - tp - fp - fn


def _resampled_thresholded(name: str, y: np.ndarray, yhat: np.ndarray, idx: np.ndarray) -> np.ndarray:
    tp, fp, fn, tn = _counts(y, yhat, idx)
    if name == "accuracy":
        return (tp + tn) / idx.shape[1]
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    if name == "sensitivity":
        return sens
    if name == "specificity":
        return spec
    if name == "f1":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    with warnings.catch_warnings():  # balanced accuracy: mean over the classes a resample holds
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack([sens, spec], axis=1), axis=1)


def _resampled_auroc(y: np.ndarray, score: np.ndarray, idx: np.ndarray, block: int = 256) -> np.ndarray:
    """AUROC of every resample: 2U = sum over tie groups of positives x (2 negatives below + negatives
    tied), from each resample's multiplicities; exact integers, so the value is U / (n_pos n_neg)."""
    _, group = np.unique(score, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    out = np.empty(len(idx))
    for s in range(0, len(idx), block):  # memory: block x n_groups counts
        rows = idx[s : s + block]
        cell = group[rows] + n_groups * np.arange(len(rows))[:, None]
        pos = y[rows] == 1
        size = len(rows) * n_groups
        p = np.bincount(cell[pos], minlength=size).reshape(len(rows), n_groups)
        n = np.bincount(cell[~pos], minlength=size).reshape(len(rows), n_groups)
        below = np.cumsum(n, axis=1) - n
        u2 = np.sum(p * (2 * below + n), axis=1)
        n_pos, n_neg = p.sum(axis=1), n.sum(axis=1)
        out[s : s + block] = _ratio(u2, 2 * n_pos * n_neg)
    return out


class Metric:
    """A metric of (y, P(class 1)) by name: called on one sample (scikit-learn), ``resampled`` on every
    row of a matrix of bootstrap indices at once (the same numbers, see the module docstring)."""

    def __init__(self, name: str, threshold: float = 0.5):
        if name != "auroc" and name not in _THRESHOLDED:
            raise ValueError(f"unknown metric '{name}': choose from {', '.join(METRIC_NAMES)}")
        self.name, self.__name__, self.threshold = name, name, threshold

    def __call__(self, y, score) -> float:
        if self.name == "auroc":
            return auroc(y, score)
        return _THRESHOLDED[self.name](y, predictions(score, self.threshold))

    def resampled(self, y, score, idx: np.ndarray) -> np.ndarray:
        """The metric on ``y[i], score[i]`` for every row ``i`` of ``idx`` (n_resamples, n_items)."""
        y, score = _arr(y, np.int64), _arr(score, np.float64)
        _check_same_length(y, score)
        if self.name == "auroc":
            if not np.all(np.isfinite(score)):
                raise ValueError("scores must be finite")
            return _resampled_auroc(y, score, idx)
        return _resampled_thresholded(self.name, y, predictions(score, self.threshold), idx)


def metric_from_score(name: str, threshold: float = 0.5) -> Metric:
    """A ``fn(y, score)`` for any metric name: thresholded metrics apply ``threshold`` first."""
    return Metric(name, threshold)


def all_metrics(y, score, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of METRIC_NAMES for one set of scores."""
    return {name: Metric(name, threshold)(y, score) for name in METRIC_NAMES}


# ---------------------------------------------------------------- bootstrap


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


def _on_resamples(metric_fn: Callable, y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``metric_fn`` on every resample: at once for a ``Metric``, one call per resample otherwise."""
    if isinstance(metric_fn, Metric):
        return metric_fn.resampled(y, score, idx)
    return np.array([metric_fn(y[i], score[i]) for i in idx], dtype=np.float64)


def bootstrap_values(y, score, metric_fn: Callable, n: int = 1000, seed: int = 0) -> np.ndarray:
    """The metric on ``n`` resamples (with replacement) of the test images; undefined ones are nan."""
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    _check_same_length(y, score)
    if len(y) == 0 or n <= 0:
        return np.array([], dtype=np.float64)
    return _on_resamples(metric_fn, y, score, resample_indices(len(y), n, seed))


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
    idx = resample_indices(len(y), n_boot, seed) if len(y) and n_boot > 0 else None
    out = {}
    for name in METRIC_NAMES:
        fn = Metric(name, threshold)
        boot = fn.resampled(y, score, idx) if idx is not None else np.array([])
        lo, hi = _percentile_ci(boot, ci)
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
    idx = resample_indices(len(y), n, seed)
    d = _on_resamples(metric_fn, y, a, idx) - _on_resamples(metric_fn, y, b, idx)
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


# ---------------------------------------------------------------- operating points and calibration


def threshold_at_specificity(y, score, target: float) -> float:
    """The lowest threshold whose specificity on (``y``, ``score``) is at least ``target``: the most
    sensitive operating point that keeps it. nan without both classes.

    Chosen on the validation split, then applied to the test set: choosing it on the test set would
    promise a specificity the model was fitted to.
    """
    y, score = _arr(y, np.int64), _arr(score, np.float64)
    if len(np.unique(y)) < 2:
        return float("nan")
    neg = np.sort(score[y == 0])
    # predictions are positive at score >= t: specificity = share of negatives strictly below t
    k = int(np.ceil(target * len(neg) - 1e-12))  # negatives that must fall below t
    if k <= 0:
        return float(np.nextafter(neg[0], -np.inf)) if len(neg) else float("nan")
    if k >= len(neg):
        return float(np.nextafter(neg[-1], np.inf))
    return float(np.nextafter(neg[k - 1], np.inf))


def brier(y, p) -> float:
    """Mean squared error of P(class 1) against the 0/1 label (scikit-learn); nan for no images."""
    y, p = _arr(y, np.int64), _arr(p, np.float64)
    return float(skm.brier_score_loss(y, p)) if len(y) else float("nan")


def reliability(y, p, n_bins: int = 10) -> list[dict]:
    """Equal-width bins of P(class 1): each bin's count, mean predicted probability and observed
    frequency of class 1 (empty bins left out): the points of a reliability diagram."""
    y, p = _arr(y, np.int64), _arr(p, np.float64)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            out.append(
                {
                    "bin": b,
                    "n": int(sel.sum()),
                    "mean_p": float(p[sel].mean()),
                    "frac_pos": float(y[sel].mean()),
                }
            )
    return out


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean |observed frequency - mean P(class 1)| over equal-width bins."""
    rows = reliability(y, p, n_bins)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["frac_pos"] - r["mean_p"]) for r in rows) / n) if n else float("nan")
