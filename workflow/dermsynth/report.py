"""The final report: Table IV of Derm-T2IM beside our numbers, the paired hybrid-vs-real test, figures,
and a Markdown summary with the data counts and a methods paragraph rendered from the config.

Units: accuracy, balanced accuracy, sensitivity, specificity and F1 are percentages (as in the paper's
Table IV); AUROC stays in [0, 1]. Differences in ``paired.csv`` use the same units (percentage points).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from . import io, metrics
from .config import TINY_PREFIX
from .errors import ConfigError
from .quality import contact_sheet
from .regimes import regime_fraction

log = logging.getLogger("dermsynth.report")

MODEL_NAMES = {"vit": "ViT-B/16", "mobilenet_v2": "MobileNetV2"}
REGIME_NAMES = {
    "real": "Baseline (real)",
    "hybrid": "Hybrid (synthetic + real)",
    "synthetic": "Synthetic only",
}
TESTSET_NAMES = {"isic": "ISIC Archive", "ham10000": "HAM10000"}
PERCENT_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1")
PAIRED_METRICS = ("accuracy", "balanced_accuracy", "auroc")
REGIME_COLORS = {"real": "#4c72b0", "hybrid": "#dd8452", "synthetic": "#55a868"}
# a classifier no better than chance on one side: all one class (sensitivity or specificity 0) or
# an AUROC at or below chance
DEGENERATE_AUROC = 0.5


# ---------------------------------------------------------------- small helpers


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def fmt_cell(
    mean: float, sd: float, lo: float | None = None, hi: float | None = None, digits: int = 2
) -> str:
    """'mean ± sd [lo, hi]'; the ± part only with an sd (two or more seeds), the CI only when defined."""
    if not math.isfinite(mean):
        return "—"
    s = f"{mean:.{digits}f}"
    if math.isfinite(sd):
        s += f" ± {sd:.{digits}f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def _nice(name: str, table: dict) -> str:
    return table.get(name, name)


def md_table(headers: list[str], rows: Iterable[Iterable]) -> str:
    esc = [str(h).replace("|", "\\|") for h in headers]
    lines = ["| " + " | ".join(esc) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines) + "\n"


def _order(values: Iterable[str], preferred: Iterable[str]) -> list[str]:
    values = list(dict.fromkeys(values))
    pref = [p for p in preferred if p in values]
    return pref + sorted(v for v in values if v not in pref)


def seeds_phrase(counts: Iterable[int]) -> str:
    """How a cell summarises its seeds: 'mean ± sd over N seeds' only where every cell has two or more."""
    ns = sorted({int(n) for n in counts if n and n > 0})
    if not ns:
        return "no runs"
    if ns == [1]:
        return "one seed: the value of that seed alone, no sd"
    if ns[0] == 1:
        return "mean ± sd over the seeds of each cell; a cell with one seed shows that seed's value alone"
    if len(ns) == 1:
        return f"mean ± sd over {ns[0]} seeds"
    return f"mean ± sd over {ns[0]}-{ns[-1]} seeds"


def holm(p: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order; NaN stays NaN and is not counted in m.

    Sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(list(p), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
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


def _savefig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- loading


def load_evals(eval_jsons: list[str]) -> pd.DataFrame:
    """One row per eval JSON: model, regime, seed, testset, n, metric values/CIs (raw units), paths."""
    rows = []
    for p in eval_jsons:
        p = Path(p)
        d = json.loads(p.read_text())
        row = {
            "model": str(d.get("model", "?")),
            "regime": str(d.get("regime", "?")),
            "seed": int(d.get("seed", 0)),
            "testset": str(d.get("testset", "?")),
            "n": int(d.get("n", 0)),
            "n_per_class": d.get("n_per_class", {}),
            "confusion": d.get("confusion"),
            "json": str(p),
            "predictions_path": _resolve(d.get("predictions"), p.parent),
        }
        for m in TABLE_METRICS:
            v = (d.get("metrics") or {}).get(m) or {}
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = (
                _num(v.get("value")),
                _num(v.get("lo")),
                _num(v.get("hi")),
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


# ---------------------------------------------------------------- Table IV


def _load_pred(path: Path | None) -> pd.DataFrame | None:
    if path is None:
        return None
    return pd.read_csv(path)[["path", "y", "score"]]


def aligned_scores(pred_paths: list[Path | None]) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, scores (n_images, n_runs)) on the images every run predicted; None if a CSV is missing."""
    frames = [_load_pred(p) for p in pred_paths]
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


def pooled_ci(
    y: np.ndarray, scores: np.ndarray, n_boot: int, ci: float, seed: int, threshold: float = 0.5
) -> dict[str, tuple[float, float]]:
    """Bootstrap CI of each metric's mean over runs (seeds): all runs are scored on the same resample,
    so the interval reflects the test-set sampling of the reported mean."""
    fns = {m: metrics.metric_from_score(m, threshold) for m in TABLE_METRICS}
    boot = {m: [] for m in TABLE_METRICS}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a resample with one class
        for i in metrics.resample_indices(len(y), n_boot, seed):
            yi, si = y[i], scores[i]
            for m, fn in fns.items():
                boot[m].append(_run_mean(fn, yi, si))
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
            k = _scale(m)
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
    mo = _order(df["model"], MODEL_NAMES)
    ro = _order(df["regime"], REGIME_NAMES)
    to = _order(df["testset"], TESTSET_NAMES)
    df["_k"] = [
        (mo.index(a), ro.index(b), to.index(c))
        for a, b, c in zip(df["model"], df["regime"], df["testset"], strict=True)
    ]
    return df.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def table4_markdown(t4: pd.DataFrame, ci: float = 0.95) -> str:
    if not len(t4):
        return "_no evaluations_\n"
    testsets = _order(t4["testset"], TESTSET_NAMES)
    headers = ["Model", "Training data"]
    for ts in testsets:
        headers += [f"{_nice(ts, TESTSET_NAMES)} (ours)", f"{_nice(ts, TESTSET_NAMES)} (paper)"]
    rows = []
    idx = t4.set_index(["model", "regime", "testset"])
    for model, regime in dict.fromkeys(zip(t4["model"], t4["regime"], strict=True)):
        r = [_nice(model, MODEL_NAMES), _nice(regime, REGIME_NAMES)]
        for ts in testsets:
            if (model, regime, ts) in idx.index:
                c = idx.loc[(model, regime, ts)]
                ours = fmt_cell(
                    _num(c.get("accuracy_mean")),
                    _num(c.get("accuracy_sd")),
                    _num(c.get("accuracy_lo")),
                    _num(c.get("accuracy_hi")),
                )
                k, n = _num(c.get("n_degenerate")), _num(c.get("n_seeds"))
                if k > 0:
                    ours += f" ⚠ degenerate ({int(k)}/{int(n)} seeds)"
                r += [ours, _fmt(_num(c.get("paper_accuracy")))]
            else:
                r += ["—", "—"]
        rows.append(r)
    src = "; ".join(sorted(set(t4.get("ci_source", pd.Series(dtype=str)).dropna().astype(str))))
    note = (
        f"\nAccuracy (%) on each test set: {seeds_phrase(t4['n_seeds'].fillna(0))} "
        f"[{int(round(ci * 100))} % percentile "
        f"bootstrap CI over test images; CI source: {src or 'n/a'} (pooled = the seed mean recomputed on "
        "each resample; seed N = that seed alone)]; paper = Derm-T2IM Table IV (real = its baseline).\n"
    )
    if "n_degenerate" in t4 and (t4["n_degenerate"].fillna(0) > 0).any():
        note += (
            "\n⚠ degenerate: in that many seeds the classifier predicts one class only (sensitivity or "
            f"specificity 0) or ranks no better than chance (AUROC ≤ {DEGENERATE_AUROC}); its accuracy "
            "then says nothing about skill (see What was run).\n"
        )
    return md_table(headers, rows) + note


