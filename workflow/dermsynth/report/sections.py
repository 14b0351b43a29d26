"""The sections of summary.md, one writer per stage or result: ``section_<name>(...)`` returns the
Markdown of that section, starting with its ``## `` heading. They read what they show and write nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .. import io, metrics
from ..config import TINY_PREFIX
from .methods import methods_paragraph
from .names import MODEL_NAMES, REGIME_NAMES, TESTSET_NAMES, nice, order
from .stats import composition_warnings
from .tables import (
    clinical_markdown,
    composition_markdown,
    counts_table,
    degenerate_runs_markdown,
    fmt,
    md_table,
    other_metrics_markdown,
    paired_markdown,
    realism_markdown,
    seeds_phrase,
    sweep_markdown,
    val_accuracy_markdown,
    wall_times_markdown,
)

log = logging.getLogger("dermsynth.report")


def not_comparable_reasons(cfg: dict) -> list[str]:
    """What in the validated config makes the numbers incomparable to the paper's: tiny random-weight
    models, tiny quality features, a tiny SAM that runs, generated stand-in images."""
    why = [
        f"models.{k} = {v} (tiny, random weights)"
        for k, v in cfg["models"].items()
        if str(v).startswith(TINY_PREFIX)
    ]
    if cfg["quality"]["features"] == "tiny":
        why.append(
            "quality.features = tiny (a fixed random conv net: FID/KID are not on the Inception scale)"
        )
    sam = cfg["segment"]["sam_model"]
    if sam.startswith(TINY_PREFIX) and "sam" in cfg["segment"]["methods"]:
        why.append(f"segment.sam_model = {sam} (tiny, random weights)")
    for name, spec in cfg["datasets"].items():
        if spec["source"] == "demo":
            why.append(f"datasets.{name}.source = demo (generated dermoscopy-like images)")
    return why


def banner(cfg: dict) -> str:
    """The warning above the summary of a run whose numbers cannot be set beside the paper's."""
    why = not_comparable_reasons(cfg)
    if not why:
        return ""
    return (
        "> **Not comparable to the paper.** This run uses tiny random-weight models or stand-in data, so "
        # the blank quoted line: a list must follow a paragraph after one (Python-Markdown, summary.html)
        "its numbers test the pipeline, not the method:\n>\n" + "".join(f"> - {w}\n" for w in why) + "\n"
    )


def section_run(evals: pd.DataFrame, classes: list[str]) -> str:
    """What was run: models, regimes, seeds, test sets and their sizes, degenerate classifiers."""
    if not len(evals):
        return "## What was run\n\nNo evaluations.\n"
    lines = ["## What was run\n"]
    lines.append(f"- Models: {', '.join(nice(m, MODEL_NAMES) for m in order(evals['model'], MODEL_NAMES))}")
    lines.append(f"- Training regimes: {', '.join(order(evals['regime'], REGIME_NAMES))}")
    seeds = sorted(evals["seed"].unique())
    one = " (one seed: each value is that seed's alone, no sd)" if len(seeds) == 1 else ""
    lines.append(f"- Seeds: {', '.join(str(s) for s in seeds)}{one}")
    for ts in order(evals["testset"], TESTSET_NAMES):
        row = evals[evals["testset"] == ts].iloc[0]
        per = row["n_per_class"] or {}
        per_s = ", ".join(f"{per.get(c, 0)} {c}" for c in classes) if per else ""
        lines.append(f"- Test set {nice(ts, TESTSET_NAMES)}: {row['n']} images ({per_s})")
    lines.append(f"- Evaluations: {len(evals)}")
    return "\n".join(lines) + "\n" + degenerate_runs_markdown(evals)


def section_methods(cfg: dict, composition: pd.DataFrame | None) -> str:
    return "## Methods\n\n" + methods_paragraph(cfg, composition) + "\n"


def section_table4(t4_md: str) -> str:
    return "## Table IV: accuracy, ours vs Derm-T2IM\n\n" + t4_md + "\n![accuracy](accuracy.png)\n"


