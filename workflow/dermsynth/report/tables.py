"""Markdown tables of the report: one cell format (mean ± sd [CI]), one table writer, and the
tables of Table IV, the paired test, the sweep, the realism check and the wall times."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from .. import metrics
from .names import MODEL_NAMES, REGIME_NAMES, TESTSET_NAMES, nice, order
from .stats import DEGENERATE_AUROC, num


def fmt(v, digits: int = 2) -> str:
    """A number with ``digits`` decimals; '—' for a missing or non-finite one."""
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


def md_table(headers: list[str], rows: Iterable[Iterable]) -> str:
    """A Markdown table; a '|' inside a cell is escaped."""
    esc = [str(h).replace("|", "\\|") for h in headers]
    lines = ["| " + " | ".join(esc) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines) + "\n"


def counts_table(df: pd.DataFrame, rows: str, cols: str) -> str:
    """Row counts of ``rows`` × ``cols`` with totals."""
    ct = pd.crosstab(df[rows].fillna("-"), df[cols].fillna("-"), margins=True, margins_name="total")
    return md_table(
        [f"{rows} \\ {cols}"] + [str(c) for c in ct.columns],
        [[str(i)] + [str(v) for v in r] for i, r in zip(ct.index, ct.to_numpy(), strict=True)],
    )


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


def table4_markdown(t4: pd.DataFrame, ci: float = 0.95) -> str:
    """Table IV: our accuracy per model × regime beside the paper's, one column pair per test set."""
    if not len(t4):
        return "_no evaluations_\n"
    testsets = order(t4["testset"], TESTSET_NAMES)
    headers = ["Model", "Training data"]
    for ts in testsets:
        headers += [f"{nice(ts, TESTSET_NAMES)} (ours)", f"{nice(ts, TESTSET_NAMES)} (paper)"]
    rows = []
    idx = t4.set_index(["model", "regime", "testset"])
    for model, regime in dict.fromkeys(zip(t4["model"], t4["regime"], strict=True)):
        r = [nice(model, MODEL_NAMES), nice(regime, REGIME_NAMES)]
        for ts in testsets:
            if (model, regime, ts) in idx.index:
                c = idx.loc[(model, regime, ts)]
                ours = fmt_cell(
                    num(c.get("accuracy_mean")),
                    num(c.get("accuracy_sd")),
                    num(c.get("accuracy_lo")),
                    num(c.get("accuracy_hi")),
                )
                k, n = num(c.get("n_degenerate")), num(c.get("n_seeds"))
                if k > 0:
                    ours += f" ⚠ degenerate ({int(k)}/{int(n)} seeds)"
                r += [ours, fmt(num(c.get("paper_accuracy")))]
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


