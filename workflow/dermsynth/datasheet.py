"""The synthetic set as others receive it: ``DATASHEET.md`` and an imagefolder ``metadata.jsonl``.

The datasheet follows "Datasheets for Datasets" (Gebru et al., 2021): what the set is for and not
for, what it holds (per class x sampler x modifier, kept and rejected by reason), how it was made
(prompts, steps, CFG, the seed scheme, base model and LoRA sha256), the source images' licences as
their metadata gives them, the memorization audit, and how to regenerate any image.
``metadata.jsonl`` lists every image under the run's folder with its label, prompt, sampler, steps,
seed, modifiers and the filter's verdict, so ``datasets.load_dataset("imagefolder", data_dir=...)``
returns the set with those columns.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from . import io
from .report.tables import md_table

log = logging.getLogger("dermsynth")
#: the generation manifest's columns that travel into metadata.jsonl, in this order
JSONL_COLUMNS = [
    "label",
    "prompt",
    "negative_prompt",
    "sampler",
    "steps",
    "guidance_scale",
    "seed",
    "resolution",
    "lora_scale",
    "modifiers",
    "sha256",
    "lora_sha256",
    "base_model",
]
KEPT = "kept"


def verdicts(made: pd.DataFrame, kept: pd.DataFrame, rejected: pd.DataFrame) -> pd.DataFrame:
    """Every generated image still on disk with the filter's verdict: ``kept`` or its reject reason."""
    reason = dict(zip(rejected["path"], rejected["reason"], strict=True))
    kept_paths = set(kept["path"])
    on_disk = made[made["path"].isin(kept_paths | set(reason))].copy()
    on_disk["verdict"] = [KEPT if p in kept_paths else reason[p] for p in on_disk["path"]]
    return on_disk.reset_index(drop=True)


def metadata_rows(images: pd.DataFrame, root: Path) -> list[dict]:
    """imagefolder rows: ``file_name`` relative to ``root`` (the folder given as data_dir)."""
    rows = []
    for r in images.to_dict("records"):
        row = {"file_name": Path(r["path"]).resolve().relative_to(root.resolve()).as_posix()}
        row.update({c: _plain(r.get(c, "")) for c in JSONL_COLUMNS})
        row["verdict"] = r["verdict"]
        rows.append(row)
    return rows


def _plain(v):
    """JSON-native values: numpy scalars as Python's, missing as ''."""
    if hasattr(v, "item"):
        v = v.item()
    return "" if v is None or (isinstance(v, float) and v != v) else v


def _modifier_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Per class x sampler x modifier option: kept, rejected and each reject reason."""
    mods = images.assign(modifier=images["modifiers"].fillna("").astype(str).str.split(";")).explode(
        "modifier"
    )
    mods["modifier"] = mods["modifier"].replace("", "none")
    table = (
        pd.crosstab([mods["label"], mods["sampler"], mods["modifier"]], mods["verdict"])
        .reset_index()
        .rename_axis(None, axis=1)
    )
    if KEPT not in table:
        table[KEPT] = 0
    reasons = sorted(c for c in table.columns if c not in ("label", "sampler", "modifier", KEPT))
    table["rejected"] = table[reasons].sum(axis=1) if reasons else 0
    return table[["label", "sampler", "modifier", KEPT, "rejected", *reasons]]


def _licences(finetune: pd.DataFrame) -> pd.DataFrame:
    lic = finetune.assign(license=finetune.get("license", pd.Series("", index=finetune.index)).fillna(""))
    lic["license"] = lic["license"].astype(str).replace("", "not given by the source")
    return lic.groupby(["dataset", "license"]).size().reset_index(name="images")


def _grid_settings(images: pd.DataFrame, gen: dict) -> tuple[list, str, str, str]:
    """(sampler x steps rows, samplers, CFG, negative prompt) as configured or, with
    generate.from_pngs, as the web-UI PNGs gave them to the images."""
    if not gen.get("from_pngs"):
        rows = [[name, str(spec["steps"])] for name, spec in gen["samplers"].items()]
        negative = f"`{gen['negative_prompt']}`" if gen.get("negative_prompt") else "none"
        return rows, ", ".join(gen["samplers"]), str(gen["guidance_scale"]), negative
    steps = images.groupby("sampler", sort=False)["steps"].agg(["min", "max"])
    rows = [[s, str(lo) if lo == hi else f"{lo}-{hi}"] for s, (lo, hi) in steps.iterrows()]
    cfg = images["guidance_scale"].astype(float)
    cfg_text = f"{cfg.min():g}" if cfg.min() == cfg.max() else f"{cfg.min():g}-{cfg.max():g}"
    source = f" (per image, from the web-UI PNGs in `{gen['from_pngs']}`)"
    negative = "per image, from the web-UI PNGs (`metadata.jsonl`)"
    return rows, ", ".join(steps.index), cfg_text + source, negative


def render(
    images: pd.DataFrame,
    nearest: pd.DataFrame,
    finetune: pd.DataFrame,
    cfg: dict,
    run: str,
) -> str:
    """DATASHEET.md's text for the run's generated ``images`` (with ``verdict``)."""
    gen, flt = cfg["generate"], cfg["filter"]
    kept = images[images["verdict"] == KEPT]
    counts = _modifier_counts(images)
    by_reason = images[images["verdict"] != KEPT]["verdict"].value_counts()
    loras = sorted(set(images["lora_sha256"].astype(str)))
    bases = sorted(set(images["base_model"].astype(str)))
    sampler_rows, samplers, cfg_text, negative = _grid_settings(images, gen)
    replayed = gen.get("from_pngs") and gen.get("from_pngs_seeds")
    seed_note = " The first image of each web-UI PNG replays that PNG's seed instead." if replayed else ""
    prompts = images.groupby("prompt").size().sort_values(ascending=False)
    memorized = int(nearest["memorized"].astype(str).str.lower().eq("true").sum()) if len(nearest) else 0
    sim = nearest["similarity"].astype(float) if len(nearest) else pd.Series(dtype=float)
    audit = (
        f"Every generated image was compared with every fine-tune image (flips and quarter turns "
        f"included): similarity median {sim.median():.3f}, 99th percentile {sim.quantile(0.99):.3f}, "
        f"max {sim.max():.3f}; {memorized} image(s) at or above {flt['memorization']['min_similarity']} "
        f"were rejected as `memorized`."
        if len(sim)
        else "No image was audited."
    )
    reason_text = ", ".join(f"{r}: {n}" for r, n in by_reason.items()) or "none"
    return f"""# Datasheet: synthetic dermoscopy set `{run}`

