"""The report's figures: Table IV beside the paper, validation curves (the paper's Fig. 10),
confusion matrices, ROC curves, the ratio sweep, and contact sheets of kept and rejected images.

Every figure goes through ``pyplot()`` (the headless backend, set once) and ``savefig()`` (written
atomically, then closed).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io, metrics
from ..imaging import contact_sheet
from .names import METRIC_NAMES, MODEL_NAMES, REGIME_NAMES, TESTSET_NAMES, nice, order
from .stats import SWEEP_METRICS, load_predictions, num, scale

REGIME_COLORS = {"real": "#4c72b0", "hybrid": "#dd8452", "synthetic": "#55a868"}


def pyplot():
    """matplotlib.pyplot on the Agg backend: jobs run without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savefig(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (a temp name renamed into place), then closed."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)
    return path


def fig_accuracy(t4: pd.DataFrame, out: Path) -> Path:
    plt = pyplot()
    ours = t4[t4["n_seeds"] > 0] if len(t4) else t4
    testsets = order(t4["testset"], TESTSET_NAMES) if len(t4) else []
    models = order(t4["model"], MODEL_NAMES) if len(t4) else []
    regimes = order(t4["regime"], REGIME_NAMES) if len(t4) else []
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
                        label=f"{nice(reg, REGIME_NAMES)} (ours)" if i == 0 else None,
                    )
                if len(sel) and math.isfinite(num(sel.iloc[0].get("paper_accuracy"))):
                    ax.bar(
                        x + width,
                        sel.iloc[0]["paper_accuracy"],
                        width,
                        color=color,
                        alpha=0.35,
                        hatch="//",
                        edgecolor=color,
                        label=f"{nice(reg, REGIME_NAMES)} (paper)" if i == 0 else None,
                    )
        ax.set_xticks(range(len(models)), [nice(m, MODEL_NAMES) for m in models])
        ax.set_title(nice(ts, TESTSET_NAMES))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    if not len(ours):
        axes[0][0].text(0.5, 0.5, "no evaluations", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle("Test accuracy: ours (error bars: bootstrap CI) vs Derm-T2IM Table IV")
    return savefig(fig, out)


def fig_curves(histories: dict[str, str] | None, out: Path, paper_val: dict | None = None) -> Path:
    """Loss, validation accuracy and AUROC per epoch; the paper's Fig. 10 validation accuracy
    (``paper_val``, model -> regime -> %) as dashed lines on the accuracy panels."""
    plt = pyplot()
    runs = []
    for key, path in (histories or {}).items():
        parts = str(key).split("/")
        model, regime, seed = (parts + ["?", "?", "?"])[:3]
        if path and Path(path).exists():
            runs.append((model, regime, seed, pd.read_csv(path)))
    models = order([r[0] for r in runs], MODEL_NAMES)
    fig, axes = plt.subplots(
        max(1, len(models)), 3, figsize=(13, 3.2 * max(1, len(models))), squeeze=False, layout="constrained"
    )
    styles = ["-", "--", ":", "-."]
    for i, model in enumerate(models):
        seeds = sorted({r[2] for r in runs if r[0] == model})
        for _, regime, seed, h in (r for r in runs if r[0] == model):
            color = REGIME_COLORS.get(regime, "C2")
            ls = styles[seeds.index(seed) % len(styles)]
            lab = f"{nice(regime, REGIME_NAMES)} seed {seed}"
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
                label=f"{nice(regime, REGIME_NAMES)}: paper Fig. 10",
            )
        for ax, yl in zip(axes[i], ("loss (faint: train)", "val accuracy (%)", "val AUROC"), strict=True):
            ax.set_xlabel("epoch")
            ax.set_ylabel(yl)
            ax.set_title(nice(model, MODEL_NAMES))
            ax.grid(alpha=0.3)
        if axes[i][1].get_legend_handles_labels()[0]:
            axes[i][1].legend(fontsize=7)
    if not runs:
        axes[0][0].text(0.5, 0.5, "no training histories", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle("Validation curves during fine-tuning (cf. Derm-T2IM Fig. 10)")
    return savefig(fig, out)


def fig_confusion(evals: pd.DataFrame, classes: list[str], out: Path) -> Path:
    plt = pyplot()
    keys = list(dict.fromkeys(zip(evals["model"], evals["regime"], strict=True))) if len(evals) else []
    testsets = order(evals["testset"], TESTSET_NAMES) if len(evals) else []
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
            ax.set_title(f"{nice(model, MODEL_NAMES)} · {regime} · {nice(ts, TESTSET_NAMES)}", fontsize=8)
    if not keys:
        axes[0][0].text(0.5, 0.5, "no evaluations", ha="center")
    fig.suptitle("Confusion matrices (all seeds summed; rows normalised)")
    return savefig(fig, out)


def model_by_testset_panels(df: pd.DataFrame):
    """(figure, axes, models, test sets): one panel per model (rows) x test set (columns) of ``df``."""
    plt = pyplot()
    models = order(df["model"], MODEL_NAMES) if len(df) else []
    testsets = order(df["testset"], TESTSET_NAMES) if len(df) else []
    fig, axes = plt.subplots(
        max(1, len(models)),
        max(1, len(testsets)),
        figsize=(3.8 * max(1, len(testsets)), 3.6 * max(1, len(models))),
        squeeze=False,
        layout="constrained",
    )
    return fig, axes, models, testsets


def fig_roc(evals: pd.DataFrame, out: Path) -> Path:
    fig, axes, models, testsets = model_by_testset_panels(evals)
    for i, model in enumerate(models):
        for j, ts in enumerate(testsets):
            ax = axes[i][j]
            g = evals[(evals["model"] == model) & (evals["testset"] == ts)].sort_values("seed")
            for regime in order(g["regime"], REGIME_NAMES):
                row = g[g["regime"] == regime].iloc[0]  # first seed
                pred = load_predictions(row["predictions_path"])
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
            ax.set_title(f"{nice(model, MODEL_NAMES)} · {nice(ts, TESTSET_NAMES)}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
            else:
                ax.text(0.5, 0.5, "one class only: no ROC", ha="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle("ROC curves (malignant = positive)")
    return savefig(fig, out)


def fig_sweep(sw: pd.DataFrame, out: Path) -> Path:
    """Dose-response: accuracy, balanced accuracy and AUROC (rows) vs synthetic fraction, one panel
    per test set (columns), one line per model, CI error bars; 0 % is the real-only baseline."""
    plt = pyplot()
    testsets = order(sw["testset"], TESTSET_NAMES) if len(sw) else []
    ncol = max(1, len(testsets))
    fig, axes = plt.subplots(
        len(SWEEP_METRICS),
        ncol,
        figsize=(5 * ncol, 3.2 * len(SWEEP_METRICS)),
        squeeze=False,
        layout="constrained",
    )
    for row, metric in zip(axes, SWEEP_METRICS, strict=True):
        unit = " (%)" if scale(metric) == 100.0 else ""
        for ax, ts in zip(row, testsets, strict=False):
            for i, model in enumerate(order(sw["model"], MODEL_NAMES)):
                g = sw[(sw["model"] == model) & (sw["testset"] == ts)]
                x, v = 100 * g["fraction"].to_numpy(float), g[f"{metric}_mean"].to_numpy(float)
                lo, hi = g[f"{metric}_lo"].to_numpy(float), g[f"{metric}_hi"].to_numpy(float)
                err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
                err = np.where(np.isfinite(err), err, 0.0)
                ax.errorbar(
                    x, v, yerr=err, marker="o", capsize=3, color=f"C{i}", label=nice(model, MODEL_NAMES)
                )
            ax.set_xlabel("synthetic share of the training set (%)")
            ax.set_ylabel(f"test {nice(metric, METRIC_NAMES)}{unit}")
            ax.set_title(nice(ts, TESTSET_NAMES))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    if not len(sw):
        axes[0][0].text(0.5, 0.5, "no sweep evaluations", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle("Ratio sweep: metrics vs synthetic fraction at a fixed real count (mean over seeds, CI)")
    return savefig(fig, out)


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


def fig_reliability(bins: pd.DataFrame, out: Path) -> Path:
    """Reliability diagrams: observed frequency of malignant vs mean P(malignant) per bin, one panel
    per model x test set, one line per regime (seeds pooled); the diagonal is perfect calibration."""
    fig, axes, models, testsets = model_by_testset_panels(bins)
    for i, model in enumerate(models):
        for j, ts in enumerate(testsets):
            ax = axes[i][j]
            g = bins[(bins["model"] == model) & (bins["testset"] == ts)]
            for regime in order(g["regime"], REGIME_NAMES):
                r = g[g["regime"] == regime].sort_values("bin")
                ax.plot(
                    r["mean_p"],
                    r["frac_pos"],
                    "o-",
                    ms=3,
                    color=REGIME_COLORS.get(regime, "C2"),
                    label=regime,
                )
            ax.plot([0, 1], [0, 1], ":", color="gray")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("mean P(malignant)")
            ax.set_ylabel("observed malignant")
            ax.set_title(f"{nice(model, MODEL_NAMES)} · {nice(ts, TESTSET_NAMES)}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Reliability (calibration) diagrams")
    return savefig(fig, out)
