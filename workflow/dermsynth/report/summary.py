"""The report stage: Table IV, the paired test and the figures as files, and ``summary.md``, which
``build`` writes once, every section in place (the fragments of other stages and the provenance too).
"""

from __future__ import annotations

import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import yaml

from .. import io
from ..config import SCHEMA, load_schema, section
from . import figures, html
from .sections import (
    banner,
    section_clinical,
    section_composition,
    section_dullrazor,
    section_figures,
    section_finetune,
    section_leakage,
    section_methods,
    section_other_metrics,
    section_paired,
    section_provenance,
    section_realism,
    section_rejected,
    section_run,
    section_samples,
    section_sweep,
    section_table4,
    section_val_accuracy,
    section_versions,
)
from .stats import (
    clinical_table,
    hybrid_composition,
    load_evals,
    load_realism,
    paired,
    pooled_reliability,
    read_evals,
    sweep_table,
    table4,
    val_accuracy_table,
    wall_times,
)
from .tables import table4_markdown

log = logging.getLogger("dermsynth.report")

VERSIONS_OF = (
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
)


def build(
    eval_jsons: list[str],
    out_dir,
    paper_table: dict,
    histories: dict[str, str] | None = None,
    extras: dict | None = None,
    n_boot: int | None = None,
    ci: float | None = None,
    seed: int = 0,
    classes: list[str] | None = None,
    baseline: str = "real",
    treatment: str = "hybrid",
) -> dict:
    """Write Table IV, the paired test, figures and ``summary.md`` into ``out_dir``; return their paths.

    ``extras``, each optional: ``config`` (the validated config; without it the summary has no banner,
    Methods, paper validation accuracies nor training-set shares), ``samples`` / ``rejected`` (kept and
    rejected synthetic manifests), ``dullrazor`` (before/after CSV), ``leakage`` (CSV or JSON),
    ``versions`` (package -> version), ``realism`` (realism JSONs), ``sweep`` ((fraction, regime)
    pairs), ``hybrid_sets`` (the regimes' train.csv), ``finetune`` (train_summary.json),
    ``fragments`` (Markdown sections of other stages, pasted in order) and ``provenance`` (keyword
    arguments of ``write_provenance``). ``n_boot`` and ``ci`` default to the config's ``evaluate``
    section (the schema's without a config), ``classes`` to its classes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = extras or {}
    cfg = extras.get("config")
    ev = cfg["evaluate"] if cfg else section("evaluate")
    n_boot = ev["bootstrap"] if n_boot is None else n_boot
    ci = ev["ci"] if ci is None else ci
    classes = classes or (cfg["classes"] if cfg else load_schema(SCHEMA)["properties"]["classes"]["default"])
    docs = read_evals(eval_jsons)  # each JSON read once, for every table below
    evals = load_evals(docs)
    written: dict[str, Path] = {}

    t4 = table4(evals, paper_table, n_boot=n_boot, ci=ci, seed=seed)
    _write_csv(written, "table4_csv", out_dir / "table4.csv", t4)
    t4_md = table4_markdown(t4, ci)
    io.write_text(out_dir / "table4.md", t4_md)
    written["table4_md"] = out_dir / "table4.md"
    pr = paired(evals, n_boot=n_boot, ci=ci, seed=seed, baseline=baseline, treatment=treatment)
    _write_csv(written, "paired_csv", out_dir / "paired.csv", pr)

    paper_val = cfg["report"]["paper_val_accuracy"] if cfg else None
    written["accuracy_png"] = figures.fig_accuracy(t4, out_dir / "accuracy.png")
    written["curves_png"] = figures.fig_curves(histories, out_dir / "curves.png", paper_val)
    written["confusion_png"] = figures.fig_confusion(evals, classes, out_dir / "confusion.png")
    written["roc_png"] = figures.fig_roc(evals, out_dir / "roc.png")
    written["reliability_png"] = figures.fig_reliability(
        pooled_reliability(docs), out_dir / "reliability.png"
    )
    ct = clinical_table(docs)

    comp = hybrid_composition(extras["hybrid_sets"], cfg, classes) if extras.get("hybrid_sets") else None
    sections = [section_run(evals, classes)]
    if cfg:
        sections.append(section_methods(cfg, comp))
    sections.append(section_table4(t4_md))
    sections.append(section_paired(pr, baseline, treatment, n_boot, ci))
    ours = t4[t4["n_seeds"] > 0] if len(t4) else t4
    if len(ours):
        sections.append(section_other_metrics(ours))
    if len(ct):
        sections.append(section_clinical(ct))
    va = val_accuracy_table(histories, paper_val)
    if len(va):
        sections.append(section_val_accuracy(va))
    if comp is not None and len(comp):
        sections.append(section_composition(comp, float(cfg["report"]["hybrid_fraction_tolerance"])))
    sections += _sweep_and_realism(extras, t4, out_dir, written)
    sections.append(section_figures(sweep=bool(extras.get("sweep"))))
    sections += _stage_sections(extras, cfg, out_dir, written)

    text = "# Derm-T2IM reproduction: results\n\n" + (banner(cfg) if cfg else "") + "\n".join(sections)
    io.write_text(out_dir / "summary.md", text)
    written["summary_md"] = out_dir / "summary.md"
    io.write_text(out_dir / "summary.html", html.render(text, out_dir, "Derm-T2IM reproduction: results"))
    written["summary_html"] = out_dir / "summary.html"
    log.info("report: wrote %s", ", ".join(str(p) for p in written.values()))
    return {k: str(v) for k, v in written.items()}


def _write_csv(written: dict, key: str, path: Path, df: pd.DataFrame) -> None:
    io.write_csv(path, df)
    written[key] = path


def _sweep_and_realism(extras: dict, t4: pd.DataFrame, out_dir: Path, written: dict) -> list[str]:
    """The ratio sweep (CSV, figure) and the realism check (CSV), where the run has them."""
    sections = []
    if extras.get("sweep"):
        sw = sweep_table(t4, extras["sweep"])
        _write_csv(written, "sweep_csv", out_dir / "sweep.csv", sw)
        written["sweep_png"] = figures.fig_sweep(sw, out_dir / "sweep.png")
        sections.append(section_sweep(sw))
    if extras.get("realism"):
        rl = load_realism(extras["realism"])
        _write_csv(written, "realism_csv", out_dir / "realism.csv", rl)
        sections.append(section_realism(rl))
    return sections


def _stage_sections(extras: dict, cfg: dict | None, out_dir: Path, written: dict) -> list[str]:
    """The sections on the earlier stages' outputs, then the other stages' own fragments and the
    provenance, in that order."""
    sections = []
    if extras.get("samples") and Path(extras["samples"]).exists():
        sheet = figures.samples_sheet(extras["samples"], out_dir / "samples.png")
        if sheet:
            written["samples_png"] = sheet
        sections.append(section_samples(extras["samples"], sheet=bool(sheet)))
    if extras.get("rejected") and Path(extras["rejected"]).exists():
        sheet = figures.rejected_sheet(extras["rejected"], out_dir / "rejected.png")
        if sheet:
            written["rejected_png"] = sheet
        sections.append(section_rejected(extras["rejected"], sheet=bool(sheet)))
    if extras.get("dullrazor") and Path(extras["dullrazor"]).exists():
        sections.append(section_dullrazor(extras["dullrazor"]))
    if extras.get("leakage"):
        sections.append(section_leakage(extras["leakage"]))
    if extras.get("versions"):
        sections.append(section_versions(extras["versions"]))
    if extras.get("finetune"):
        sections.append(
            section_finetune(extras["finetune"], cfg["report"]["paper_finetune"] if cfg else None)
        )
    # fragments written by other stages (hair contact sheets, audits, quality...), in registration order
    sections += [Path(p).read_text() for p in extras.get("fragments") or []]
    if "provenance" in extras:
        sections.append(write_provenance(cfg, written=written, **extras["provenance"]))
    return sections


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

    ``config`` is the validated config. ``sections`` are the other stages' Markdown fragments,
    pasted after the fine-tune section. ``hybrid_sets`` are the regimes' training lists
    (results/hybrid/{regime}/train.csv), read for the synthetic share each reached after the
    filter. ``sweep`` holds (synthetic fraction, regime) pairs (dermsynth.regimes.sweep_points);
    provenance goes to ``config_snapshot`` (the validated config as YAML) and ``wall_times_csv``
    (every benchmark TSV under ``benchmarks_dir``, read at run time: see rules/report.smk for why).
    """
    # classifiers/{model}/{regime}/{seed}/history.csv -> "model/regime/seed"
    histories = {"/".join(Path(p).parts[-4:-1]): p for p in history_paths}
    return build(
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
            "versions": package_versions(),
            "realism": list(realism),
            "sweep": [tuple(x) for x in sweep or []],
            "hybrid_sets": list(hybrid_sets),
            "finetune": finetune_summary,
            "fragments": list(sections),
            "provenance": {
                "benchmarks_dir": benchmarks_dir,
                "config_snapshot": config_snapshot,
                "wall_times_csv": wall_times_csv,
            },
        },
    )


def write_provenance(config, benchmarks_dir, config_snapshot, wall_times_csv, written: dict) -> str:
    """Save the config as run and the wall time of every benchmarked job; return their section."""
    if config_snapshot:
        with io.atomic_path(config_snapshot) as tmp:
            Path(tmp).write_text(yaml.safe_dump(_plain(config), sort_keys=False))
        written["config_yaml"] = str(config_snapshot)
    wt = None
    if benchmarks_dir is not None:
        wt = wall_times(benchmarks_dir)
        if wall_times_csv:
            io.write_csv(wall_times_csv, wt)
            written["wall_times_csv"] = str(wall_times_csv)
    return section_provenance(config_snapshot, benchmarks_dir, wall_times_csv, wt)


def package_versions() -> dict:
    """Versions of the packages behind the numbers, and Python's."""
    out = {}
    for pkg in VERSIONS_OF:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["python"] = platform.python_version()
    return out


def _plain(obj):
    """Snakemake's config holds its own dict/list subclasses: plain ones for yaml.safe_dump."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