# ---------------------------------------------------------------- paired test


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
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = (
            np.array(
                [
                    _run_mean(fn, y[i], t[i]) - _run_mean(fn, y[i], b[i])
                    for i in metrics.resample_indices(len(y), n_boot, seed)
                ]
            )
            if n_boot > 0
            else np.array([])
        )
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
                k = _scale(name)
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
        mo, to = _order(out["model"], MODEL_NAMES), _order(out["testset"], TESTSET_NAMES)
        out["_k"] = [(mo.index(m), to.index(t)) for m, t in zip(out["model"], out["testset"], strict=True)]
        out = out.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    return out


# ---------------------------------------------------------------- figures


def fig_accuracy(t4: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    ours = t4[t4["n_seeds"] > 0] if len(t4) else t4
    testsets = _order(t4["testset"], TESTSET_NAMES) if len(t4) else []
    models = _order(t4["model"], MODEL_NAMES) if len(t4) else []
    regimes = _order(t4["regime"], REGIME_NAMES) if len(t4) else []
    fig, axes = plt.subplots(
        1,
        max(1, len(testsets)),
        figsize=(5.5 * max(1, len(testsets)), 4),
        squeeze=False,
        layout="constrained",
    )
    width = 0.8 / max(1, 2 * len(regimes))
    for ax, ts in zip(axes[0], testsets, strict=False):
        for j, reg in enumerate(regimes):
            color = REGIME_COLORS.get(reg, f"C{j}")
            for i, model in enumerate(models):
                sel = t4[(t4["model"] == model) & (t4["regime"] == reg) & (t4["testset"] == ts)]
                x = i + (2 * j - len(regimes) + 0.5) * width
                if len(sel) and sel.iloc[0].get("n_seeds", 0) > 0:
                    c = sel.iloc[0]
                    v, lo, hi = c["accuracy_mean"], c["accuracy_lo"], c["accuracy_hi"]
                    err = [[max(0.0, v - lo)], [max(0.0, hi - v)]] if math.isfinite(lo) else None
                    ax.bar(
                        x,
                        v,
                        width,
                        color=color,
                        yerr=err,
                        capsize=3,
                        label=f"{_nice(reg, REGIME_NAMES)} (ours)" if i == 0 else None,
                    )
                if len(sel) and math.isfinite(_num(sel.iloc[0].get("paper_accuracy"))):
                    ax.bar(
                        x + width,
                        sel.iloc[0]["paper_accuracy"],
                        width,
                        color=color,
                        alpha=0.35,
                        hatch="//",
                        edgecolor=color,
                        label=f"{_nice(reg, REGIME_NAMES)} (paper)" if i == 0 else None,
                    )
        ax.set_xticks(range(len(models)), [_nice(m, MODEL_NAMES) for m in models])
        ax.set_title(_nice(ts, TESTSET_NAMES))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    if not len(ours):
        axes[0][0].text(0.5, 0.5, "no evaluations", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle("Test accuracy: ours (error bars: bootstrap CI) vs Derm-T2IM Table IV")
    return _savefig(fig, out)


def fig_curves(histories: dict[str, str] | None, out: Path, paper_val: dict | None = None) -> Path:
    """Loss, validation accuracy and AUROC per epoch; the paper's Fig. 10 validation accuracy
    (``paper_val``, model -> regime -> %) as dashed lines on the accuracy panels."""
    plt = _plt()
    runs = []
    for key, path in (histories or {}).items():
        parts = str(key).split("/")
        model, regime, seed = (parts + ["?", "?", "?"])[:3]
        if path and Path(path).exists():
            runs.append((model, regime, seed, pd.read_csv(path)))
    models = _order([r[0] for r in runs], MODEL_NAMES)
    fig, axes = plt.subplots(
        max(1, len(models)), 3, figsize=(13, 3.2 * max(1, len(models))), squeeze=False, layout="constrained"
    )
    styles = ["-", "--", ":", "-."]
    for i, model in enumerate(models):
        seeds = sorted({r[2] for r in runs if r[0] == model})
        for _, regime, seed, h in (r for r in runs if r[0] == model):
            color = REGIME_COLORS.get(regime, "C2")
            ls = styles[seeds.index(seed) % len(styles)]
            lab = f"{_nice(regime, REGIME_NAMES)} seed {seed}"
            axes[i][0].plot(h["epoch"], h["train_loss"], ls, color=color, alpha=0.5)
            axes[i][0].plot(h["epoch"], h["val_loss"], ls, color=color, marker="o", ms=3, label=lab)
            axes[i][1].plot(h["epoch"], 100 * h["val_accuracy"], ls, color=color, marker="o", ms=3, label=lab)
            axes[i][2].plot(h["epoch"], h["val_auroc"], ls, color=color, marker="o", ms=3, label=lab)
        for regime, v in ((paper_val or {}).get(model) or {}).items():
            axes[i][1].axhline(
                float(v),
                ls=(0, (5, 3)),
                lw=1,
                color=REGIME_COLORS.get(regime, "C2"),
                label=f"{_nice(regime, REGIME_NAMES)}: paper Fig. 10",
            )
        for ax, yl in zip(axes[i], ("loss (faint: train)", "val accuracy (%)", "val AUROC"), strict=True):
            ax.set_xlabel("epoch")
            ax.set_ylabel(yl)
            ax.set_title(_nice(model, MODEL_NAMES))
            ax.grid(alpha=0.3)
        if axes[i][1].get_legend_handles_labels()[0]:
            axes[i][1].legend(fontsize=7)
    if not runs:
        axes[0][0].text(0.5, 0.5, "no training histories", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle("Validation curves during fine-tuning (cf. Derm-T2IM Fig. 10)")
    return _savefig(fig, out)


def fig_confusion(evals: pd.DataFrame, classes: list[str], out: Path) -> Path:
    plt = _plt()
    keys = list(dict.fromkeys(zip(evals["model"], evals["regime"], strict=True))) if len(evals) else []
    testsets = _order(evals["testset"], TESTSET_NAMES) if len(evals) else []
    fig, axes = plt.subplots(
        max(1, len(keys)),
        max(1, len(testsets)),
        figsize=(3.4 * max(1, len(testsets)), 3.3 * max(1, len(keys))),
        squeeze=False,
        layout="constrained",
    )
    for i, (model, regime) in enumerate(keys):
        for j, ts in enumerate(testsets):
            ax = axes[i][j]
            g = evals[(evals["model"] == model) & (evals["regime"] == regime) & (evals["testset"] == ts)]
            mats = [np.array(c) for c in g["confusion"] if c is not None]
            if not mats:
                ax.axis("off")
                continue
            cm = np.sum(mats, axis=0)  # summed over seeds
            rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
            for (r, c), v in np.ndenumerate(cm):
                ax.text(
                    c,
                    r,
                    f"{v}\n{rates[r, c]:.0%}",
                    ha="center",
                    va="center",
                    color="white" if rates[r, c] > 0.5 else "black",
                    fontsize=8,
                )
            ax.set_xticks(range(len(classes)), classes, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
            ax.set_xlabel("predicted", fontsize=7)
            ax.set_ylabel("true", fontsize=7)
            ax.set_title(f"{_nice(model, MODEL_NAMES)} · {regime} · {_nice(ts, TESTSET_NAMES)}", fontsize=8)
    if not keys:
        axes[0][0].text(0.5, 0.5, "no evaluations", ha="center")
    fig.suptitle("Confusion matrices (all seeds summed; rows normalised)")
    return _savefig(fig, out)


def fig_roc(evals: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    models = _order(evals["model"], MODEL_NAMES) if len(evals) else []
    testsets = _order(evals["testset"], TESTSET_NAMES) if len(evals) else []
    fig, axes = plt.subplots(
        max(1, len(models)),
        max(1, len(testsets)),
        figsize=(3.8 * max(1, len(testsets)), 3.6 * max(1, len(models))),
        squeeze=False,
        layout="constrained",
    )
    for i, model in enumerate(models):
        for j, ts in enumerate(testsets):
            ax = axes[i][j]
            g = evals[(evals["model"] == model) & (evals["testset"] == ts)].sort_values("seed")
            for regime in _order(g["regime"], REGIME_NAMES):
                row = g[g["regime"] == regime].iloc[0]  # first seed
                pred = _load_pred(row["predictions_path"])
                if pred is None or pred["y"].nunique() < 2:
                    continue
                fpr, tpr, _ = metrics.roc_curve(pred["y"], pred["score"])
                ax.plot(
                    fpr,
                    tpr,
                    color=REGIME_COLORS.get(regime, "C2"),
                    label=f"{regime} seed {row['seed']} (AUC {metrics.auroc(pred['y'], pred['score']):.3f})",
                )
            ax.plot([0, 1], [0, 1], ":", color="gray")
            ax.set_xlabel("1 − specificity")
            ax.set_ylabel("sensitivity")
            ax.set_title(f"{_nice(model, MODEL_NAMES)} · {_nice(ts, TESTSET_NAMES)}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
            else:
                ax.text(0.5, 0.5, "one class only: no ROC", ha="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle("ROC curves (malignant = positive)")
    return _savefig(fig, out)


def samples_sheet(manifest: str, out: Path, per_cell: int = 6, thumb: int = 96) -> Path | None:
    """Up to ``per_cell`` synthetic images for every label × sampler, one row each."""
    df = io.read_csv(manifest)
    if not len(df):
        return None
    if "sampler" not in df.columns:
        df["sampler"] = "-"
    paths, labels = [], []
    for (label, sampler), g in df.groupby(["label", "sampler"], sort=True):
        g = g.head(per_cell)
        paths += g["path"].astype(str).tolist() + [""] * (per_cell - len(g))
        labels += [f"{label}/{sampler}"] * len(g) + [""] * (per_cell - len(g))
    # blank cells pad short rows so every row is one label × sampler
    return contact_sheet(
        paths,
        out,
        ncols=per_cell,
        thumb=thumb,
        labels=labels,
        title="synthetic samples: rows = label/sampler",
    )


def rejected_sheet(rejected_csv: str, out: Path, per_reason: int = 6, thumb: int = 96) -> Path | None:
    df = io.read_csv(rejected_csv)
    if not len(df):
        return None
    paths, labels = [], []
    for reason, g in df.groupby("reason", sort=True):
        g = g.head(per_reason)
        paths += g["path"].astype(str).tolist() + [""] * (per_reason - len(g))
        labels += [str(reason)] * len(g) + [""] * (per_reason - len(g))
    return contact_sheet(
        paths,
        out,
        ncols=per_reason,
        thumb=thumb,
        labels=labels,
        title="rejected synthetic images: rows = reason",
    )


# ---------------------------------------------------------------- summary.md


def _g(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _opt(template: str, *values) -> str:
    """``template`` filled with ``values``, or '' when any value is missing (absent config key)."""
    if any(v is None or v == "" or v == [] for v in values):
        return ""
    return template.format(*values)


def _steps_text(steps) -> str | None:
    """A sampler's steps: 20, or a [min, max] range drawn per image as "22-26"."""
    if isinstance(steps, (list, tuple)) and steps:
        return "-".join(str(s) for s in steps)
    return steps


def _join(*fragments: str, sep: str = ", ") -> str:
    return sep.join(f for f in fragments if f)


def methods_paragraph(cfg: dict | None, composition: pd.DataFrame | None = None) -> str:
    """A methods paragraph from the config snapshot; clauses whose keys are absent are left out.

    ``composition`` (hybrid_composition) gives the hybrid set's actual synthetic share; without it the
    sentence says the share was configured, not reached.
    """
    if not cfg:
        return ""
    parts = []
    classes = cfg.get("classes") or ["benign", "malignant"]
    ds = cfg.get("datasets") or {}
    if isinstance(ds, dict) and ds:
        src = ", ".join(
            f"{name} ({spec.get('source', '?')} source)"
            for name, spec in ds.items()
            if isinstance(spec, dict)
        )
        parts.append(f"Images of the classes {' and '.join(classes)} came from {src}.")
    dr = _g(cfg, "preprocess", "dullrazor")
    if isinstance(dr, dict):
        if dr.get("activate", True):
            detail = _join(
                _opt("black-hat kernel {} px", dr.get("kernel_size")),
                _opt("threshold {}", dr.get("threshold")),
                _opt("{} inpainting", dr.get("method")),
                _opt("radius {}", dr.get("inpaint_radius")),
            )
            parts.append(f"Hair was removed with DullRazor{f' ({detail})' if detail else ''}.")
        else:
            parts.append("Hair removal was switched off.")
    rs = _g(cfg, "preprocess", "resize")
    if isinstance(rs, dict):
        parts.append(
            _opt(
                "Images were resized to {} px for diffusion and {} px for the classifiers.",
                rs.get("diffusion"),
                rs.get("classifier"),
            )
        )
    ft = cfg.get("finetune")
    if isinstance(ft, dict):
        length = _opt("{} steps", ft.get("max_train_steps")) or _opt("{} epochs", ft.get("num_train_epochs"))
        detail = _join(
            _opt("rank {}", ft.get("rank")),
            _opt("alpha {}", ft.get("alpha")),
            _opt("modules {}", ", ".join(ft.get("target_modules") or [])),
            _opt("{} px", ft.get("resolution")),
            length,
            _opt("batch size {}", ft.get("train_batch_size")),
            _opt("LoRA learning rate {}", ft.get("lora_learning_rate")),
            _opt("{} schedule", ft.get("lr_scheduler")),
            _opt("optimizer {}", ft.get("optimizer")),
            _opt("mixed precision {}", ft.get("mixed_precision")),
            _opt('instance prompt "{}"', ft.get("instance_prompt")),
        )
        parts.append(
            _opt("Stable Diffusion ({}) was fine-tuned with DreamBooth and LoRA", ft.get("pretrained"))
            or "Stable Diffusion was fine-tuned with DreamBooth and LoRA"
        )
        parts[-1] += f" ({detail})." if detail else "."
    gen = cfg.get("generate")
    if isinstance(gen, dict):
        samplers = ", ".join(
            _join(k, _opt("{} steps", _steps_text((v or {}).get("steps"))), sep=" ")
            for k, v in (gen.get("samplers") or {}).items()
        )
        detail = _join(
            _opt("samplers {}", samplers),
            _opt("guidance scale {}", gen.get("guidance_scale")),
            _opt("{} px", gen.get("resolution")),
            _opt("LoRA scale {}", gen.get("lora_scale")),
        )
        head = (
            _opt(
                "{} images per class passing the per-image artifact checks were generated",
                gen.get("images_per_class"),
            )
            or "Images were generated"
        )
        parts.append(head + (f" ({detail})." if detail else "."))
    flt = cfg.get("filter")
    if isinstance(flt, dict):
        parts.append(
            "Generated images were dropped when unreadable, altered after generation (sha256), "
            "pixel-identical to another, or "
            + _join(
                _opt("more than {} black", flt.get("max_black_fraction")),
                _opt("more than {} white", flt.get("max_white_fraction")),
                _opt("flat (gray std < {})", flt.get("min_std")),
                sep=" / ",
            )
            + "."
        )
    parts.append(_hybrid_sentence(cfg, composition))
    cl = cfg.get("classify")
    if isinstance(cl, dict):
        models = ", ".join(
            _join(_nice(k, MODEL_NAMES), _opt("({})", (cfg.get("models") or {}).get(k)), sep=" ")
            for k in cl.get("models") or []
        )
        aug = cl.get("augment") or {}
        aug_s = _join(
            *(k for k in ("hflip", "vflip", "rotate90") if aug.get(k)),
            _opt("colour jitter {}", aug.get("color_jitter") or None),
        )
        detail = _join(
            _opt("{} px", cl.get("image_size")),
            _opt("up to {} epochs", cl.get("epochs")),
            _opt("batch {}", cl.get("batch_size")),
            _opt("AdamW lr {}", cl.get("learning_rate")),
            _opt("weight decay {}", cl.get("weight_decay")),
            _opt("warmup ratio {}", cl.get("warmup_ratio")),
            f"class balance {cl.get('class_balance', 'loss')}",
            f"augmentation {aug_s or 'none'}",
            _opt("early stopping patience {}", cl.get("early_stopping_patience")),
            _opt("seeds {}", ", ".join(str(x) for x in cl.get("seeds") or [])),
        )
        parts.append(f"Classifiers{' ' + models if models else ''} were fine-tuned end to end ({detail}).")
    ev = cfg.get("evaluate")
    if isinstance(ev, dict):
        parts.append(
            f"Confidence intervals are {int(round(100 * float(ev.get('ci', 0.95))))} % percentile "
            f"bootstrap intervals over test images{_opt(' ({} resamples)', ev.get('bootstrap'))}; "
            "hybrid and real models are compared with a paired bootstrap on the same test images."
        )
    return " ".join(p for p in parts if p)


def _counts_table(df: pd.DataFrame, rows: str, cols: str) -> str:
    ct = pd.crosstab(df[rows].fillna("-"), df[cols].fillna("-"), margins=True, margins_name="total")
    return md_table(
        [f"{rows} \\ {cols}"] + [str(c) for c in ct.columns],
        [[str(i)] + [str(v) for v in r] for i, r in zip(ct.index, ct.to_numpy(), strict=True)],
    )


def _section_samples(path: str) -> str:
    df = io.read_csv(path)
    out = f"## Synthetic images kept by the filter\n\n{len(df)} images kept after filtering (`{path}`).\n\n"
    if {"label", "sampler"} <= set(df.columns) and len(df):
        out += _counts_table(df, "label", "sampler")
    return out


def _section_rejected(path: str) -> str:
    df = io.read_csv(path)
    out = f"## Rejected synthetic images\n\n{len(df)} images rejected (`{path}`).\n\n"
    if len(df):
        if "sampler" not in df.columns:
            df["sampler"] = "-"
        out += _counts_table(df, "reason", "sampler")
    return out


def _section_dullrazor(path: str) -> str:
    df = io.read_csv(path)
    out = f"## Hair removal (DullRazor)\n\n{len(df)} images (`{path}`).\n\n"
    if {"psnr_before", "psnr_after"} <= set(df.columns):
        rows = []
        for col in ("psnr_before", "psnr_after") + tuple(c for c in ("ssim_before", "ssim_after") if c in df):
            v = pd.to_numeric(df[col], errors="coerce").dropna()
            m, sd = metrics.mean_sd(v.to_numpy())
            rows.append([col, len(v), _fmt(m), _fmt(sd)])
        out += "Against the hair-free ground truth (demo images only):\n\n"
        out += md_table(["measure", "n", "mean", "sd"], rows)
    return out


def _section_leakage(path: str) -> str:
    p = Path(path)
    out = f"## Leakage check\n\nSource: `{path}`.\n\n"
    if not p.exists():
        return out + "_file not found_\n"
    if p.suffix == ".json":
        d = json.loads(p.read_text())
        items = d.items() if isinstance(d, dict) else enumerate(d)
        return out + "".join(
            f"- **{k}**: {json.dumps(v) if not isinstance(v, str) else v}\n" for k, v in items
        )
    if p.suffix == ".csv":
        df = pd.read_csv(p)
        out += f"{len(df)} near-duplicate or shared-lesion pairs found across splits and datasets.\n\n"
        if len(df) and {"kind", "action"} <= set(df.columns):
            out += "Counts (kind of match × what the split did about it):\n\n"
            out += _counts_table(df, "kind", "action") + "\n"
        if len(df):
            head = df.head(10).astype(str).to_numpy().tolist()
            out += "First pairs:\n\n" + md_table(list(df.columns), head)
        return out
    return out + "```\n" + p.read_text()[:4000] + "\n```\n"


def _section_versions(versions: dict) -> str:
    return "## Versions\n\n" + md_table(["package", "version"], [[k, v] for k, v in sorted(versions.items())])


def _run_section(evals: pd.DataFrame, classes: list[str]) -> str:
    if not len(evals):
        return "## What was run\n\nNo evaluations.\n"
    lines = ["## What was run\n"]
    lines.append(f"- Models: {', '.join(_nice(m, MODEL_NAMES) for m in _order(evals['model'], MODEL_NAMES))}")
    lines.append(f"- Training regimes: {', '.join(_order(evals['regime'], REGIME_NAMES))}")
    seeds = sorted(evals["seed"].unique())
    one = " (one seed: each value is that seed's alone, no sd)" if len(seeds) == 1 else ""
    lines.append(f"- Seeds: {', '.join(str(s) for s in seeds)}{one}")
    for ts in _order(evals["testset"], TESTSET_NAMES):
        row = evals[evals["testset"] == ts].iloc[0]
        per = row["n_per_class"] or {}
        per_s = ", ".join(f"{per.get(c, 0)} {c}" for c in classes) if per else ""
        lines.append(f"- Test set {_nice(ts, TESTSET_NAMES)}: {row['n']} images ({per_s})")
    lines.append(f"- Evaluations: {len(evals)}")
    return "\n".join(lines) + "\n" + degenerate_runs_markdown(evals)


def _paired_markdown(pr: pd.DataFrame, baseline: str, treatment: str) -> str:
    if not len(pr):
        return "_no pairs of real and hybrid models on the same test set_\n"
    rows = []
    for _, r in pr.iterrows():
        digits = 3 if r["metric"] == "auroc" else 2
        rows.append(
            [
                _nice(r["model"], MODEL_NAMES),
                _nice(r["testset"], TESTSET_NAMES),
                r["seed"],
                r["metric"],
                _fmt(r[baseline], digits),
                _fmt(r[treatment], digits),
                f"{_fmt(r['diff'], digits)} [{_fmt(r['lo'], digits)}, {_fmt(r['hi'], digits)}]",
                _fmt(r["p"], 3),
                _fmt(_num(r.get("p_holm")), 3),
                r["n"],
            ]
        )
    return md_table(
        [
            "Model",
            "Test set",
            "Seed",
            "Metric",
            baseline,
            treatment,
            f"{treatment} − {baseline} [CI]",
            "p",
            "p (Holm)",
            "n",
        ],
        rows,
    )


# ---------------------------------------------------------------- ratio sweep


def sweep_table(t4: pd.DataFrame, points: list[tuple[float, str]]) -> pd.DataFrame:
    """Table IV rows of the sweep's regimes with their synthetic fraction, by model/testset/fraction."""
    cols = ["model", "testset", "fraction", "regime", "n_seeds", "accuracy_mean", "accuracy_sd"]
    cols += ["accuracy_lo", "accuracy_hi", "auroc_mean", "auroc_lo", "auroc_hi"]
    if not points or not len(t4) or "accuracy_mean" not in t4.columns:
        return pd.DataFrame(columns=cols)
    frac = {name: f for f, name in points}
    rows = t4[t4["regime"].isin(list(frac)) & (t4["n_seeds"] > 0)].copy()
    rows["fraction"] = rows["regime"].map(frac)
    mo, to = _order(rows["model"], MODEL_NAMES), _order(rows["testset"], TESTSET_NAMES)
    rows["_k"] = [
        (mo.index(m), to.index(t), f)
        for m, t, f in zip(rows["model"], rows["testset"], rows["fraction"], strict=True)
    ]
    rows = rows.sort_values("_k", kind="stable").drop(columns="_k")
    return rows[[c for c in cols if c in rows.columns]].reset_index(drop=True)


def fig_sweep(sw: pd.DataFrame, out: Path) -> Path:
    """Accuracy vs synthetic fraction, one line per model, one panel per test set, CI error bars."""
    plt = _plt()
    testsets = _order(sw["testset"], TESTSET_NAMES) if len(sw) else []
    fig, axes = plt.subplots(
        1,
        max(1, len(testsets)),
        figsize=(5 * max(1, len(testsets)), 3.8),
        squeeze=False,
        layout="constrained",
    )
    for ax, ts in zip(axes[0], testsets, strict=False):
        for i, model in enumerate(_order(sw["model"], MODEL_NAMES)):
            g = sw[(sw["model"] == model) & (sw["testset"] == ts)]
            x, v = 100 * g["fraction"].to_numpy(float), g["accuracy_mean"].to_numpy(float)
            lo, hi = g["accuracy_lo"].to_numpy(float), g["accuracy_hi"].to_numpy(float)
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            err = np.where(np.isfinite(err), err, 0.0)
            ax.errorbar(x, v, yerr=err, marker="o", capsize=3, color=f"C{i}", label=_nice(model, MODEL_NAMES))
        ax.set_xlabel("synthetic share of the training set (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_nice(ts, TESTSET_NAMES))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not len(sw):
        axes[0][0].text(0.5, 0.5, "no sweep evaluations", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle("Ratio sweep: accuracy vs synthetic fraction at a fixed real count (mean over seeds, CI)")
    return _savefig(fig, out)


def _sweep_markdown(sw: pd.DataFrame) -> str:
    rows = [
        [
            _nice(r["model"], MODEL_NAMES),
            _nice(r["testset"], TESTSET_NAMES),
            f"{100 * r['fraction']:.0f} %",
            r["regime"],
            int(r["n_seeds"]),
            fmt_cell(r["accuracy_mean"], r["accuracy_sd"], r["accuracy_lo"], r["accuracy_hi"]),
            fmt_cell(r["auroc_mean"], float("nan"), r["auroc_lo"], r["auroc_hi"], digits=3),
        ]
        for _, r in sw.iterrows()
    ]
    return md_table(
        ["Model", "Test set", "Synthetic", "Regime", "Seeds", "Accuracy (%) [CI]", "AUROC [CI]"], rows
    )


# ---------------------------------------------------------------- realism check


def load_realism(paths: Iterable[str]) -> pd.DataFrame:
    """One row per realism JSON (classify.realism_check) and group: group '' is the whole synthetic set."""
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
                "accuracy": 100 * _num(acc.get("value")),
                "lo": 100 * _num(acc.get("lo")),
                "hi": 100 * _num(acc.get("hi")),
                "sensitivity": 100 * _num(((d.get("metrics") or {}).get("sensitivity") or {}).get("value")),
                "specificity": 100 * _num(((d.get("metrics") or {}).get("specificity") or {}).get("value")),
            }
        )
        for name, g in sorted((d.get("groups") or {}).items()):
            a = g.get("accuracy") or {}
            rows.append(
                {
                    **base,
                    "group": str(name),
                    "n": int(g.get("n", 0)),
                    "accuracy": 100 * _num(a.get("value")),
                    "lo": 100 * _num(a.get("lo")),
                    "hi": 100 * _num(a.get("hi")),
                    "sensitivity": float("nan"),
                    "specificity": float("nan"),
                }
            )
    cols = ["model", "seed", "group", "n", "accuracy", "lo", "hi", "sensitivity", "specificity"]
    return pd.DataFrame(rows, columns=cols)


def _realism_markdown(rl: pd.DataFrame) -> str:
    """Per model: accuracy on all kept synthetic images and per sampler, mean ± sd over seeds [CI of
    the first seed], plus malignant sensitivity and benign specificity on the whole set."""
    rows = []
    for model in _order(rl["model"], MODEL_NAMES):
        g = rl[rl["model"] == model]
        for group in [""] + sorted(set(g["group"]) - {""}):
            gg = g[g["group"] == group].sort_values("seed")
            if not len(gg):
                continue
            m, sd = metrics.mean_sd(gg["accuracy"].to_numpy())
            first = gg.iloc[0]
            sens, _ = metrics.mean_sd(gg["sensitivity"].to_numpy())
            spec, _ = metrics.mean_sd(gg["specificity"].to_numpy())
            rows.append(
                [
                    _nice(model, MODEL_NAMES),
                    group or "all samplers",
                    int(first["n"]),
                    len(gg),
                    fmt_cell(m, sd, first["lo"], first["hi"]),
                    _fmt(sens) if group == "" else "",
                    _fmt(spec) if group == "" else "",
                ]
            )
    return md_table(
        [
            "Model (trained on real only)",
            "Synthetic images",
            "n",
            "Seeds",
            "Accuracy (%) [CI]",
            "Malignant recall (%)",
            "Benign recall (%)",
        ],
        rows,
    )


# ---------------------------------------------------------------- provenance


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


def _wall_times_markdown(wt: pd.DataFrame) -> str:
    if not len(wt):
        return "_no benchmark files found_\n"
    rows = []
    for rule, g in wt.groupby("rule", sort=False):
        rows.append(
            [
                rule,
                len(g),
                _fmt(g["s"].sum(), 1),
                _fmt(g["s"].mean(), 1),
                _fmt(g["s"].max(), 1),
                _fmt(g["max_rss_mb"].max(), 0),
            ]
        )
    rows.sort(key=lambda r: -float(r[2]))
    rows.append(["total", len(wt), _fmt(wt["s"].sum(), 1), "", "", ""])
    return md_table(["Rule", "Jobs", "Total (s)", "Mean (s)", "Max (s)", "Max RSS (MB)"], rows)


# ---------------------------------------------------------------- truthfulness checks


def not_comparable_reasons(cfg: dict | None) -> list[str]:
    """What in the config makes the numbers incomparable to the paper's: tiny random-weight models,
    tiny quality features, a tiny SAM, generated stand-in images."""
    cfg = cfg or {}
    why = [
        f"models.{k} = {v} (tiny, random weights)"
        for k, v in (cfg.get("models") or {}).items()
        if str(v).startswith(TINY_PREFIX)
    ]
    if _g(cfg, "quality", "features") == "tiny":
        why.append(
            "quality.features = tiny (a fixed random conv net: FID/KID are not on the Inception scale)"
        )
    sam = str(_g(cfg, "segment", "sam_model", default=""))
    if sam.startswith(TINY_PREFIX) and "sam" in (_g(cfg, "segment", "methods", default=["sam"]) or []):
        why.append(f"segment.sam_model = {sam} (tiny, random weights)")
    for name, spec in (cfg.get("datasets") or {}).items():
        if isinstance(spec, dict) and spec.get("source") == "demo":
            why.append(f"datasets.{name}.source = demo (generated dermoscopy-like images)")
    return why


def banner(cfg: dict | None) -> str:
    why = not_comparable_reasons(cfg)
    if not why:
        return ""
    return (
        "> **Not comparable to the paper.** This run uses tiny random-weight models or stand-in data, so "
        "its numbers test the pipeline, not the method:\n" + "".join(f"> - {w}\n" for w in why) + "\n"
    )


def degenerate_runs_markdown(evals: pd.DataFrame) -> str:
    """A bullet list of the degenerate classifiers, '' when none."""
    if not len(evals) or "degenerate" not in evals:
        return ""
    bad = evals[evals["degenerate"] != ""].sort_values(["model", "regime", "seed", "testset"])
    if not len(bad):
        return ""
    lines = [
        f"- **Degenerate classifiers** ({len(bad)} of {len(evals)} evaluations; their accuracy says "
        "nothing about skill):"
    ]
    for _, r in bad.iterrows():
        lines.append(
            f"  - {_nice(r['model'], MODEL_NAMES)} · {r['regime']} · seed {r['seed']} on "
            f"{_nice(r['testset'], TESTSET_NAMES)}: {r['degenerate']}"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- validation accuracy (Fig. 10)


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
        runs.append((model, regime, seed, int(row["epoch"]), 100 * _num(row["val_accuracy"])))
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
        mo, ro = _order(out["model"], MODEL_NAMES), _order(out["regime"], REGIME_NAMES)
        out["_k"] = [(mo.index(m), ro.index(r)) for m, r in zip(out["model"], out["regime"], strict=True)]
        out = out.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    return out


def _val_accuracy_markdown(va: pd.DataFrame) -> str:
    if not len(va):
        return ""
    rows = [
        [
            _nice(r["model"], MODEL_NAMES),
            _nice(r["regime"], REGIME_NAMES),
            int(r["n_seeds"]),
            r["epochs"] or "—",
            fmt_cell(r["val_accuracy_mean"], r["val_accuracy_sd"]),
            _fmt(r["paper_val_accuracy"]),
            _fmt(r["diff_vs_paper"]),
        ]
        for _, r in va.iterrows()
    ]
    return (
        "## Validation accuracy, ours vs Derm-T2IM Fig. 10\n\n"
        "Validation accuracy (%) at the epoch whose weights were kept (lowest validation loss), "
        f"{seeds_phrase(va['n_seeds'])}; paper = Derm-T2IM Fig. 10.\n\n"
        + md_table(
            ["Model", "Training data", "Seeds", "Kept epoch", "Ours (%)", "Paper (%)", "Ours − paper"], rows
        )
    )


# ---------------------------------------------------------------- training-set composition


def hybrid_composition(train_csvs: Iterable[str], cfg: dict | None, classes: list[str]) -> pd.DataFrame:
    """Real and synthetic counts per regime (folder name of each ``hybrid/{regime}/train.csv``), overall
    (label "all") and per class, with the actual synthetic share beside the configured one; ``short``
    marks a share more than ``report.hybrid_fraction_tolerance`` below the configured one."""
    hy = _g(cfg, "hybrid", default={}) or {}
    tol = float(_g(cfg, "report", "hybrid_fraction_tolerance", default=0.02))
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
    ro = _order(out["regime"], REGIME_NAMES)
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


def _composition_markdown(comp: pd.DataFrame, tol: float) -> str:
    if not len(comp):
        return ""
    rows = [
        [
            r["regime"],
            r["label"],
            r["n_real"],
            r["n_synthetic"],
            _fmt(100 * r["fraction"], 1),
            _fmt(100 * r["configured"], 1),
        ]
        for _, r in comp.iterrows()
    ]
    text = (
        "## Training sets after the filter\n\nReal and synthetic images in each regime's training list "
        "(`results/hybrid/<regime>/train.csv`) and the synthetic share they actually reach.\n\n"
        + md_table(["Regime", "Class", "Real", "Synthetic", "Synthetic (%)", "Configured (%)"], rows)
    )
    for w in composition_warnings(comp, tol):
        log.warning("report: %s", w)
        text += f"\n**Warning:** {w}.\n"
    return text


def _hybrid_sentence(cfg: dict, comp: pd.DataFrame | None) -> str:
    """The methods sentence on the hybrid set: its actual share when the training list was read."""
    hy = cfg.get("hybrid")
    conf = hy.get("synthetic_fraction") if isinstance(hy, dict) else None
    sel = comp[comp["regime"] == "hybrid"] if comp is not None and len(comp) else pd.DataFrame()
    if not len(sel):
        return _opt(
            "Hybrid training sets were configured to hold {:.0f} % synthetic images.",
            None if conf is None else 100 * float(conf),
        )
    tot = sel[sel["label"] == "all"].iloc[0]
    per = ", ".join(
        f"{r['label']} {100 * r['fraction']:.1f} % ({r['n_synthetic']} of {r['n_synthetic'] + r['n_real']})"
        for _, r in sel[sel["label"] != "all"].iterrows()
        if math.isfinite(r["fraction"])
    )
    return (
        f"The hybrid training set held {100 * tot['fraction']:.1f} % synthetic images "
        f"({tot['n_synthetic']} synthetic and {tot['n_real']} real"
        + (f"; per class {per}" if per else "")
        + ")"
        + _opt(", against {:.0f} % configured", None if conf is None else 100 * float(conf))
        + "."
    )


# ---------------------------------------------------------------- build


def build(
    eval_jsons: list[str],
    out_dir,
    paper_table: dict,
    histories: dict[str, str] | None = None,
    extras: dict | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    classes: list[str] | None = None,
    baseline: str = "real",
    treatment: str = "hybrid",
) -> dict:
    """Write Table IV, the paired test, figures and ``summary.md`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = extras or {}
    cfg = extras.get("config") or {}
    classes = classes or cfg.get("classes") or ["benign", "malignant"]
    if n_boot is None:
        n_boot = int(_g(cfg, "evaluate", "bootstrap", default=1000))
    evals = load_evals(eval_jsons)
    written: dict[str, Path] = {}

    t4 = table4(evals, paper_table, n_boot=n_boot, ci=ci, seed=seed)
    io.write_csv(out_dir / "table4.csv", t4)
    written["table4_csv"] = out_dir / "table4.csv"
    t4_md = table4_markdown(t4, ci)
    io.write_text(out_dir / "table4.md", t4_md)
    written["table4_md"] = out_dir / "table4.md"

    pr = paired(evals, n_boot=n_boot, ci=ci, seed=seed, baseline=baseline, treatment=treatment)
    io.write_csv(out_dir / "paired.csv", pr)
    written["paired_csv"] = out_dir / "paired.csv"

    written["accuracy_png"] = fig_accuracy(t4, out_dir / "accuracy.png")
    paper_val = _g(cfg, "report", "paper_val_accuracy")
    written["curves_png"] = fig_curves(histories, out_dir / "curves.png", paper_val)
    written["confusion_png"] = fig_confusion(evals, classes, out_dir / "confusion.png")
    written["roc_png"] = fig_roc(evals, out_dir / "roc.png")

    tol = float(_g(cfg, "report", "hybrid_fraction_tolerance", default=0.02))
    comp = hybrid_composition(extras.get("hybrid_sets") or [], cfg, classes)
    sections = [_run_section(evals, classes)]
    methods = methods_paragraph(cfg, comp)
    if methods:
        sections.append("## Methods\n\n" + methods + "\n")
    sections.append("## Table IV: accuracy, ours vs Derm-T2IM\n\n" + t4_md + "\n![accuracy](accuracy.png)\n")
    sections.append(
        f"## {treatment.capitalize()} vs {baseline}: paired bootstrap\n\n"
        f"Differences ({treatment} − {baseline}; accuracy and balanced accuracy in percentage points, "
        f"AUROC in [0, 1]) on the same test images, {n_boot} paired resamples, "
        f"{int(round(100 * ci))} % CI, two-sided bootstrap p; p (Holm) = Holm-adjusted over the "
        "model × test set × metric comparisons of the same seed row (or of the seed mean).\n\n"
        + _paired_markdown(pr, baseline, treatment)
    )
    more = t4[t4["n_seeds"] > 0] if len(t4) else t4
    if len(more):
        rows = [
            [
                _nice(r["model"], MODEL_NAMES),
                r["regime"],
                _nice(r["testset"], TESTSET_NAMES),
                fmt_cell(r["balanced_accuracy_mean"], r["balanced_accuracy_sd"]),
                fmt_cell(r["auroc_mean"], r["auroc_sd"], digits=3),
                fmt_cell(r["sensitivity_mean"], r["sensitivity_sd"]),
                fmt_cell(r["specificity_mean"], r["specificity_sd"]),
            ]
            for _, r in more.iterrows()
        ]
        sections.append(
            f"## Other metrics ({seeds_phrase(more['n_seeds'])})\n\n"
            + md_table(
                [
                    "Model",
                    "Regime",
                    "Test set",
                    "Balanced acc. (%)",
                    "AUROC",
                    "Sensitivity (%)",
                    "Specificity (%)",
                ],
                rows,
            )
        )
    va = val_accuracy_table(histories, paper_val)
    if len(va):
        sections.append(_val_accuracy_markdown(va))
    if len(comp):
        sections.append(_composition_markdown(comp, tol))
    points = extras.get("sweep") or []
    if points:
        sw = sweep_table(t4, points)
        io.write_csv(out_dir / "sweep.csv", sw)
        written["sweep_csv"] = out_dir / "sweep.csv"
        written["sweep_png"] = fig_sweep(sw, out_dir / "sweep.png")
        sections.append(
            "## Ratio sweep\n\nAccuracy against the share of synthetic images in the training set, the real "
            f"images held fixed (0 % = the real-only baseline); {seeds_phrase(sw['n_seeds'])} [bootstrap CI "
            "of the seed mean over test images].\n\n" + _sweep_markdown(sw) + "\n![sweep](sweep.png)\n"
        )
    if extras.get("realism"):
        rl = load_realism(extras["realism"])
        io.write_csv(out_dir / "realism.csv", rl)
        written["realism_csv"] = out_dir / "realism.csv"
        sections.append(
            "## Realism check\n\nAs in the paper: each classifier trained on real images only labels the "
            "kept synthetic images (label = the class they were generated for). High accuracy means the "
            "generator draws the class features that the real images taught; "
            f"{seeds_phrase(rl[rl['group'] == ''].groupby('model').size())} [CI of the first seed].\n\n"
            + _realism_markdown(rl)
        )
    sections.append(
        "## Figures\n\n- [Accuracy vs paper](accuracy.png)\n- [Validation curves](curves.png)\n"
        "- [Confusion matrices](confusion.png)\n- [ROC curves](roc.png)\n"
        + ("- [Ratio sweep](sweep.png)\n" if points else "")
    )

    if extras.get("samples") and Path(extras["samples"]).exists():
        sheet = samples_sheet(extras["samples"], out_dir / "samples.png")
        if sheet:
            written["samples_png"] = sheet
        sections.append(
            _section_samples(extras["samples"]) + ("\n![samples](samples.png)\n" if sheet else "")
        )
    if extras.get("rejected") and Path(extras["rejected"]).exists():
        sheet = rejected_sheet(extras["rejected"], out_dir / "rejected.png")
        if sheet:
            written["rejected_png"] = sheet
        sections.append(
            _section_rejected(extras["rejected"]) + ("\n![rejected](rejected.png)\n" if sheet else "")
        )
    if extras.get("dullrazor") and Path(extras["dullrazor"]).exists():
        sections.append(_section_dullrazor(extras["dullrazor"]))
    if extras.get("leakage"):
        sections.append(_section_leakage(extras["leakage"]))
    if extras.get("versions"):
        sections.append(_section_versions(extras["versions"]))

    text = "# Derm-T2IM reproduction: results\n\n" + banner(cfg) + "\n".join(sections)
    io.write_text(out_dir / "summary.md", text)
    written["summary_md"] = out_dir / "summary.md"
    log.info("report: wrote %s", ", ".join(str(p) for p in written.values()))
    return {k: str(v) for k, v in written.items()}


def _paper_finetune_cells(paper: dict | None) -> dict[str, str]:
    """The paper's fine-tune figures in the units of our rows (wall_s in seconds, hours beside)."""
    p = paper or {}
    cells = {}
    if p.get("final_loss") is not None:
        cells["final_loss"] = f"{float(p['final_loss']):g}"
    if p.get("wall_h") is not None:
        cells["wall_s"] = f"{3600 * float(p['wall_h']):.0f} ({float(p['wall_h']):g} h)"
    if p.get("gpu_mem_gb") is not None:
        cells["peak_mem_gb"] = f"{float(p['gpu_mem_gb']):g} (GPU)"
    return cells


def _section_finetune(path: str, paper: dict | None = None) -> str:
    """Our fine-tune figures, one column per LoRA, and a Derm-T2IM column where ``paper``
    (report.paper_finetune) gives the same quantity."""
    s = json.loads(Path(path).read_text())
    runs = s.get("runs") or {"value": s}  # lora_mode per_class: one column per class's LoRA
    rows = [
        [k, *(r.get(k) for r in runs.values())]
        for k in (
            "pretrained",
            "n_images",
            "steps",
            "epochs",
            "optimizer",
            "mixed_precision",
            "final_loss",
            "it_s",
            "wall_s",
            "peak_mem_gb",
            "device",
            "resumed_from",
        )
    ]
    # shown where some run has them: GPU memory, the compiled step and how it went (on CPU the
    # memory with validation is the process's one RSS peak, peak_mem_gb again)
    if all(r.get("peak_mem_with_validation_gb") == r.get("peak_mem_gb") for r in runs.values()):
        runs = {k: {**r, "peak_mem_with_validation_gb": None} for k, r in runs.items()}
    optional = (
        "peak_mem_with_validation_gb",
        "peak_mem_reserved_gb",
        "peak_mem_reserved_with_validation_gb",
        "compile_mode",
        "cuda_graphs",
        "compile_error",
    )
    rows += [
        [k, *(r.get(k) for r in runs.values())]
        for k in optional
        if any(r.get(k) is not None for r in runs.values())
    ]
    headers = ["", *(k if k == "value" else f"LoRA {k}" for k in runs)]
    pc = _paper_finetune_cells(paper)
    if pc:
        headers.append("Derm-T2IM")
        rows = [[*r, pc.get(r[0], "")] for r in rows]
    eager = [k for k, r in runs.items() if r.get("compile_error") and not r.get("compile")]
    no_graphs = [k for k, r in runs.items() if r.get("compile_error") and r.get("compile")]
    warning = "".join(
        f"\n**torch.compile failed** ({', '.join(names)}): {what} (the row compile_error says why).\n"
        for names, what in (
            (eager, "those LoRAs trained eager, about 2.4x slower"),
            (no_graphs, "recording CUDA graphs failed, those LoRAs trained compiled without them"),
        )
        if names
    )
    return (
        "## Fine-tuning (DreamBooth-LoRA)\n\n"
        + md_table(headers, rows)
        + (
            "\nDerm-T2IM: the paper's reported final loss, wall time and GPU memory (ours: peak memory "
            "allocated on the GPU, or the process's RSS peak on CPU).\n"
            if pc
            else ""
        )
        + warning
        + "\nLoss curve: `"
        + str(Path(path).with_name("loss.png"))
        + "` (the paper's Fig. 3).\n"
    )


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "dermsynth",
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "snakemake",
        "numpy",
        "pandas",
        "scikit-image",
        "matplotlib",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    import platform

    out["python"] = platform.python_version()
    return out


def build_from_workflow(
    eval_jsons: list[str],
    history_paths: list[str],
    out_dir,
    paper_table: dict,
    samples: str,
    leakage: str,
    finetune_summary: str,
    config: dict,
    sections: list[str] = (),
    realism: list[str] = (),
    sweep: list | None = None,
    benchmarks_dir: str | None = None,
    config_snapshot: str | None = None,
    wall_times_csv: str | None = None,
    hybrid_sets: list[str] = (),
) -> dict:
    """The report stage: Table IV, figures and summary.md from the outputs of every earlier stage.

    ``hybrid_sets`` are the regimes' training lists (results/hybrid/{regime}/train.csv), read for the
    synthetic share each reached after the filter. ``sweep`` holds (synthetic fraction, regime) pairs
    (dermsynth.regimes.sweep_points); provenance goes to ``config_snapshot`` (the validated config as
    YAML) and ``wall_times_csv`` (every benchmark TSV under ``benchmarks_dir``, read at run time: see
    rules/report.smk for why).
    """
    # classifiers/{model}/{regime}/{seed}/history.csv -> "model/regime/seed"
    histories = {"/".join(Path(p).parts[-4:-1]): p for p in history_paths}
    written = build(
        eval_jsons,
        out_dir,
        paper_table,
        histories=histories,
        extras={
            "config": config,
            "samples": samples,
            # rejected images and hair removal are reported, in more detail, by the filter and
            # data stages' own fragments (``sections``)
            "leakage": leakage,
            "versions": _versions(),
            "realism": list(realism),
            "sweep": [tuple(x) for x in sweep or []],
            "hybrid_sets": list(hybrid_sets),
        },
        n_boot=config["evaluate"]["bootstrap"],
        ci=config["evaluate"]["ci"],
        classes=config["classes"],
    )
    summary = Path(written["summary_md"])
    # fragments written by other stages (hair contact sheets, audits, quality...), in registration order
    fragments = [Path(p).read_text() for p in sections]
    prov = _section_provenance(config, benchmarks_dir, config_snapshot, wall_times_csv, written)
    io.write_text(
        summary,
        "\n".join(
            [
                summary.read_text(),
                _section_finetune(finetune_summary, _g(config, "report", "paper_finetune")),
                *fragments,
                prov,
            ]
        ),
    )
    return written


def _section_provenance(config, benchmarks_dir, config_snapshot, wall_times_csv, written: dict) -> str:
    import yaml

    out = "## Provenance\n\n"
    if config_snapshot:
        with io.atomic_path(config_snapshot) as tmp:
            Path(tmp).write_text(yaml.safe_dump(_plain(config), sort_keys=False))
        written["config_yaml"] = str(config_snapshot)
        out += f"Config as run (validated, defaults filled): `{config_snapshot}`.\n\n"
    if benchmarks_dir is not None:
        wt = wall_times(benchmarks_dir)
        if wall_times_csv:
            io.write_csv(wall_times_csv, wt)
            written["wall_times_csv"] = str(wall_times_csv)
        out += (
            f"Wall time per rule from Snakemake's benchmark files (`{benchmarks_dir}`; per job in "
            f"`{wall_times_csv or '-'}`; versions above):\n\n" + _wall_times_markdown(wt)
        )
    return out


def _plain(obj):
    """Snakemake's config holds its own dict/list subclasses: plain ones for yaml.safe_dump."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
