"""Report of the generation stage: the split and contact sheets per class x sampler x modifier
(the paper's Figs. 5-6)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .. import io
from ..imaging import contact_sheet
from .manifest import _rounds, _text, passing

log = logging.getLogger("dermsynth")


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Image counts per label, sampler, modifier group and option (``group`` 'all' = the block total)."""
    rows = []
    for (label, sampler), g in manifest.groupby(["label", "sampler"], sort=False):
        rows.append({"label": label, "sampler": sampler, "group": "all", "option": "all", "n": len(g)})
        parsed = g["modifiers"].map(_text).map(_parse_modifiers)
        groups = list(dict.fromkeys(k for d in parsed for k in d))
        for group in groups:
            for option, n in parsed.map(lambda d, gr=group: d.get(gr, "")).value_counts(sort=False).items():
                rows.append(
                    {"label": label, "sampler": sampler, "group": group, "option": option, "n": int(n)}
                )
    return pd.DataFrame(rows, columns=["label", "sampler", "group", "option", "n"])


def _span(values: pd.Series) -> str:
    """``7`` for one value, ``5-9`` for several (per-image CFG of a PNG grid)."""
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def _parse_modifiers(text: str) -> dict:
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def section_generate(
    manifests, out_md, figures: dict, split_csv=None, per_row: int = 6, thumb: int = 96
) -> pd.DataFrame:
    """Markdown fragment for the report: the split table and one contact sheet per class.

    ``figures``: label -> PNG path (written beside the fragment and linked as ``sections/<name>``).
    Each sheet has one row per sampler x modifier option with its first ``per_row`` images.
    """
    made = io.read_manifests(manifests)
    made["modifiers"] = made["modifiers"].map(_text) if "modifiers" in made.columns else ""
    # the split and the sheets show the images that passed the per-image checks, one per slot
    df = passing(made).reset_index(drop=True)
    table = split_table(df)
    if split_csv is not None:
        io.write_csv(split_csv, table)
    lines = ["## Synthetic images", ""]
    first = made.iloc[0] if len(made) else None
    if first is not None:
        steps = made.groupby("sampler")["steps"].agg(["min", "max"])
        steps_txt = ", ".join(f"{s} {a}" if a == b else f"{s} {a}-{b}" for s, (a, b) in steps.iterrows())
        lines += [
            f"{len(df)} images ({first['resolution']} px, CFG {_span(made['guidance_scale'])}, "
            f"steps per sampler: {steps_txt}) from `{first['base_model']}`"
            + (f" with LoRA `{_text(first['lora_sha256'])[:12]}`" if _text(first["lora_sha256"]) else "")
            + f", in {made.groupby(['label', 'sampler'])['shard'].nunique().sum()} shard(s). "
            "Every image is reproducible from its manifest row (seed, prompt, sampler, steps).",
            "",
        ]
        slots = made.groupby(["label", "sampler"])["index"].nunique().sum()
        rounds = int(_rounds(made).max()) + 1
        lines += [
            f"{len(df)} of {slots} target images pass the filter's per-image checks; {len(made)} were "
            f"generated in up to {rounds} round(s) (a rejected image is replaced by a new seed for the "
            f"same prompt)"
            + (f"; {slots - len(df)} short after the last round." if len(df) < slots else ".")
            + " The filter section counts the rejections by reason.",
            "",
        ]
    lines += ["| class | sampler | group | option | images |", "|---|---|---|---|---:|"]
    lines += [f"| {r.label} | {r.sampler} | {r.group} | {r.option} | {r.n} |" for r in table.itertuples()]
    lines.append("")
    out_md = Path(out_md)
    for label, png in figures.items():
        rows = []
        for sampler, g in df[df["label"] == label].groupby("sampler", sort=False):
            parsed = g["modifiers"].map(_parse_modifiers)
            groups = list(dict.fromkeys(k for d in parsed for k in d))
            if not groups:
                rows.append((f"{sampler}", g["path"].head(per_row).tolist()))
            for group in groups:
                option_of = parsed.map(lambda d, gr=group: d.get(gr, ""))
                for option in dict.fromkeys(option_of):
                    paths = g["path"][option_of == option].head(per_row).tolist()
                    rows.append((f"{sampler}\n{group}={option}", paths))
        ncols = max([len(p) for _, p in rows] + [1])
        contact_sheet(
            [c for _, p in rows for c in p + [None] * (ncols - len(p))],  # blank cells where a row is short
            png,
            ncols=ncols,
            thumb=thumb,
            title=f"{label}: sampler x modifier",
            row_labels=[caption for caption, _ in rows],
        )
        lines += [
            f"![{label} contact sheet](sections/{Path(png).name})",
            "",
            f"*{label}: first {per_row} images of each sampler x modifier option.*",
            "",
        ]
    io.write_text(out_md, "\n".join(lines))
    log.info("generation report: %d images, %d sheet(s) -> %s", len(df), len(figures), out_md)
    return table
