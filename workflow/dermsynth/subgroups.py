"""Classifier results by subgroup: skin tone (ITA), diagnosis, sex, age band and body site.

Every test image gets one group per attribute (:data:`ATTRIBUTES`), from its manifest's clinical
columns (``dx, sex, age, localization``, see ``data.folder.CLINICAL_COLUMNS``) and from its skin tone
(``skin_groups.skin_tone_table``: the ITA of the skin around the classical lesion mask).
Per group: sensitivity, specificity and accuracy with bootstrap CIs over the group's images. Per
attribute: the equalized-odds difference (fairlearn's ``equalized_odds_difference``, between groups:
the larger of the TPR range and the FPR range over the groups), with a bootstrap CI over the test
images. Groups smaller than ``evaluate.min_group_size`` are kept out of both: their numbers would be
noise, so they are reported as "too few" with their size only.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from . import metrics

#: attribute -> the manifest column it comes from ('' = the skin_tone rule's table)
ATTRIBUTES = {"skin_tone": "", "dx": "dx", "sex": "sex", "age_band": "age", "site": "localization"}
ATTRIBUTE_NAMES = {
    "skin_tone": "skin tone (ITA group)",
    "dx": "diagnosis (dx)",
    "sex": "sex",
    "age_band": "age band (years)",
    "site": "body site",
}
#: values that name no group: the image is left out of that attribute's table
UNKNOWN = {"", "nan", "none", "unknown", "na", "n/a"}


# ---------------------------------------------------------------- groups of each test image


def age_band(age, edges) -> str:
    """'<30', '30-49', ..., '>=70' for ``edges`` [30, 50, 70]; '' for a missing age."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(a):
        return ""
    edges = sorted(float(e) for e in edges)
    if not edges or a < edges[0]:
        return f"<{edges[0]:g}" if edges else "all"
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if a < hi:
            return (
                f"{lo:g}-{hi - 1:g}"
                if float(lo).is_integer() and float(hi).is_integer()
                else f"{lo:g}-<{hi:g}"
            )
    return f">={edges[-1]:g}"


def _clean(values) -> list[str]:
    out = []
    for v in values:
        s = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v).strip()
        out.append("" if s.lower() in UNKNOWN else s.lower())
    return out


def strata(test_df: pd.DataFrame, skin: pd.DataFrame | None, age_edges) -> pd.DataFrame:
    """One column per attribute of :data:`ATTRIBUTES`, a row per test image ('' = unknown).

    ``skin`` is a :func:`skin_tone_table` of (at least) the test images, matched by path. An
    attribute whose source column the manifest lacks is all ''."""
    out = pd.DataFrame(index=range(len(test_df)))
    for attr, col in ATTRIBUTES.items():
        if attr == "skin_tone":
            tones = {}
            if skin is not None and len(skin):
                tones = dict(
                    zip(skin["path"].astype(str), skin["skin_tone"].fillna("").astype(str), strict=True)
                )
            out[attr] = _clean(tones.get(p, "") for p in test_df["path"].astype(str))
        elif col in test_df.columns:
            vals = test_df[col].tolist()
            out[attr] = [age_band(v, age_edges) for v in vals] if attr == "age_band" else _clean(vals)
        else:
            out[attr] = ""
    return out


# ---------------------------------------------------------------- per group and the gap


