"""The data section of the report: counts, rejected inputs, DullRazor before/after, splits, leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..imaging import contact_sheet, square_resize


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _crosstab(df: pd.DataFrame, rows: str, cols: str) -> str:
    if df.empty:
        return "_none_\n"
    ct = pd.crosstab(df[rows].astype(str), df[cols].astype(str), margins=True, margins_name="total")
    return _table(
        [f"{rows} \\ {cols}"] + list(ct.columns),
        [[i] + list(r) for i, r in zip(ct.index, ct.to_numpy(), strict=True)],
    )


def _read(paths: dict[str, str]) -> pd.DataFrame:
    frames = []
    for ds, p in paths.items():
        df = io.read_csv(p)
        df["dataset"] = ds
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def dullrazor_sheet(
    raw: pd.DataFrame, clean: pd.DataFrame, out, n: int = 6, tile: int = 160
) -> tuple[Path, int]:
    """Before / after / mask (/ truth) for up to ``n`` images with the most hair (demo: with a truth)."""
    both = clean.merge(
        raw[["dataset", "source_id", "path"]].rename(columns={"path": "raw_path"}),
        on=["dataset", "source_id"],
    )
    if "truth_path" in both.columns and both["truth_path"].fillna("").astype(str).ne("").any():
        both = both[both["truth_path"].fillna("").astype(str) != ""]
    both = both.assign(hf=pd.to_numeric(both["hair_fraction"], errors="coerce")).sort_values(
        "hf", ascending=False
    )
    tiles, names, ncols = [], [], 3
    for r in both.head(n).itertuples():
        paths = [r.raw_path, r.path, r.mask_path]
        truth = getattr(r, "truth_path", "")
        if isinstance(truth, str) and truth:
            paths.append(truth)
        ncols = len(paths)
        note = f"hair {100 * r.hf:.0f}%"
        if pd.notna(getattr(r, "psnr_before", np.nan)) and str(getattr(r, "psnr_before", "")) != "":
            note += f" {float(r.psnr_before):.0f}->{float(r.psnr_after):.0f} dB"
        tiles += [square_resize(np.asarray(io.load_rgb(p)), tile) for p in paths]
        names.append(f"{str(r.source_id)[-18:]}\n{note}")
    headers = ["before", "after", "mask", "truth"][:ncols]
    # no images: the placeholder keeps the declared output
    sheet = contact_sheet(tiles, out, ncols=ncols, thumb=tile, row_labels=names, headers=headers)
    return sheet, len(names)


def section_data(
    raw: dict[str, str],
    rejected: dict[str, str],
    clean: dict[str, str],
    splits: str,
    leakage: str,
    out_md,
    sheet_png,
    n_sheet: int = 6,
) -> str:
    """Write ``out_md`` (Markdown fragment) and ``sheet_png``; the figure is referenced relative to
    the report folder (``sections/<name>.png``), where summary.md lives."""
    raw_df, clean_df = _read(raw), _read(clean)
    rej = _read(rejected)
    parts = ["## Data\n"]
    parts.append("### Images per dataset and label\n\n" + _crosstab(raw_df, "dataset", "label"))
    n_rej = len(rej)
    parts.append(
        f"### Rejected inputs\n\n{n_rej} inputs were not used (reason per dataset; details in "
        "`results/data/<dataset>/raw/rejected.csv`).\n\n"
        + (_crosstab(rej, "reason", "dataset") if n_rej else "")
    )
    if "note" in raw_df.columns:
        conv = raw_df[
            raw_df["note"]
            .fillna("")
            .astype(str)
            .str.contains("converted|composited|scaled|applied|downscaled")
        ]
        if len(conv):
            parts.append(
                f"{len(conv)} images were converted on import (CMYK, alpha, palette, 16-bit, "
                "grayscale, EXIF rotation, downscaling to max_side); see the `note` column of the "
                "manifests.\n"
            )

    hair = ["### Hair removal (DullRazor)\n"]
    hf = pd.to_numeric(clean_df.get("hair_fraction", pd.Series(dtype=float)), errors="coerce")
    hair.append(f"Mean hair-mask fraction {100 * hf.mean():.2f} % over {hf.notna().sum()} images.\n")
    rows = []
    for ds, g in clean_df.groupby("dataset"):
        pb = pd.to_numeric(g.get("psnr_before", pd.Series(dtype=float)), errors="coerce").dropna()
        if len(pb):
            pa = pd.to_numeric(g["psnr_after"], errors="coerce").dropna()
            sb = pd.to_numeric(g.get("ssim_before", pd.Series(dtype=float)), errors="coerce").dropna()
            sa = pd.to_numeric(g.get("ssim_after", pd.Series(dtype=float)), errors="coerce").dropna()
            rows.append(
                [
                    ds,
                    len(pb),
                    f"{pb.mean():.2f}",
                    f"{pa.mean():.2f}",
                    f"{sb.mean():.3f}" if len(sb) else "-",
                    f"{sa.mean():.3f}" if len(sa) else "-",
                ]
            )
    if rows:
        hair.append(
            "\nAgainst the hair-free truth (demo images with drawn hairs):\n\n"
            + _table(
                ["dataset", "n", "PSNR before (dB)", "PSNR after (dB)", "SSIM before", "SSIM after"], rows
            )
        )
    _, shown = dullrazor_sheet(raw_df, clean_df, sheet_png, n_sheet)
    name = Path(sheet_png).name
    hair.append(
        f"\n![DullRazor before / after / mask](sections/{name})\n\n"
        f"{shown} images with the largest hair masks: before, after, mask"
        + (", hair-free truth" if rows else "")
        + ".\n"
    )
    parts.append("\n".join(hair))

    sp = io.read_csv(splits)
    parts.append("### Splits (by lesion)\n\n" + _crosstab(sp, "dataset", "split"))
    straddle = int(
        (sp[sp["split"] != "excluded"].groupby(["dataset", "lesion_id"])["split"].nunique() > 1).sum()
    )
    parts.append(f"Lesions in more than one split: {straddle}.\n")
    lk = io.read_csv(leakage)
    parts.append(
        f"### Leakage check\n\n{len(lk)} overlaps found (`{leakage}`): duplicates within a dataset are "
        "grouped into one split; across datasets the copy on the later split is excluded.\n\n"
        + (_crosstab(lk, "kind", "action") if len(lk) else "")
    )
    text = "\n".join(parts)
    io.write_text(out_md, text)
    return text