def paired_markdown(pr: pd.DataFrame, baseline: str, treatment: str) -> str:
    """The paired test's rows: each regime's value, the difference with its CI, p and Holm's p."""
    if not len(pr):
        return "_no pairs of real and hybrid models on the same test set_\n"
    rows = []
    for _, r in pr.iterrows():
        digits = 3 if r["metric"] == "auroc" else 2
        rows.append(
            [
                nice(r["model"], MODEL_NAMES),
                nice(r["testset"], TESTSET_NAMES),
                r["seed"],
                r["metric"],
                fmt(r[baseline], digits),
                fmt(r[treatment], digits),
                f"{fmt(r['diff'], digits)} [{fmt(r['lo'], digits)}, {fmt(r['hi'], digits)}]",
                fmt(r["p"], 3),
                fmt(num(r.get("p_holm")), 3),
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


def sweep_markdown(sw: pd.DataFrame) -> str:
    """Accuracy, balanced accuracy and AUROC per model × test set × synthetic fraction."""
    rows = [
        [
            nice(r["model"], MODEL_NAMES),
            nice(r["testset"], TESTSET_NAMES),
            f"{100 * r['fraction']:.0f} %",
            r["regime"],
            int(r["n_seeds"]),
            fmt_cell(r["accuracy_mean"], r["accuracy_sd"], r["accuracy_lo"], r["accuracy_hi"]),
            fmt_cell(
                r["balanced_accuracy_mean"],
                r["balanced_accuracy_sd"],
                r["balanced_accuracy_lo"],
                r["balanced_accuracy_hi"],
            ),
            fmt_cell(r["auroc_mean"], float("nan"), r["auroc_lo"], r["auroc_hi"], digits=3),
        ]
        for _, r in sw.iterrows()
    ]
    headers = ["Model", "Test set", "Synthetic", "Regime", "Seeds", "Accuracy (%) [CI]"]
    return md_table(headers + ["Balanced accuracy (%) [CI]", "AUROC [CI]"], rows)


def realism_markdown(rl: pd.DataFrame) -> str:
    """Per model: accuracy on all kept synthetic images and per sampler, mean ± sd over seeds [CI of
    the first seed], plus malignant sensitivity and benign specificity on the whole set."""
    rows = []
    for model in order(rl["model"], MODEL_NAMES):
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
                    nice(model, MODEL_NAMES),
                    group or "all samplers",
                    int(first["n"]),
                    len(gg),
                    fmt_cell(m, sd, first["lo"], first["hi"]),
                    fmt(sens) if group == "" else "",
                    fmt(spec) if group == "" else "",
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


def wall_times_markdown(wt: pd.DataFrame) -> str:
    """Jobs and seconds per rule, the slowest rule first, and the total."""
    if not len(wt):
        return "_no benchmark files found_\n"
    rows = []
    for rule, g in wt.groupby("rule", sort=False):
        rows.append(
            [
                rule,
                len(g),
                fmt(g["s"].sum(), 1),
                fmt(g["s"].mean(), 1),
                fmt(g["s"].max(), 1),
                fmt(g["max_rss_mb"].max(), 0),
            ]
        )
    rows.sort(key=lambda r: -float(r[2]))
    rows.append(["total", len(wt), fmt(wt["s"].sum(), 1), "", "", ""])
    return md_table(["Rule", "Jobs", "Total (s)", "Mean (s)", "Max (s)", "Max RSS (MB)"], rows)


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
            f"  - {nice(r['model'], MODEL_NAMES)} · {r['regime']} · seed {r['seed']} on "
            f"{nice(r['testset'], TESTSET_NAMES)}: {r['degenerate']}"
        )
    return "\n".join(lines) + "\n"


def other_metrics_markdown(t4: pd.DataFrame) -> str:
    """Balanced accuracy, AUROC, sensitivity and specificity of the Table IV rows we ran."""
    rows = [
        [
            nice(r["model"], MODEL_NAMES),
            r["regime"],
            nice(r["testset"], TESTSET_NAMES),
            fmt_cell(r["balanced_accuracy_mean"], r["balanced_accuracy_sd"]),
            fmt_cell(r["auroc_mean"], r["auroc_sd"], digits=3),
            fmt_cell(r["sensitivity_mean"], r["sensitivity_sd"]),
            fmt_cell(r["specificity_mean"], r["specificity_sd"]),
        ]
        for _, r in t4.iterrows()
    ]
    return md_table(
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


def val_accuracy_markdown(va: pd.DataFrame) -> str:
    """Validation accuracy at the kept epoch beside the paper's Fig. 10, per model × regime."""
    rows = [
        [
            nice(r["model"], MODEL_NAMES),
            nice(r["regime"], REGIME_NAMES),
            int(r["n_seeds"]),
            r["epochs"] or "—",
            fmt_cell(r["val_accuracy_mean"], r["val_accuracy_sd"]),
            fmt(r["paper_val_accuracy"]),
            fmt(r["diff_vs_paper"]),
        ]
        for _, r in va.iterrows()
    ]
    return md_table(
        ["Model", "Training data", "Seeds", "Kept epoch", "Ours (%)", "Paper (%)", "Ours − paper"], rows
    )


def composition_markdown(comp: pd.DataFrame) -> str:
    """Real and synthetic images per regime × class, with the synthetic share reached and configured."""
    rows = [
        [
            r["regime"],
            r["label"],
            r["n_real"],
            r["n_synthetic"],
            fmt(100 * r["fraction"], 1),
            fmt(100 * r["configured"], 1),
        ]
        for _, r in comp.iterrows()
    ]
    return md_table(["Regime", "Class", "Real", "Synthetic", "Synthetic (%)", "Configured (%)"], rows)


def clinical_markdown(ct: pd.DataFrame) -> str:
    """Operating points and calibration per model x regime x test set, as percentages and scores."""
    ops = sorted({c.split("@spec")[1] for c in ct.columns if c.startswith("sens@spec")}, key=float)
    headers = ["Model", "Training data", "Test set"]
    headers += [f"sens. @ {t} % spec. (spec. reached)" for t in ops] + ["ECE", "Brier", "seeds"]
    rows = []
    for r in ct.to_dict("records"):
        cells = [
            nice(r["model"], MODEL_NAMES),
            nice(r["regime"], REGIME_NAMES),
            nice(r["testset"], TESTSET_NAMES),
        ]
        for t in ops:
            sens, spec = r[f"sens@spec{t}"], r[f"spec@spec{t}"]
            cells.append("–" if sens != sens else f"{100 * sens:.1f} ({100 * spec:.1f})")
        cells += [fmt(r["ece"], 3), fmt(r["brier"], 3), str(int(r["n_seeds"]))]
        rows.append(cells)
    return md_table(headers, rows)
