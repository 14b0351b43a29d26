"""The subgroup section: sensitivity and specificity per skin tone, diagnosis, sex, age band and site,
and the equalized-odds gap of each attribute, hybrid against real.

Per group the numbers are each eval JSON's ``groups_by`` (evaluation.evaluate), averaged over seeds.
The gap is fairlearn's equalized-odds difference over the groups large enough to report
(``subgroups.equalized_odds_resampled``), averaged over seeds on each bootstrap resample of the test
images, so its CI (and that of the hybrid − real difference, both regimes on the same resample) is
that of the reported seed mean, as for Table IV.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd

from .. import io, metrics
from ..subgroups import ATTRIBUTE_NAMES, ATTRIBUTES, equalized_odds_resampled
from .names import MODEL_NAMES, REGIME_NAMES, TESTSET_NAMES, nice, order
from .stats import num, read_evals
from .tables import fmt, md_table

log = logging.getLogger("dermsynth.report")

GROUP_COLUMNS = ["model", "regime", "testset", "attribute", "group", "n", "n_pos", "too_few", "n_seeds"]
GROUP_COLUMNS += ["sensitivity", "specificity", "accuracy"]
GAP_COLUMNS = ["model", "testset", "attribute", "regime", "n_seeds", "groups", "eod", "lo", "hi"]


def group_table(docs: list[dict]) -> pd.DataFrame:
    """Per model × regime × test set × attribute × group: n, n_pos, too_few and the seed means of
    sensitivity, specificity and accuracy (%; NaN for a group too few, or undefined)."""
    rows = []
    for d in docs:
        for attr, groups in (d.get("groups_by") or {}).items():
            for g in groups:
                row = {k: d.get(k) for k in ("model", "regime", "seed", "testset")}
                row |= {
                    "attribute": attr,
                    "group": str(g["group"]),
                    "n": int(g["n"]),
                    "n_pos": int(g["n_pos"]),
                }
                row["too_few"] = bool(g.get("too_few"))
                for m in ("sensitivity", "specificity", "accuracy"):
                    row[m] = float("nan") if row["too_few"] else 100 * num((g.get(m) or {}).get("value"))
                rows.append(row)
    df = pd.DataFrame(rows)
    if not len(df):
        return pd.DataFrame(columns=GROUP_COLUMNS)
    keys = ["model", "regime", "testset", "attribute", "group"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = df.groupby(keys, sort=False).agg(
            n=("n", "first"),
            n_pos=("n_pos", "first"),
            too_few=("too_few", "max"),
            n_seeds=("seed", "nunique"),
            sensitivity=("sensitivity", "mean"),
            specificity=("specificity", "mean"),
            accuracy=("accuracy", "mean"),
        )
    return out.reset_index()[GROUP_COLUMNS]


def _aligned(runs: list[dict], attr: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(y, preds (n_images, n_runs), group of each image) on the images every run predicted."""
    frames = []
    for d in runs:
        p = d.get("_predictions")
        if p is None:
            return None
        f = io.read_csv(p)
        if attr not in f.columns or "pred" not in f.columns:
            return None
        frames.append(f.drop_duplicates("path").set_index("path"))
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index, sort=False)
    y = frames[0].loc[common, "y"].to_numpy(np.int64)
    preds = np.stack([f.loc[common, "pred"].to_numpy(np.int64) for f in frames], axis=1)
    groups = frames[0].loc[common, attr].fillna("").astype(str).str.lower().to_numpy(dtype=object)
    return y, preds, groups


def _seed_mean_eod(y, preds, groups, keep, idx) -> np.ndarray:
    per_run = np.stack(
        [equalized_odds_resampled(y, preds[:, k], groups, keep, idx)["eod"] for k in range(preds.shape[1])]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_run, axis=0)


