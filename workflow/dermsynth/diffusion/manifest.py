"""The generation manifest: its columns, the rows that pass the per-image checks, merging shards."""

from __future__ import annotations

import logging

import pandas as pd

from .. import io
from ..errors import ConfigError

log = logging.getLogger("dermsynth")

MANIFEST_COLUMNS = io.MANIFEST_COLUMNS + [
    "seed",
    "prompt",
    "negative_prompt",
    "sampler",
    "steps",
    "guidance_scale",
    "resolution",
    "lora_scale",
    "lora_sha256",
    "base_model",
    "index",
    "modifiers",
    "shard",
    "round",
    "verdict",
]
#: ``verdict`` of an image that passes the per-image checks (otherwise: its first failing reason)
PASS = "pass"


def passing(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows whose image passed the per-image checks (all rows of a manifest without verdicts)."""
    if "verdict" not in manifest.columns:
        return manifest
    return manifest[manifest["verdict"].map(_text) == PASS]


def _rounds(df: pd.DataFrame) -> pd.Series:
    return df["round"].fillna(0).astype(int) if "round" in df.columns else pd.Series(0, index=df.index)


def merge_shards(shard_manifests, out_manifest, block_size: int | None = None) -> pd.DataFrame:
    """One (label, sampler) manifest from its shards, checked: every index there, each with rounds
    0, 1, ... once; a shortfall (slots without a passing image) is logged."""
    frames = [io.read_csv(m) for m in shard_manifests]
    if not frames:
        raise ConfigError("merge_shards needs at least one shard manifest")
    df = pd.concat(frames, ignore_index=True)
    df["round"] = _rounds(df)
    df = df.sort_values(["index", "round"], kind="stable").reset_index(drop=True)
    expected = int(block_size) if block_size is not None else df["index"].nunique()
    slots = sorted(set(df["index"]))
    rounds_ok = (df.groupby("index")["round"].agg(list).map(lambda r: r == list(range(len(r))))).all()
    if slots != list(range(expected)) or not rounds_ok:
        missing = sorted(set(range(expected)) - set(slots))[:5]
        dup = df.loc[df.duplicated(["index", "round"]), "index"].tolist()[:5]
        raise ConfigError(
            f"shard manifests do not cover images 0..{expected - 1} exactly once "
            f"(missing {missing}, duplicated {dup}): rerun the generate jobs"
        )
    df["modifiers"] = df["modifiers"].map(_text)
    io.write_csv(out_manifest, df)
    n_pass = passing(df)["index"].nunique()
    log.info(
        "merged %d shard(s): %d images in up to %d round(s), %d of %d slots pass -> %s",
        len(frames),
        len(df),
        int(df["round"].max()) + 1,
        n_pass,
        expected,
        out_manifest,
    )
    if n_pass < expected:
        log.warning(
            "%s: %d of %d images short of the target (generate.max_rounds)",
            out_manifest,
            expected - n_pass,
            expected,
        )
    return df


def _text(value) -> str:
    # read_csv turns an empty string into NaN
    return value if isinstance(value, str) else ""