def section_paired(pr: pd.DataFrame, baseline: str, treatment: str, n_boot: int, ci: float) -> str:
    return (
        f"## {treatment.capitalize()} vs {baseline}: paired bootstrap\n\n"
        f"Differences ({treatment} − {baseline}; accuracy and balanced accuracy in percentage points, "
        f"AUROC in [0, 1]) on the same test images, {n_boot} paired resamples, "
        f"{int(round(100 * ci))} % CI, two-sided bootstrap p; p (Holm) = Holm-adjusted over the "
        "model × test set × metric comparisons of the same seed row (or of the seed mean).\n\n"
        + paired_markdown(pr, baseline, treatment)
    )


def section_other_metrics(ours: pd.DataFrame) -> str:
    """``ours``: the Table IV rows with at least one run."""
    return f"## Other metrics ({seeds_phrase(ours['n_seeds'])})\n\n" + other_metrics_markdown(ours)


def section_val_accuracy(va: pd.DataFrame) -> str:
    if not len(va):
        return ""
    return (
        "## Validation accuracy, ours vs Derm-T2IM Fig. 10\n\n"
        "Validation accuracy (%) at the epoch whose weights were kept (lowest validation loss), "
        f"{seeds_phrase(va['n_seeds'])}; paper = Derm-T2IM Fig. 10.\n\n" + val_accuracy_markdown(va)
    )


def section_composition(comp: pd.DataFrame, tol: float) -> str:
    """The training sets after the filter, with a warning (logged too) for each share fallen short."""
    if not len(comp):
        return ""
    text = (
        "## Training sets after the filter\n\nReal and synthetic images in each regime's training list "
        "(`results/hybrid/<regime>/train.csv`) and the synthetic share they actually reach.\n\n"
        + composition_markdown(comp)
    )
    for w in composition_warnings(comp, tol):
        log.warning("report: %s", w)
        text += f"\n**Warning:** {w}.\n"
    return text


def section_sweep(sw: pd.DataFrame) -> str:
    return (
        "## Ratio sweep\n\nAccuracy, balanced accuracy and AUROC against the share of synthetic images in "
        "the training set (the dose-response), the real "
        f"images held fixed (0 % = the real-only baseline); {seeds_phrase(sw['n_seeds'])} [bootstrap CI "
        "of the seed mean over test images].\n\n" + sweep_markdown(sw) + "\n![sweep](sweep.png)\n"
    )


def section_realism(rl: pd.DataFrame) -> str:
    return (
        "## Realism check\n\nAs in the paper: each classifier trained on real images only labels the "
        "kept synthetic images (label = the class they were generated for). High accuracy means the "
        "generator draws the class features that the real images taught; "
        f"{seeds_phrase(rl[rl['group'] == ''].groupby('model').size())} [CI of the first seed].\n\n"
        + realism_markdown(rl)
    )


def section_figures(sweep: bool) -> str:
    return (
        "## Figures\n\n- [Accuracy vs paper](accuracy.png)\n- [Validation curves](curves.png)\n"
        "- [Confusion matrices](confusion.png)\n- [ROC curves](roc.png)\n"
        "- [Reliability diagrams](reliability.png)\n" + ("- [Ratio sweep](sweep.png)\n" if sweep else "")
    )


def section_samples(path: str, sheet: bool = False) -> str:
    """Kept synthetic images per label × sampler; ``sheet``: samples.png was drawn beside summary.md."""
    df = io.read_csv(path)
    out = f"## Synthetic images kept by the filter\n\n{len(df)} images kept after filtering (`{path}`).\n\n"
    if {"label", "sampler"} <= set(df.columns) and len(df):
        out += counts_table(df, "label", "sampler")
    return out + ("\n![samples](samples.png)\n" if sheet else "")


