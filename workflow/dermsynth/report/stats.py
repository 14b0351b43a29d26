"""The report's numbers: eval JSONs read into one table, Table IV with pooled bootstrap CIs, the paired
hybrid-vs-real bootstrap with Holm's correction, the ratio sweep, the realism check, validation accuracy
at the kept epoch, the training sets' synthetic share and the benchmarks' wall times.

Units: accuracy, balanced accuracy, sensitivity, specificity and F1 are percentages (as in the paper's
Table IV); AUROC stays in [0, 1]. Differences in ``paired.csv`` use the same units (percentage points).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io, metrics
from ..errors import ConfigError
from ..regimes import regime_fraction
from .names import MODEL_NAMES, REGIME_NAMES, TESTSET_NAMES, order

log = logging.getLogger("dermsynth.report")

PERCENT_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1")
PAIRED_METRICS = ("accuracy", "balanced_accuracy", "auroc")
# the dose-response of the ratio sweep: the paper's metric and the two that class imbalance cannot flatter
SWEEP_METRICS = ("accuracy", "balanced_accuracy", "auroc")
# a classifier no better than chance on one side: all one class (sensitivity or specificity 0) or
# an AUROC at or below chance
DEGENERATE_AUROC = 0.5


def scale(metric: str) -> float:
    """100 for the metrics the report shows in percent, 1 for AUROC."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def num(v) -> float:
    """A JSON value as a float, null as NaN."""
    return float("nan") if v is None else float(v)