def gap_table(
    docs: list[dict],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    baseline: str = "real",
    treatment: str = "hybrid",
) -> pd.DataFrame:
    """Per model × test set × attribute: the equalized-odds difference (seed mean, [CI]) of every regime,
    and a row regime = "<treatment> − <baseline>" with the paired difference, on the groups that are
    large enough in the test set (the eval JSONs' ``equalized_odds[attr].groups``)."""
    rows = []
    by: dict[tuple, list[dict]] = {}
    for d in docs:
        by.setdefault((d.get("model"), d.get("testset")), []).append(d)
    for (model, testset), runs in by.items():
        attrs = dict.fromkeys(a for d in runs for a in (d.get("equalized_odds") or {}))
        for attr in attrs:
            keep = list((runs[0].get("equalized_odds") or {}).get(attr, {}).get("groups") or [])
            # every run of this model and test set on the same images, so regimes pair up by resample
            runs = sorted(runs, key=lambda d: (str(d.get("regime")), d.get("seed", 0)))
            al = _aligned(runs, attr)
            if al is None or not len(al[0]):
                continue
            y, preds, groups = al
            idx = metrics.resample_indices(len(y), n_boot, seed)
            whole = np.arange(len(y))[None, :]
            boot, value, n_seeds = {}, {}, {}
            for regime in order((d.get("regime") for d in runs), REGIME_NAMES):
                cols = [k for k, d in enumerate(runs) if d.get("regime") == regime]
                value[regime] = float(_seed_mean_eod(y, preds[:, cols], groups, keep, whole)[0])
                boot[regime] = _seed_mean_eod(y, preds[:, cols], groups, keep, idx)
                n_seeds[regime] = len(cols)
                lo, hi = metrics.percentile_ci(boot[regime], ci)
                rows.append(_gap_row(model, testset, attr, regime, len(cols), keep, value[regime], lo, hi))
            if baseline in boot and treatment in boot:
                diff = value[treatment] - value[baseline]
                lo, hi = metrics.percentile_ci(boot[treatment] - boot[baseline], ci)
                n = min(n_seeds[baseline], n_seeds[treatment])
                rows.append(
                    _gap_row(model, testset, attr, f"{treatment} − {baseline}", n, keep, diff, lo, hi)
                )
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def _gap_row(model, testset, attr, regime, n_seeds, keep, value, lo, hi) -> dict:
    return {
        "model": model,
        "testset": testset,
        "attribute": attr,
        "regime": regime,
        "n_seeds": n_seeds,
        "groups": ", ".join(keep),
        "eod": 100 * value,
        "lo": 100 * lo,
        "hi": 100 * hi,
    }


def _cell(r) -> str:
    """'sens / spec' in %, or 'too few (n=..)': a small group never shows a number."""
    if bool(r["too_few"]):
        return f"too few (n={int(r['n'])})"
    return f"{fmt(r['sensitivity'], 1)} / {fmt(r['specificity'], 1)}"


def _pm(v: float, lo: float, hi: float) -> str:
    if not math.isfinite(v):
        return "—"
    ci = f" [{fmt(lo, 1)}, {fmt(hi, 1)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{v:.1f}{ci}"


def attribute_markdown(groups: pd.DataFrame, gaps: pd.DataFrame, testset: str, attr: str) -> str:
    """One attribute on one test set: rows = group, columns = model × regime (sens / spec), then the
    equalized-odds gap of each model."""
    g = groups[(groups["testset"] == testset) & (groups["attribute"] == attr)]
    if not len(g):
        return ""
    cols = [
        (m, r)
        for m in order(g["model"], MODEL_NAMES)
        for r in order(g.loc[g["model"] == m, "regime"], REGIME_NAMES)
    ]
    headers = ["Group", "n (malignant)"] + [
        f"{nice(m, MODEL_NAMES)} · {nice(r, REGIME_NAMES)}" for m, r in cols
    ]
    idx = g.set_index(["group", "model", "regime"])
    rows = []
    for group in sorted(dict.fromkeys(g["group"]), key=_group_order):
        first = g[g["group"] == group].iloc[0]
        row = [group, f"{int(first['n'])} ({int(first['n_pos'])})"]
        row += [_cell(idx.loc[(group, m, r)]) if (group, m, r) in idx.index else "—" for m, r in cols]
        rows.append(row)
    name = ATTRIBUTE_NAMES.get(attr, attr)
    out = f"### {name[:1].upper() + name[1:]}, {nice(testset, TESTSET_NAMES)}\n\n"
    out += md_table(headers, rows)
    gp = gaps[(gaps["testset"] == testset) & (gaps["attribute"] == attr)]
    if len(gp):
        regimes = list(dict.fromkeys(gp["regime"]))
        grows = []
        for m in order(gp["model"], MODEL_NAMES):
            cells = [nice(m, MODEL_NAMES)]
            for r in regimes:
                x = gp[(gp["model"] == m) & (gp["regime"] == r)]
                cells.append(_pm(x["eod"].iat[0], x["lo"].iat[0], x["hi"].iat[0]) if len(x) else "—")
            cells.append(gp.loc[gp["model"] == m, "groups"].iat[0] or "—")
            grows.append(cells)
        heads = (
            ["Equalized-odds gap (points)"] + [nice(r, REGIME_NAMES) for r in regimes] + ["groups compared"]
        )
        out += "\n" + md_table(heads, grows)
    return out + "\n"


