"""Smart transformations, measured: do the prompt modifiers change what they name?

The paper's prompt grid (``generate.modifiers``: tiny / large mole, multiple moles, Fitzpatrick skin
types) is a claim about the images. Each image's lesion mask gives three measures, which the segment
stage writes to masks.csv (``segment.measure_columns``): the skin's ITA (outside every lesion and the
dermoscope's frame), the lesion's area fraction and its connected-component count. A check
(``segment.transformations.checks``) compares one measure between the images prompted with some
options of a group and those prompted with others, per sampler: the mean difference with a bootstrap
CI and Cliff's delta, and a verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import config, io, metrics, skintone
from .config import TINY_PREFIX

log = logging.getLogger("dermsynth.transformations")

MEASURES = {
    "ita": "ITA (°)",
    "area_fraction": "lesion area fraction",
    "components": "lesion components",
}
ALL = "all samplers"
TABLE_COLUMNS = [
    "check",
    "group",
    "measure",
    "expect",
    "sampler",
    "n_options",
    "n_against",
    "mean_options",
    "mean_against",
    "difference",
    "lo",
    "hi",
    "cliffs_delta",
    "verdict",
]


# ---------------------------------------------------------------- effect sizes


def cliffs_delta(a, b) -> float:
    """P(a > b) - P(a < b) over all pairs (ties count for neither): -1..1, 0 = no shift."""
    a, b = np.asarray(a, np.float64), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    below = np.searchsorted(b, a, side="left")  # b < a
    above = len(b) - np.searchsorted(b, a, side="right")  # b > a
    return float((below - above).sum() / (len(a) * len(b)))


def effect(a, b, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Difference in means a - b with a percentile bootstrap CI (each arm resampled on its own, as
    ``metrics.resample_indices`` draws), Cliff's delta and its CI from the same resamples."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        nan = float("nan")
        return {
            "difference": nan,
            "lo": nan,
            "hi": nan,
            "cliffs_delta": nan,
            "delta_lo": nan,
            "delta_hi": nan,
        }
    ia = metrics.resample_indices(len(a), n_boot, seed)
    ib = metrics.resample_indices(len(b), n_boot, seed + 1)
    lo, hi = metrics.percentile_ci(a[ia].mean(axis=1) - b[ib].mean(axis=1), ci)
    d_lo, d_hi = metrics.percentile_ci([cliffs_delta(a[i], b[j]) for i, j in zip(ia, ib, strict=True)], ci)
    return {
        "difference": float(a.mean() - b.mean()),
        "lo": lo,
        "hi": hi,
        "cliffs_delta": cliffs_delta(a, b),
        "delta_lo": d_lo,
        "delta_hi": d_hi,
    }


def verdict(lo: float, hi: float, expect: str) -> str:
    """'as prompted' when the CI excludes 0 on the expected side, 'opposite' on the other side,
    else 'no effect'."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "too few"
    if lo <= 0 <= hi:
        return "no effect"
    lower = hi < 0
    return "as prompted" if lower == (expect == "lower") else "opposite"


# ---------------------------------------------------------------- the checks


def parse_modifiers(text) -> dict:
    """A manifest's ``modifiers`` cell (``group=option;group=option``) as a dict."""
    text = text if isinstance(text, str) else ""
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def measure_values(rows: pd.DataFrame, measure: str) -> np.ndarray:
    """The measure of the segmented images: an empty mask is a lesion of area 0, a failed one is left out."""
    ok = rows[rows["status"] != "failed"]
    v = pd.to_numeric(ok[measure], errors="coerce")
    if measure == "area_fraction":
        v = v.where(ok["status"] != "empty", 0.0)
    v = v.to_numpy(np.float64)
    return v[np.isfinite(v)]


def check_name(check: dict, options: list, against: list) -> str:
    return f"{check['group']}: {'/'.join(options)} vs {'/'.join(against)}"