def _rates(y: np.ndarray, pred: np.ndarray, member: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """(TPR, FPR) of one group on every resample (rows of ``idx``); nan where a resample has no
    positive (negative) of the group."""
    yi, pi, mi = y[idx], pred[idx], member[idx]
    pos, neg = mi & (yi == 1), mi & (yi == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        tpr = np.where(n_pos > 0, (pos & (pi == 1)).sum(1) / np.maximum(n_pos, 1), np.nan)
        fpr = np.where(n_neg > 0, (neg & (pi == 1)).sum(1) / np.maximum(n_neg, 1), np.nan)
    return tpr, fpr


def _range(a: np.ndarray) -> np.ndarray:
    """max - min over axis 0, ignoring nan; nan where fewer than two values are defined."""
    ok = np.isfinite(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = np.nanmax(a, axis=0) - np.nanmin(a, axis=0)
    return np.where(ok.sum(0) >= 2, r, np.nan)


def equalized_odds_resampled(y, pred, groups, keep: list[str], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Equalized-odds difference over the groups ``keep`` on every resample (rows of ``idx``).

    fairlearn's definition (method between_groups): max(TPR difference, FPR difference), each the
    largest minus the smallest rate over the groups. A group without positives (negatives) in a
    sample has no TPR (FPR) and is left out of that range (fairlearn would count it as 0); with fewer
    than two defined rates a range is nan, and the difference is the other range alone.
    """
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    groups = np.asarray(groups, dtype=object)
    rates = [_rates(y, pred, groups == g, idx) for g in keep]
    if len(rates) < 2:
        nan = np.full(len(idx), np.nan)
        return {"eod": nan, "tpr_gap": nan, "fpr_gap": nan}
    tpr_gap = _range(np.stack([r[0] for r in rates]))
    fpr_gap = _range(np.stack([r[1] for r in rates]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eod = np.nanmax(np.stack([tpr_gap, fpr_gap]), axis=0)
    return {"eod": eod, "tpr_gap": tpr_gap, "fpr_gap": fpr_gap}


def equalized_odds_difference(y, pred, groups, keep: list[str] | None = None) -> float:
    """fairlearn's ``equalized_odds_difference`` of 0/1 predictions over ``keep`` (default: every
    group present), see :func:`equalized_odds_resampled`."""
    groups = np.asarray(groups, dtype=object)
    keep = sorted(set(groups.tolist())) if keep is None else list(keep)
    idx = np.arange(len(groups))[None, :]
    return float(equalized_odds_resampled(y, pred, groups, keep, idx)["eod"][0])


def _value_ci(fn: metrics.Metric, y: np.ndarray, score: np.ndarray, idx: np.ndarray, ci: float) -> dict:
    lo, hi = metrics.percentile_ci(fn.resampled(y, score, idx), ci) if len(idx) else (np.nan, np.nan)
    return {"value": fn(y, score), "lo": lo, "hi": hi}


def group_results(
    y,
    score,
    groups,
    min_size: int,
    threshold: float = 0.5,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Per group (sorted, unknown '' left out): n, n_pos, too_few, and unless too few sensitivity,
    specificity and accuracy, each {value, lo, hi} (bootstrap over the group's images); and the
    equalized-odds difference over the groups of at least ``min_size`` images with its bootstrap CI
    over all test images of known group (``{"value", "lo", "hi", "tpr_gap", "fpr_gap", "groups"}``)."""
    y, score = np.asarray(y, np.int64), np.asarray(score, np.float64)
    groups = np.asarray(_clean(groups), dtype=object)
    rows, keep = [], []
    names = sorted(set(groups.tolist()) - {""})
    for k, g in enumerate(names):
        sel = groups == g
        gy, gs = y[sel], score[sel]
        row = {
            "group": g,
            "n": int(sel.sum()),
            "n_pos": int((gy == 1).sum()),
            "too_few": bool(sel.sum() < min_size),
        }
        if not row["too_few"]:
            keep.append(g)
            idx = (
                metrics.resample_indices(len(gy), n_boot, seed + k)
                if n_boot > 0
                else np.zeros((0, len(gy)), int)
            )
            for name in ("sensitivity", "specificity", "accuracy"):
                row[name] = _value_ci(metrics.metric_from_score(name, threshold), gy, gs, idx, ci)
        rows.append(row)
    known = groups != ""
    ky, kp, kg = y[known], metrics.predictions(score[known], threshold), groups[known]
    eod = {"groups": keep, "value": float("nan"), "lo": float("nan"), "hi": float("nan")}
    whole = equalized_odds_resampled(ky, kp, kg, keep, np.arange(len(ky))[None, :])
    eod.update({k: float(v[0]) for k, v in whole.items() if k != "eod"})
    eod["value"] = float(whole["eod"][0])
    if n_boot > 0 and len(ky) and len(keep) >= 2:
        boot = equalized_odds_resampled(ky, kp, kg, keep, metrics.resample_indices(len(ky), n_boot, seed))
        eod["lo"], eod["hi"] = metrics.percentile_ci(boot["eod"], ci)
    return rows, eod


def stratified(
    y, score, table: pd.DataFrame, min_size: int, threshold: float = 0.5, n_boot: int = 1000, ci=0.95, seed=0
) -> tuple[dict, dict]:
    """(groups_by, equalized_odds): :func:`group_results` of every attribute column of ``table`` that
    names at least one group."""
    by, eod = {}, {}
    for attr in table.columns:
        if not (table[attr].astype(str) != "").any():
            continue
        by[attr], eod[attr] = group_results(
            y, score, table[attr].tolist(), min_size, threshold, n_boot, ci, seed
        )
    return by, eod