def holm(p: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order; NaN stays NaN and is not counted in m.

    Sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(list(p), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    ranked = ok[np.argsort(p[ok], kind="stable")]
    m = len(ranked)
    adj = np.minimum(1.0, (m - np.arange(m)) * p[ranked])
    out[ranked] = np.maximum.accumulate(adj)
    return out


def degenerate_reason(sensitivity: float, specificity: float, auroc: float) -> str:
    """Why a classifier is degenerate ('' when it is not); values in raw units ([0, 1])."""
    why = []
    if math.isfinite(sensitivity) and sensitivity <= 0:
        why.append("sensitivity 0")
    if math.isfinite(specificity) and specificity <= 0:
        why.append("specificity 0")
    if math.isfinite(auroc) and auroc <= DEGENERATE_AUROC:
        why.append(f"AUROC {auroc:.3f} ≤ {DEGENERATE_AUROC}")
    return ", ".join(why)


def _resolve(path: str | None, base: Path) -> Path | None:
    """A path written relative to the workdir, or else relative to the JSON that names it."""
    if not path:
        return None
    for cand in (Path(path), base / path, base / Path(path).name):
        if cand.exists():
            return cand
    return None


def read_evals(eval_jsons) -> list[dict]:
    """Every eval JSON, read once, with two keys added: ``_json`` (its path) and ``_predictions`` (its
    predictions CSV, resolved; None when missing). Already read ones (dicts) pass through, so each
    reader below takes either paths or these."""
    docs = []
    for p in eval_jsons:
        if isinstance(p, dict):
            docs.append(p)
            continue
        p = Path(p)
        d = json.loads(p.read_text())
        docs.append({**d, "_json": str(p), "_predictions": _resolve(d.get("predictions"), p.parent)})
    return docs


def load_evals(eval_jsons: list) -> pd.DataFrame:
    """One row per eval JSON (paths, or ``read_evals``' dicts): model, regime, seed, testset, n, metric
    values/CIs (raw units), paths."""
    rows = []
    for d in read_evals(eval_jsons):
        row = {
            "model": str(d.get("model", "?")),
            "regime": str(d.get("regime", "?")),
            "seed": int(d.get("seed", 0)),
            "testset": str(d.get("testset", "?")),
            "n": int(d.get("n", 0)),
            "n_per_class": d.get("n_per_class", {}),
            "confusion": d.get("confusion"),
            "json": d["_json"],
            "predictions_path": d["_predictions"],
        }
        for m in TABLE_METRICS:
            v = (d.get("metrics") or {}).get(m) or {}
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = (
                num(v.get("value")),
                num(v.get("lo")),
                num(v.get("hi")),
            )
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["degenerate"] = [
            degenerate_reason(a, b, c)
            for a, b, c in zip(df["sensitivity"], df["specificity"], df["auroc"], strict=True)
        ]
    if len(df) and df.duplicated(["model", "regime", "seed", "testset"]).any():
        dup = df[df.duplicated(["model", "regime", "seed", "testset"], keep=False)]["json"].tolist()
        raise ValueError(f"two eval JSONs for the same model/regime/seed/testset: {dup}")
    return df


def _paper(paper_table: dict | None, model: str, regime: str, testset: str) -> float:
    try:
        return float(paper_table[model][regime][testset])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def load_predictions(path: Path | None) -> pd.DataFrame | None:
    """path, y, score of a predictions CSV (classify.evaluate), or None without one."""
    if path is None:
        return None
    return pd.read_csv(path)[["path", "y", "score"]]


def aligned_scores(pred_paths: list[Path | None]) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, scores (n_images, n_runs)) on the images every run predicted; None if a CSV is missing."""
    frames = [load_predictions(p) for p in pred_paths]
    if not frames or any(f is None for f in frames):
        return None
    frames = [f.drop_duplicates("path").set_index("path") for f in frames]
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index, sort=False)
    ys = np.stack([f.loc[common, "y"].to_numpy(np.int64) for f in frames], axis=1)
    if (ys != ys[:, :1]).any():
        raise ValueError(f"predictions CSVs {pred_paths} disagree on the labels of the same images")
    return ys[:, 0], np.stack([f.loc[common, "score"].to_numpy(np.float64) for f in frames], axis=1)


def _run_mean(fn, y: np.ndarray, scores: np.ndarray) -> float:
    return float(np.nanmean([fn(y, scores[:, k]) for k in range(scores.shape[1])]))


def _resampled_run_mean(fn: metrics.Metric, y: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``_run_mean`` on every resample (row of ``idx``) at once: one scikit-learn call per resample
    and run took 13x longer (89 s against 6.8 s for the Table IV test)."""
    if not len(idx):
        return np.array([], dtype=np.float64)
    per_run = np.stack([fn.resampled(y, scores[:, k], idx) for k in range(scores.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a resample with one class
        return np.nanmean(per_run, axis=0)


def pooled_ci(
    y: np.ndarray, scores: np.ndarray, n_boot: int, ci: float, seed: int, threshold: float = 0.5
) -> dict[str, tuple[float, float]]:
    """Bootstrap CI of each metric's mean over runs (seeds): all runs are scored on the same resample,
    so the interval reflects the test-set sampling of the reported mean."""
    idx = metrics.resample_indices(len(y), n_boot, seed)
    boot = {
        m: _resampled_run_mean(metrics.metric_from_score(m, threshold), y, scores, idx) for m in TABLE_METRICS
    }
    return {m: metrics.percentile_ci(v, ci) for m, v in boot.items()}


def table4(
    evals: pd.DataFrame,
    paper_table: dict | None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Rows model × regime × testset: mean ± sd over seeds with a bootstrap CI, beside the paper's number.

    The CI is that of the seed-averaged metric over resampled test images when every seed's
    predictions CSV is at hand (``ci_source`` = pooled); otherwise the first seed's CI from its eval JSON.
    """
    rows = []
    for (model, regime, testset), g in evals.groupby(["model", "regime", "testset"], sort=False):
        g = g.sort_values("seed")
        first = g.iloc[0]
        row = {
            "model": model,
            "regime": regime,
            "testset": testset,
            "n_seeds": len(g),
            "seeds": " ".join(str(s) for s in g["seed"]),
            "n_test": int(first["n"]),
            "n_degenerate": int((g["degenerate"] != "").sum()),
        }
        al = aligned_scores(list(g["predictions_path"])) if n_boot > 0 else None
        pooled = (
            pooled_ci(al[0], al[1], n_boot, ci, seed, threshold) if al is not None and len(al[0]) else None
        )
        row["ci_source"] = "pooled" if pooled else f"seed {int(first['seed'])}"
        for m in TABLE_METRICS:
            k = scale(m)
            mean, sd = metrics.mean_sd(g[m].to_numpy() * k)
            row[f"{m}_mean"], row[f"{m}_sd"] = mean, sd
            lo, hi = pooled[m] if pooled else (first[f"{m}_lo"], first[f"{m}_hi"])
            row[f"{m}_lo"], row[f"{m}_hi"] = lo * k, hi * k
        row["paper_accuracy"] = _paper(paper_table, model, regime, testset)
        row["diff_vs_paper"] = row["accuracy_mean"] - row["paper_accuracy"]
        rows.append(row)
    # paper cells with no run of ours still appear, so the comparison shows what is missing
    have = {(r["model"], r["regime"], r["testset"]) for r in rows}
    for model, regs in (paper_table or {}).items():
        for regime, sets in (regs or {}).items():
            for testset, v in (sets or {}).items():
                if (model, regime, testset) not in have:
                    rows.append(
                        {
                            "model": model,
                            "regime": regime,
                            "testset": testset,
                            "n_seeds": 0,
                            "paper_accuracy": float(v),
                        }
                    )
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    mo = order(df["model"], MODEL_NAMES)
    ro = order(df["regime"], REGIME_NAMES)
    to = order(df["testset"], TESTSET_NAMES)
    df["_k"] = [
        (mo.index(a), ro.index(b), to.index(c))
        for a, b, c in zip(df["model"], df["regime"], df["testset"], strict=True)
    ]
    return df.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def _paired_runs(
    y: np.ndarray,
    t: np.ndarray,
    b: np.ndarray,
    name: str,
    n_boot: int,
    ci: float,
    seed: int,
    threshold: float,
) -> dict:
    """mean-over-runs metric of t minus that of b (columns = runs), paired bootstrap over images."""
    fn = metrics.metric_from_score(name, threshold)
    diff = _run_mean(fn, y, t) - _run_mean(fn, y, b)
    idx = metrics.resample_indices(len(y), max(n_boot, 0), seed)
    d = _resampled_run_mean(fn, y, t, idx) - _resampled_run_mean(fn, y, b, idx)
    d = d[np.isfinite(d)]
    if not len(d):
        return {
            "diff": diff,
            "lo": float("nan"),
            "hi": float("nan"),
            "p": float("nan"),
            "n_boot": 0,
            "t": _run_mean(fn, y, t),
            "b": _run_mean(fn, y, b),
        }
    lo, hi = metrics.percentile_ci(d, ci)
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return {
        "diff": diff,
        "lo": lo,
        "hi": hi,
        "p": float(min(1.0, 2.0 * (tail + 1) / (len(d) + 1))),
        "n_boot": int(len(d)),
        "t": _run_mean(fn, y, t),
        "b": _run_mean(fn, y, b),
    }


def paired(
    evals: pd.DataFrame,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    baseline: str = "real",
    treatment: str = "hybrid",
    threshold: float = 0.5,
) -> pd.DataFrame:
    """treatment − baseline on the same test images, per model × testset × seed, plus one row per
    model × testset for the seed-averaged metric (``seed`` = "mean") when two or more seeds pair up.

    Per seed this is ``metrics.paired_bootstrap_diff``; the "mean" row resamples images once and
    averages each regime's metric over its seeds on that resample. ``p_holm``: Holm-adjusted over the
    family of rows that share a ``seed`` value (every model × test set × metric read together).
    """
    cols = ["model", "testset", "seed", "metric", baseline, treatment, "diff", "lo", "hi", "p", "p_holm"]
    cols += ["n", "n_boot"]
    rows = []
    if not len(evals):
        return pd.DataFrame(columns=cols)
    for (model, testset), g in evals.groupby(["model", "testset"], sort=True):
        runs = []  # (seed, treatment path, baseline path) of seeds with both regimes
        for s, gs in g.groupby("seed", sort=True):
            by = gs.set_index("regime")
            if baseline in by.index and treatment in by.index:
                pt, pb = by.loc[treatment, "predictions_path"], by.loc[baseline, "predictions_path"]
                if pt is None or pb is None:
                    log.warning(
                        "paired test %s/%s/seed %s skipped: predictions CSV missing", model, testset, s
                    )
                    continue
                runs.append((int(s), pt, pb))
        groups = [(str(s), [pt], [pb]) for s, pt, pb in runs]
        if len(runs) > 1:
            groups.append(("mean", [r[1] for r in runs], [r[2] for r in runs]))
        for label, pts, pbs in groups:
            al = aligned_scores(pts + pbs)
            if al is None or not len(al[0]):
                continue
            y, sc = al
            t, b = sc[:, : len(pts)], sc[:, len(pts) :]
            for name in PAIRED_METRICS:
                r = _paired_runs(y, t, b, name, n_boot, ci, seed, threshold)
                k = scale(name)
                rows.append(
                    {
                        "model": model,
                        "testset": testset,
                        "seed": label,
                        "metric": name,
                        baseline: r["b"] * k,
                        treatment: r["t"] * k,
                        "diff": r["diff"] * k,
                        "lo": r["lo"] * k,
                        "hi": r["hi"] * k,
                        "p": r["p"],
                        "n": len(y),
                        "n_boot": r["n_boot"],
                    }
                )
    out = pd.DataFrame(rows, columns=cols)
    for _, idx in out.groupby("seed", sort=False).groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p"])
    if len(out):
        mo, to = order(out["model"], MODEL_NAMES), order(out["testset"], TESTSET_NAMES)
        out["_k"] = [(mo.index(m), to.index(t)) for m, t in zip(out["model"], out["testset"], strict=True)]
        out = out.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    return out


def sweep_table(t4: pd.DataFrame, points: list[tuple[float, str]]) -> pd.DataFrame:
    """Table IV rows of the sweep's regimes with their synthetic fraction, by model/testset/fraction."""
    cols = ["model", "testset", "fraction", "regime", "n_seeds"]
    cols += [f"{m}_{k}" for m in SWEEP_METRICS for k in ("mean", "sd", "lo", "hi")]
    if not points or not len(t4) or "accuracy_mean" not in t4.columns:
        return pd.DataFrame(columns=cols)
    frac = {name: f for f, name in points}
    rows = t4[t4["regime"].isin(list(frac)) & (t4["n_seeds"] > 0)].copy()
    rows["fraction"] = rows["regime"].map(frac)
    mo, to = order(rows["model"], MODEL_NAMES), order(rows["testset"], TESTSET_NAMES)
    rows["_k"] = [
        (mo.index(m), to.index(t), f)
        for m, t, f in zip(rows["model"], rows["testset"], rows["fraction"], strict=True)
    ]
    rows = rows.sort_values("_k", kind="stable").drop(columns="_k")
    return rows[[c for c in cols if c in rows.columns]].reset_index(drop=True)


def load_realism(paths: Iterable[str]) -> pd.DataFrame:
    """One row per realism JSON (evaluation.realism_check) and group: group '' is the whole synthetic set."""
    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        base = {"model": str(d.get("model", "?")), "seed": int(d.get("seed", 0))}
        acc = (d.get("metrics") or {}).get("accuracy") or {}
        rows.append(
            {
                **base,
                "group": "",
                "n": int(d.get("n", 0)),
                "accuracy": 100 * num(acc.get("value")),
                "lo": 100 * num(acc.get("lo")),
                "hi": 100 * num(acc.get("hi")),
                "sensitivity": 100 * num(((d.get("metrics") or {}).get("sensitivity") or {}).get("value")),
                "specificity": 100 * num(((d.get("metrics") or {}).get("specificity") or {}).get("value")),
            }
        )
        for name, g in sorted((d.get("groups") or {}).items()):
            a = g.get("accuracy") or {}
            rows.append(
                {
                    **base,
                    "group": str(name),
                    "n": int(g.get("n", 0)),
                    "accuracy": 100 * num(a.get("value")),
                    "lo": 100 * num(a.get("lo")),
                    "hi": 100 * num(a.get("hi")),
                    "sensitivity": float("nan"),
                    "specificity": float("nan"),
                }
            )
    cols = ["model", "seed", "group", "n", "accuracy", "lo", "hi", "sensitivity", "specificity"]
    return pd.DataFrame(rows, columns=cols)


def wall_times(bench_dir) -> pd.DataFrame:
    """One row per Snakemake benchmark TSV under ``bench_dir``: rule (first folder), job, seconds, RSS."""
    root = Path(bench_dir)
    rows = []
    for p in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        try:
            df = pd.read_csv(p, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            log.warning("benchmark file %s unreadable: skipped", p)
            continue
        if not len(df) or "s" not in df.columns:
            continue
        rel = p.relative_to(root)
        rss = pd.to_numeric(df.get("max_rss", pd.Series([np.nan])), errors="coerce")
        cpu = pd.to_numeric(df.get("cpu_time", pd.Series([np.nan])), errors="coerce")
        rows.append(
            {
                "rule": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
                "job": str(rel.with_suffix("")),
                "s": float(pd.to_numeric(df["s"], errors="coerce").mean()),
                "max_rss_mb": float(rss.max()) if rss.notna().any() else float("nan"),
                "cpu_time_s": float(cpu.mean()),
            }
        )
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb", "cpu_time_s"])


def kept_epoch(history: pd.DataFrame) -> int:
    """Row of the epoch whose weights were kept: the first lowest validation loss (as classify keeps
    them), or the last epoch when there is no validation loss."""
    vl = pd.to_numeric(history.get("val_loss", pd.Series(dtype=float)), errors="coerce")
    return int(np.nanargmin(vl.to_numpy())) if vl.notna().any() else len(history) - 1


def val_accuracy_table(histories: dict[str, str] | None, paper_val: dict | None) -> pd.DataFrame:
    """Per model × regime: validation accuracy (%) at the kept epoch, over seeds, beside Fig. 10's."""
    runs = []
    for key, path in (histories or {}).items():
        model, regime, seed = (str(key).split("/") + ["?", "?", "?"])[:3]
        if not path or not Path(path).exists():
            continue
        h = pd.read_csv(path)
        if not len(h) or "val_accuracy" not in h:
            continue
        row = h.iloc[kept_epoch(h)]
        runs.append((model, regime, seed, int(row["epoch"]), 100 * num(row["val_accuracy"])))
    df = pd.DataFrame(runs, columns=["model", "regime", "seed", "epoch", "val_accuracy"])
    keys = list(dict.fromkeys(zip(df["model"], df["regime"], strict=True)))
    for model, regs in (paper_val or {}).items():
        keys += [(model, r) for r in regs or {} if (model, r) not in keys]
    rows = []
    for model, regime in keys:
        g = df[(df["model"] == model) & (df["regime"] == regime)]
        mean, sd = metrics.mean_sd(g["val_accuracy"].to_numpy())
        try:
            paper = float(paper_val[model][regime])
        except (KeyError, TypeError, ValueError):
            paper = float("nan")
        rows.append(
            {
                "model": model,
                "regime": regime,
                "n_seeds": len(g),
                "epochs": " ".join(str(e) for e in g["epoch"]),
                "val_accuracy_mean": mean,
                "val_accuracy_sd": sd,
                "paper_val_accuracy": paper,
                "diff_vs_paper": mean - paper,
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        mo, ro = order(out["model"], MODEL_NAMES), order(out["regime"], REGIME_NAMES)
        out["_k"] = [(mo.index(m), ro.index(r)) for m, r in zip(out["model"], out["regime"], strict=True)]
        out = out.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    return out


def hybrid_composition(train_csvs: Iterable[str], cfg: dict, classes: list[str]) -> pd.DataFrame:
    """Real and synthetic counts per regime (folder name of each ``hybrid/{regime}/train.csv``), overall
    (label "all") and per class, with the actual synthetic share beside the configured one; ``short``
    marks a share more than ``report.hybrid_fraction_tolerance`` below the configured one.

    ``cfg`` is the validated config: its ``hybrid`` section names the regimes' fractions."""
    hy = cfg["hybrid"]
    tol = float(cfg["report"]["hybrid_fraction_tolerance"])
    rows = []
    for path in train_csvs:
        regime = Path(path).parent.name
        df = io.read_csv(path)
        missing = {"origin", "label"} - set(df.columns)
        if missing:
            raise ValueError(
                f"{path}: no column {', '.join(sorted(missing))} (a hybrid stage training list?)"
            )
        try:
            want = float(regime_fraction(regime, hy))
        except ConfigError:
            want = float("nan")
        labels = ["all"] + [c for c in classes] + sorted(set(df["label"].astype(str)) - set(classes))
        for label in labels:
            g = df if label == "all" else df[df["label"].astype(str) == label]
            n_syn = int((g["origin"].astype(str) == "synthetic").sum())
            n_real = int((g["origin"].astype(str) == "real").sum())
            frac = n_syn / (n_syn + n_real) if n_syn + n_real else float("nan")
            rows.append(
                {
                    "regime": regime,
                    "label": label,
                    "n_real": n_real,
                    "n_synthetic": n_syn,
                    "fraction": frac,
                    "configured": want,
                    "short": bool(math.isfinite(frac) and math.isfinite(want) and frac < want - tol),
                }
            )
    cols = ["regime", "label", "n_real", "n_synthetic", "fraction", "configured", "short"]
    out = pd.DataFrame(rows, columns=cols)
    ro = order(out["regime"], REGIME_NAMES)
    return out.iloc[np.argsort([ro.index(r) for r in out["regime"]], kind="stable")].reset_index(drop=True)


def composition_warnings(comp: pd.DataFrame, tol: float) -> list[str]:
    out = []
    for regime, g in comp.groupby("regime", sort=False):
        bad = g[g["short"]]
        if not len(bad):
            continue
        what = ", ".join(
            f"{'overall' if r['label'] == 'all' else r['label']} {100 * r['fraction']:.1f} %"
            for _, r in bad.iterrows()
        )
        out.append(
            f"{regime}: synthetic share {what}, below the configured {100 * g['configured'].iloc[0]:.0f} % "
            f"(tolerance {100 * tol:.0f} points): the filter kept too few synthetic images for that ratio"
        )
    return out


def clinical_table(eval_jsons: list) -> pd.DataFrame:
    """Per model x regime x test set (mean over seeds): sensitivity and specificity at each clinical
    operating point (threshold from the validation split), ECE and Brier score. ``eval_jsons``: paths
    or ``read_evals``' dicts."""
    rows = []
    for d in read_evals(eval_jsons):
        row = {k: d.get(k) for k in ("model", "regime", "seed", "testset")}
        cal = d.get("calibration") or {}
        row["ece"], row["brier"] = num(cal.get("ece")), num(cal.get("brier"))
        for op in d.get("operating_points") or []:
            key = f"{100 * op['target_specificity']:g}"
            row[f"sens@spec{key}"] = num((op.get("sensitivity") or {}).get("value"))
            row[f"spec@spec{key}"] = num((op.get("specificity") or {}).get("value"))
        rows.append(row)
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    values = [c for c in df.columns if c not in ("model", "regime", "seed", "testset")]
    out = df.groupby(["model", "regime", "testset"], sort=False)[values].mean().reset_index()
    return out.assign(n_seeds=df.groupby(["model", "regime", "testset"], sort=False).size().to_numpy())


def pooled_reliability(eval_jsons: list) -> pd.DataFrame:
    """The reliability bins of every eval JSON (paths or ``read_evals``' dicts) pooled over seeds:
    model, regime, testset, bin, n, mean_p, frac_pos (count-weighted)."""
    rows = []
    for d in read_evals(eval_jsons):
        for b in (d.get("calibration") or {}).get("bins") or []:
            rows.append({k: d.get(k) for k in ("model", "regime", "testset")} | b)
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    df["sum_p"], df["sum_pos"] = df["mean_p"] * df["n"], df["frac_pos"] * df["n"]
    g = (
        df.groupby(["model", "regime", "testset", "bin"], sort=False)[["n", "sum_p", "sum_pos"]]
        .sum()
        .reset_index()
    )
    return g.assign(mean_p=g["sum_p"] / g["n"], frac_pos=g["sum_pos"] / g["n"]).drop(
        columns=["sum_p", "sum_pos"]
    )