def run_checks(
    synthetic: pd.DataFrame,
    checks: list[dict],
    modifiers: dict,
    min_images: int,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """(table, skipped): one row per check x sampler (and all samplers pooled); ``synthetic`` has the
    masks.csv columns plus ``modifiers`` (dict per image). Checks whose group or options are not in
    this run's prompt grid are skipped, each with its reason."""
    rows, skipped = [], []
    samplers = sorted(synthetic["sampler"].astype(str).unique()) if len(synthetic) else []
    for check in checks:
        group = check["group"]
        grid = modifiers.get(group)
        if not grid:
            skipped.append(f"{group} (not in this run's prompt grid)")
            continue
        options = [o for o in check["options"] if o in grid]
        against = [o for o in check["against"] if o in grid]
        if not options or not against:
            missing = check["options"] if not options else check["against"]
            skipped.append(f"{group}: none of {', '.join(missing)} among its options {', '.join(grid)}")
            continue
        chosen = (
            synthetic["modifiers"].map(lambda d, g=group: d.get(g, "")) if len(synthetic) else pd.Series()
        )
        for sampler in [*samplers, ALL]:
            part = synthetic if sampler == ALL else synthetic[synthetic["sampler"].astype(str) == sampler]
            pick = chosen.loc[part.index]
            a = measure_values(part[pick.isin(options)], check["measure"])
            b = measure_values(part[pick.isin(against)], check["measure"])
            row = {
                "check": check_name(check, options, against),
                "group": group,
                "measure": check["measure"],
                "expect": check["expect"],
                "sampler": sampler,
                "n_options": len(a),
                "n_against": len(b),
            }
            if min(len(a), len(b)) < min_images:
                row["verdict"] = "too few"
            else:
                e = effect(a, b, n_boot, ci, seed)
                row.update(
                    mean_options=float(a.mean()),
                    mean_against=float(b.mean()),
                    difference=e["difference"],
                    lo=e["lo"],
                    hi=e["hi"],
                    cliffs_delta=e["cliffs_delta"],
                    verdict=verdict(e["lo"], e["hi"], check["expect"]),
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), skipped


def synthetic_with_modifiers(table: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The synthetic rows of the masks tables with each image's modifiers (a dict) from the manifest."""
    synth = table[~table["set"].astype(str).str.startswith("real")].copy()
    mods = manifest.get("modifiers", pd.Series("", index=manifest.index))
    by_path = dict(zip(manifest["path"].astype(str), mods.map(parse_modifiers), strict=True))
    synth["modifiers"] = synth["path"].astype(str).map(lambda p: by_path.get(p, {}))
    return synth


# ---------------------------------------------------------------- the report section


def _fmt(v: float, measure: str, signed: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    digits = {"ita": 1, "area_fraction": 3, "components": 2}[measure]
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def table_lines(table: pd.DataFrame, ci: float) -> list[str]:
    """The markdown table; a 'too few' row shows its counts and no other number."""
    lines = [
        f"| check | measure | expected | sampler | n (options / against) | mean (options / against) | "
        f"difference [{ci:.0%} CI] | Cliff's δ | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        m = r["measure"]
        few = r["verdict"] == "too few"
        means = "–" if few else f"{_fmt(r['mean_options'], m)} / {_fmt(r['mean_against'], m)}"
        diff = (
            "–"
            if few
            else f"{_fmt(r['difference'], m, True)} [{_fmt(r['lo'], m, True)}, {_fmt(r['hi'], m, True)}]"
        )
        delta = "–" if few else f"{r['cliffs_delta']:+.2f}"
        lines.append(
            f"| {r['check']} | {MEASURES[m]} | {r['expect']} | {r['sampler']} | {r['n_options']} / "
            f"{r['n_against']} | {means} | {diff} | {delta} | {r['verdict']} |"
        )
    return lines


def ita_figure(
    real: pd.DataFrame, synthetic: pd.DataFrame, group: str | None, options: list, out_png
) -> None:
    """One panel per sampler: the ITA of each real dataset (grey, the reference), then of the
    synthetic images of each option of ``group`` (all synthetic images when None); band bounds dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = sorted(synthetic["sampler"].astype(str).unique()) or ["-"]
    fig, axes = plt.subplots(
        1,
        len(samplers),
        figsize=(1.2 + 0.9 * (len(options) + 3) * len(samplers), 3.6),
        squeeze=False,
        sharey=True,
    )
    real_sets = sorted(real["set"].astype(str).unique())
    for ax, sampler in zip(axes[0], samplers, strict=True):
        part = synthetic[synthetic["sampler"].astype(str) == sampler]
        arms = [
            (s.split("/", 1)[-1], measure_values(real[real["set"] == s], "ita"), "0.6") for s in real_sets
        ]
        if group is None:
            arms.append(("synthetic", measure_values(part, "ita"), "C0"))
        else:
            chosen = part["modifiers"].map(lambda d: d.get(group, ""))
            arms += [(o, measure_values(part[chosen == o], "ita"), f"C{k}") for k, o in enumerate(options)]
        for pos, (_name, v, colour) in enumerate(arms):
            if len(v) > 1 and np.ptp(v) > 0:
                body = ax.violinplot(v, [pos], showmedians=True, widths=0.8)
                for b in body["bodies"]:
                    b.set_facecolor(colour)
                    b.set_alpha(0.6)
                for part_name in ("cbars", "cmins", "cmaxes", "cmedians"):
                    body[part_name].set_color("0.25")
            elif len(v):
                ax.plot([pos], [float(np.median(v))], "o", color=colour)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([f"{n}\nn={len(v)}" for n, v, _ in arms], fontsize=7)
        for lo, _, fitz in skintone.ITA_GROUPS[:-1]:
            ax.axhline(lo, color="0.8", linestyle=":", linewidth=0.8, zorder=0)
            ax.text(len(arms) - 0.45, lo, fitz, fontsize=6, va="bottom", color="0.5")
        ax.text(
            len(arms) - 0.45,
            skintone.ITA_GROUPS[-2][0],
            skintone.ITA_GROUPS[-1][2],
            fontsize=6,
            va="top",
            color="0.5",
        )
        ax.set_title(f"{sampler}" + (f" by {group}" if group else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("ITA of the skin (°)", fontsize=8)
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def section_transformations(
    mask_tables: list,
    manifest,
    out_md,
    out_png,
    out_csv,
    cfg: dict,
    modifiers: dict,
    sd_model: str = "",
    n_boot: int = 1000,
    ci: float = 0.95,
    section_dir_name: str = "sections",
) -> pd.DataFrame:
    """The report fragment: the checks table (also written to ``out_csv``) and the ITA figure."""
    c = config.section("segment", cfg)
    t = c["transformations"]
    frames = [io.read_csv(p) for p in mask_tables]
    table = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["set", "path", "status"])
    )
    method = str(table["method"].iloc[0]) if len(table) else "classical"
    synth = synthetic_with_modifiers(table, io.read_csv(manifest))
    real = table[table["set"].astype(str).str.startswith("real")]
    result, skipped = run_checks(synth, t["checks"], modifiers or {}, t["min_images"], n_boot, ci)
    io.write_csv(out_csv, result)
    ita_groups = [
        k["group"] for k in t["checks"] if k["measure"] == "ita" and (modifiers or {}).get(k["group"])
    ]
    fig_group = ita_groups[0] if ita_groups else None
    ita_figure(real, synth, fig_group, list((modifiers or {}).get(fig_group, {})), out_png)
    lines = [
        "### Smart transformations, measured",
        "",
        "Do the prompt modifiers (`generate.modifiers`) change what they name? Each check of "
        "`segment.transformations.checks` compares a measure between the kept synthetic images prompted "
        f"with its options and those prompted with the others, per sampler, from the {method} masks: the "
        "skin's ITA (outside every lesion and the dermoscope's frame), the lesion's area fraction (0 "
        "for an empty mask) and its connected components of at least "
        f"{c['min_area_fraction']:g} of the image. Difference = mean(options) - mean(against) with a "
        f"{ci:.0%} bootstrap CI ({n_boot} resamples); verdict: *as prompted* when the CI excludes 0 on "
        f"the expected side, *opposite* on the other, *too few* when an arm has under {t['min_images']} "
        "images (`segment.transformations.min_images`).",
        "",
    ]
    if str(sd_model).startswith(TINY_PREFIX):
        lines += [
            f"**This run samples a tiny random-weight model (`{sd_model}`): it draws coloured noise, "
            "neither lesions nor skin, so no prompt can change them and *no effect* is the expected "
            "verdict.**",
            "",
        ]
    lines += table_lines(result, ci) if len(result) else ["No check applies to this run's prompt grid."]
    if skipped:
        lines += ["", "Not checked: " + "; ".join(skipped) + "."]
    ref = [
        f"{s.split('/', 1)[-1]} {np.mean(v):.1f}° (n = {len(v)})"
        for s, g in real.groupby("set")
        if len(v := measure_values(g, "ita"))
    ]
    if ref:
        lines += ["", "Real skin for reference, mean ITA: " + ", ".join(ref) + "."]
    lines += [
        "",
        f"![ITA by skin-tone modifier]({section_dir_name}/{Path(out_png).name})",
        "",
        "*ITA of the skin around the lesion: each real dataset (grey), then the synthetic images of each "
        + (f"`{fig_group}` option" if fig_group else "sampler")
        + ", one panel per sampler; dotted lines bound the ITA groups, labelled by their Fitzpatrick proxy "
        "(a colour measure under the dermoscope's light, not a person's skin type).*",
        "",
    ]
    io.write_text(out_md, "\n".join(lines) + "\n")
    log.info("transformations: %d rows, %d checks skipped", len(result), len(skipped))
    return result
