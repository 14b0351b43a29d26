"""The evaluate and realism rules: a trained classifier on a test set, with what a clinician asks.

Per test set: every metric with a bootstrap CI; the clinical operating points (sensitivity and
specificity at the threshold that reaches a target specificity on the validation split); and
calibration (expected calibration error, Brier score, the reliability bins).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import io, metrics, subgroups
from .classify import VAL_PREDICTIONS, label_indices, model_dir_of, predict
from .errors import DataSourceError

log = logging.getLogger("dermsynth")


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN; null reads as "undefined"
    return obj


def evaluate(
    model_dir,
    test_df: pd.DataFrame,
    classes: list[str],
    out_json,
    predictions_csv,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    meta: dict | None = None,
    threads: int = 1,
    device: str = "auto",
    threshold: float = 0.5,
    batch_size: int = 64,
    mixed_precision: str = "no",
    group_by: str | None = None,
    specificity_targets: Sequence[float] = (),
    calibration_bins: int = 10,
    strata: pd.DataFrame | None = None,
    min_group_size: int = 30,
) -> dict:
    """Predict the test set, write per-image predictions and a metrics JSON with bootstrap CIs.

    ``specificity_targets``: for each, the threshold that reaches it on the validation split (the
    classifier's ``val_predictions.csv``) and the test set's sensitivity and specificity there, with
    CIs (``operating_points``); ``calibration``: ECE, Brier and the reliability bins of the test set.

    ``group_by`` names a manifest column (e.g. ``sampler``): the JSON then also holds the accuracy of
    each group with its own bootstrap CI (key ``groups``), and the predictions CSV keeps that column.

    ``strata`` (``subgroups.strata``: one column per attribute, a row per test image) adds, per
    attribute, each group's sensitivity, specificity and accuracy (key ``groups_by``; groups under
    ``min_group_size`` images only as ``too_few`` with their size) and the equalized-odds difference
    between the groups (key ``equalized_odds``); the predictions CSV keeps those columns.
    """
    y = label_indices(test_df, classes, "test")
    score = predict(
        model_dir,
        test_df,
        classes,
        batch_size=batch_size,
        threads=threads,
        device=device,
        mixed_precision=mixed_precision,
    )
    pred = metrics.predictions(score, threshold)
    pred_df = pd.DataFrame(
        {
            "path": test_df["path"].astype(str).to_numpy(),
            "label": test_df["label"].astype(str).to_numpy(),
            "y": y,
            "score": score,
            "pred": pred,
        }
    )
    groups = None
    if group_by and group_by in test_df.columns:
        pred_df[group_by] = test_df[group_by].astype(str).to_numpy()
        acc = metrics.metric_from_score("accuracy", threshold)
        groups = {}
        for name, g in pred_df.groupby(group_by, sort=True):
            gy, gs = g["y"].to_numpy(), g["score"].to_numpy()
            lo, hi = metrics.bootstrap_ci(gy, gs, acc, n=n_boot, ci=ci, seed=seed)
            groups[str(name)] = {
                "n": int(len(g)),
                "accuracy": {"value": acc(gy, gs), "lo": lo, "hi": hi},
                "n_per_class": {cl: int((gy == i).sum()) for i, cl in enumerate(classes)},
            }
    if strata is not None:
        if len(strata) != len(pred_df):
            raise ValueError(f"strata has {len(strata)} rows, the test set {len(pred_df)}")
        for col in strata.columns:
            pred_df[col] = strata[col].to_numpy()
    io.write_csv(predictions_csv, pred_df)
    notes = []
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        notes.append(
            f"test set holds one class only ({[classes[i] for i in present]}): AUROC, and "
            "sensitivity or specificity, are undefined (null)"
        )
    result = dict(meta or {})
    result.update(
        {
            "n": int(len(y)),
            "n_per_class": {cl: int((y == i).sum()) for i, cl in enumerate(classes)},
            "classes": list(classes),
            "threshold": threshold,
            "ci": ci,
            "n_boot": int(n_boot),
            "metrics": metrics.summarize(y, score, n_boot=n_boot, ci=ci, seed=seed, threshold=threshold),
            "confusion": metrics.confusion(y, pred, len(classes)).tolist(),
            "predictions": io.rel(predictions_csv),
            "model_dir": io.rel(model_dir_of(model_dir)),
            "notes": notes,
        }
    )
    if groups is not None:
        result["group_by"] = group_by
        result["groups"] = groups
    if strata is not None:
        result["min_group_size"] = int(min_group_size)
        result["groups_by"], result["equalized_odds"] = subgroups.stratified(
            y, score, strata, int(min_group_size), threshold, n_boot, ci, seed
        )
    val = _val_predictions(model_dir)
    result["operating_points"] = operating_points(
        y, score, val, specificity_targets, n_boot=n_boot, ci=ci, seed=seed
    )
    result["calibration"] = {
        "ece": metrics.expected_calibration_error(y, score, calibration_bins),
        "brier": metrics.brier(y, score),
        "bins": metrics.reliability(y, score, calibration_bins),
    }
    result = _nan_to_none(result)
    io.write_json(out_json, result)
    return result


def _val_predictions(model_dir) -> pd.DataFrame | None:
    path = model_dir_of(model_dir).parent / VAL_PREDICTIONS
    return io.read_csv(path) if path.is_file() else None


def operating_points(
    y: np.ndarray,
    score: np.ndarray,
    val: pd.DataFrame | None,
    targets: Sequence[float],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """Per target specificity: the validation split's threshold and the test set's sensitivity and
    specificity at it, with bootstrap CIs (nan threshold: no validation images of both classes)."""
    out = []
    for target in targets:
        t = float("nan")
        if val is not None and len(val):
            t = metrics.threshold_at_specificity(val["y"].to_numpy(), val["score"].to_numpy(), float(target))
        row = {"target_specificity": float(target), "threshold": t}
        for name in ("sensitivity", "specificity"):
            fn = metrics.metric_from_score(name, t if np.isfinite(t) else 0.5)
            value = fn(y, score) if np.isfinite(t) and len(y) else float("nan")
            lo, hi = (
                metrics.bootstrap_ci(y, score, fn, n=n_boot, ci=ci, seed=seed)
                if np.isfinite(t)
                else (float("nan"), float("nan"))
            )
            row[name] = {"value": value, "lo": lo, "hi": hi}
        out.append(row)
    return out


def realism_check(
    model_dir,
    synthetic_manifest,
    classes: list[str],
    out_json,
    predictions_csv,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    meta: dict | None = None,
    threads: int = 1,
    device: str = "auto",
    mixed_precision: str = "no",
) -> dict:
    """The paper's realism check: a classifier trained on real images only, scored on the kept synthetic
    images (their prompt class is the label). High accuracy means the generator draws the class features
    the real data taught; it is reported per sampler as well (``groups``)."""
    df = io.read_csv(synthetic_manifest)
    if not len(df):
        raise DataSourceError(f"{synthetic_manifest} holds no synthetic images: nothing to check")
    return evaluate(
        model_dir,
        df,
        classes,
        out_json,
        predictions_csv,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        meta={**(meta or {}), "testset": "synthetic"},
        threads=threads,
        device=device,
        mixed_precision=mixed_precision,
        group_by="sampler",
    )