def section_rejected(path: str, sheet: bool = False) -> str:
    """Rejected synthetic images per reason × sampler; ``sheet``: rejected.png was drawn."""
    df = io.read_csv(path)
    out = f"## Rejected synthetic images\n\n{len(df)} images rejected (`{path}`).\n\n"
    if len(df):
        if "sampler" not in df.columns:
            df["sampler"] = "-"
        out += counts_table(df, "reason", "sampler")
    return out + ("\n![rejected](rejected.png)\n" if sheet else "")


def section_dullrazor(path: str) -> str:
    df = io.read_csv(path)
    out = f"## Hair removal (DullRazor)\n\n{len(df)} images (`{path}`).\n\n"
    if {"psnr_before", "psnr_after"} <= set(df.columns):
        rows = []
        for col in ("psnr_before", "psnr_after") + tuple(c for c in ("ssim_before", "ssim_after") if c in df):
            v = pd.to_numeric(df[col], errors="coerce").dropna()
            m, sd = metrics.mean_sd(v.to_numpy())
            rows.append([col, len(v), fmt(m), fmt(sd)])
        out += "Against the hair-free ground truth (demo images only):\n\n"
        out += md_table(["measure", "n", "mean", "sd"], rows)
    return out


def section_leakage(path: str) -> str:
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
            out += counts_table(df, "kind", "action") + "\n"
        out += _embedding_pairs(df)
        if len(df):
            head = df.head(10).astype(str).to_numpy().tolist()
            out += "First pairs:\n\n" + md_table(list(df.columns), head)
        return out
    return out + "```\n" + p.read_text()[:4000] + "\n```\n"


def _embedding_pairs(df: pd.DataFrame, top: int = 10) -> str:
    """The pairs found by descriptor similarity only (re-photographs under two ids), best first."""
    if "kind" not in df.columns or "similarity" not in df.columns:
        return ""
    emb = df[df["kind"].astype(str) == "embedding"].copy()
    if not len(emb):
        return ""
    emb["similarity"] = pd.to_numeric(emb["similarity"], errors="coerce")
    emb = emb.sort_values("similarity", ascending=False)
    cols = ["dataset_a", "source_id_a", "dataset_b", "source_id_b", "action", "similarity"]
    return (
        f"{len(emb)} pairs matched by embedding similarity only (`split.embedding`): likely the same lesion "
        "photographed again under another lesion id, merged into one split group. Review them; the "
        f"{min(top, len(emb))} closest:\n\n"
        + md_table(cols, emb[cols].head(top).astype(str).to_numpy().tolist())
        + "\n"
    )


def section_versions(versions: dict) -> str:
    return "## Versions\n\n" + md_table(["package", "version"], [[k, v] for k, v in sorted(versions.items())])


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


def section_finetune(path: str, paper: dict | None = None) -> str:
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


def section_provenance(
    config_snapshot: str | None,
    benchmarks_dir: str | None,
    wall_times_csv: str | None,
    wt: pd.DataFrame | None,
) -> str:
    """Where the config as run was saved, and the wall time per rule (``wt``, from ``stats.wall_times``)."""
    out = "## Provenance\n\n"
    if config_snapshot:
        out += f"Config as run (validated, defaults filled): `{config_snapshot}`.\n\n"
    if benchmarks_dir is not None:
        out += (
            f"Wall time per rule from Snakemake's benchmark files (`{benchmarks_dir}`; per job in "
            f"`{wall_times_csv or '-'}`; versions above):\n\n" + wall_times_markdown(wt)
        )
    return out


def section_clinical(ct: pd.DataFrame) -> str:
    """Clinical operating points and calibration: what a dermatologist asks of a screening model."""
    return (
        "## Clinical operating points and calibration\n\n"
        "Sensitivity for malignant lesions at the threshold that reaches each target specificity on the "
        "validation split (the threshold is never chosen on the test set; the specificity it reaches "
        "on the test set is in brackets), and calibration of P(malignant): expected calibration error "
        "(ECE, equal-width bins) and Brier score, lower is better. Means over seeds; "
        "[reliability diagrams](reliability.png).\n\n" + clinical_markdown(ct) + "\n"
    )