Made by the dermsynth workflow (a reproduction of Derm-T2IM, Farooq et al., 2024). Structure after
"Datasheets for Datasets" (Gebru et al., 2021).

## Motivation and uses

- **For:** research on synthetic training data for skin-lesion classifiers (benign vs malignant), and
  on the generator itself (fidelity, diversity, memorization).
- **Not for:** diagnosis, clinical decisions, or as evidence of what real lesions look like. The
  images show no real patient; a classifier trained on them must be tested on real images.

## Composition

{len(images)} images on disk, {len(kept)} kept by the artifact filter, {len(images) - len(kept)}
rejected ({reason_text}). Classes: {", ".join(cfg["classes"])}; samplers: {samplers}.
Rejected images stay in the folder; `metadata.jsonl`'s `verdict` says which (`kept` or the reason).

Per class x sampler x prompt modifier (an image counts once per modifier group):

{md_table(list(counts.columns), counts.astype(str).values.tolist())}

## Collection process

- **Base model:** {", ".join(f"`{b}`" for b in bases)}; **LoRA sha256:** {", ".join(f"`{s}`" for s in loras)}
  (the fine-tune's `pytorch_lora_weights.safetensors`, model card beside it).
- **Samplers and steps** (a `[min, max]` range is drawn per image from its seed):

{md_table(["sampler", "steps"], sampler_rows)}

- **Guidance scale (CFG):** {cfg_text}; **resolution:** {gen["resolution"]} px;
  **LoRA scale:** {gen["lora_scale"]}; **negative prompt:** {negative}.
- **Seeds:** each image's seed is a stable hash (sha256) of (generate.seed = {gen["seed"]}, class,
  sampler, image index), below 2^48; an image that failed a per-image check was replaced, up to
  `generate.max_rounds` rounds, by one with the seed of (..., round). Its noise comes from its own CPU
  generator, so an image does not depend on its batch.{seed_note}
- **Prompts** ({len(prompts)} distinct; the most frequent):

{md_table(["prompt", "images"], [[f"`{p}`", str(n)] for p, n in prompts.head(12).items()])}

## Preprocessing and cleaning

The artifact filter (`filter` section of the config) rejected unreadable, altered, blank, flat,
clipped, blurry, noisy, tiled, colour-cast and lesion-less images, exact and near duplicates, and
copies of fine-tune images. Memorization audit: {audit}

## Source data and licences

The LoRA was fine-tuned on {len(finetune)} images. Their licences, as the source metadata gives
them (ISIC Archive images are licensed per image; HAM10000 is CC BY-NC 4.0):

{md_table(["dataset", "license", "images"], _licences(finetune).astype(str).values.tolist())}

Generated images inherit no patient data, but a set derived from CC BY-NC images is for
non-commercial use.

## Distribution and regeneration

- `metadata.jsonl` in this folder: `datasets.load_dataset("imagefolder", data_dir="<this folder>")`
  returns every image with its label, prompt, sampler, steps, CFG, seed, modifiers and verdict.
- Each PNG carries the same settings as a `parameters` text chunk (AUTOMATIC1111 web UI format).
- To regenerate an image: load the base model with diffusers, `load_lora_weights` the LoRA, set the
  row's sampler, and call the pipeline with the row's prompt, negative prompt, steps, guidance scale,
  resolution, `cross_attention_kwargs={{"scale": lora_scale}}` and
  `generator=torch.Generator("cpu").manual_seed(seed)`; the image's sha256 is in the row.
"""


def write(
    manifests: list[str],
    kept_csv,
    rejected_csv,
    nearest_csv,
    finetune_csv,
    cfg: dict,
    run: str,
    datasheet_md,
    metadata_jsonl,
) -> pd.DataFrame:
    """The datasheet rule: DATASHEET.md and metadata.jsonl for the run's folder (metadata.jsonl's)."""
    made = io.read_manifests(manifests)
    images = verdicts(made, io.read_csv(kept_csv), io.read_csv(rejected_csv))
    root = Path(metadata_jsonl).parent
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in metadata_rows(images, root))
    io.write_text(metadata_jsonl, text)
    io.write_text(datasheet_md, render(images, io.read_csv(nearest_csv), io.read_csv(finetune_csv), cfg, run))
    log.info("datasheet: %d images (%d kept) in %s", len(images), (images["verdict"] == KEPT).sum(), root)
    return images