def _group_order(name: str):
    """Skin tones lightest first, age bands youngest first, anything else alphabetical."""
    from ..skintone import GROUP_NAMES

    if name in GROUP_NAMES:
        return (0, GROUP_NAMES.index(name), "")
    digits = "".join(c for c in name.split("-")[0] if c.isdigit() or c == ".")
    if digits:
        shift = {"<": -0.5, ">": 0.5}.get(name[:1], 0.0)
        return (1, float(digits) + shift, name)
    return (2, 0, name)


def section_subgroups(groups: pd.DataFrame, gaps: pd.DataFrame, min_size: int, n_boot: int, ci: float) -> str:
    """The report fragment: one table per test set × attribute (with at least one group)."""
    out = (
        "## Results by subgroup\n\n"
        "Sensitivity / specificity (%) of each classifier in each subgroup of the test images, mean over "
        "seeds. Skin tone: the ITA group of the skin around the lesion (its Fitzpatrick proxy: "
        "very_light I, light II, intermediate III, tan IV, brown V, dark VI); diagnosis: a malignant "
        "dx (mel, bcc, akiec) has no benign images, so its cell is the sensitivity (the share "
        "classified malignant) and its specificity is —; a benign dx (nv, bkl, df, vasc) shows its "
        f"specificity. A group of fewer than {min_size} images (evaluate.min_group_size) is shown as "
        "too few, without numbers, and is left out of the gap. Equalized-odds gap: fairlearn's "
        "equalized-odds difference, the larger of the spread (best minus worst group) of the "
        "sensitivity and of the false-positive rate over the groups compared, in points; 0 = every "
        f"group served alike; [{int(round(100 * ci))} % bootstrap CI over {n_boot} resamples of the "
        "test images, the seed mean recomputed on each; the hybrid − real row pairs both regimes on "
        "the same resamples]. Unknown values (e.g. sex 'unknown') form no group.\n\n"
    )
    if not len(groups):
        return out + "_no subgroup results (the eval JSONs hold no groups_by)_\n"
    for ts in order(groups["testset"], TESTSET_NAMES):
        for attr in ATTRIBUTES:
            out += attribute_markdown(groups, gaps, ts, attr)
    return out


def write_section(
    eval_jsons: list[str],
    out_md,
    groups_csv,
    gaps_csv,
    cfg: dict,
    seed: int = 0,
    baseline: str = "real",
    treatment: str = "hybrid",
) -> str:
    """The subgroups_section rule: subgroups.csv, subgroup_gaps.csv and the Markdown fragment.
    ``cfg`` is the evaluate section (bootstrap, ci, min_group_size)."""
    docs = read_evals(eval_jsons)
    groups = group_table(docs)
    gaps = gap_table(docs, cfg["bootstrap"], cfg["ci"], seed, baseline, treatment)
    io.write_csv(groups_csv, groups)
    io.write_csv(gaps_csv, gaps)
    text = section_subgroups(
        groups, gaps, int(cfg["min_group_size"]), int(cfg["bootstrap"]), float(cfg["ci"])
    )
    io.write_text(out_md, text)
    log.info("subgroups: %d group rows, %d gap rows", len(groups), len(gaps))
    return text
