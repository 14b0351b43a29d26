"""Dataset sources: a demo generator, a local folder/CSV, the ISIC Archive (isic-cli).

Every source ends in the same place: PNG files under ``out_dir``, a manifest with
:data:`DATA_COLUMNS` (plus source-specific extras) and a ``rejected.csv`` listing every input that
was not used, with the reason.
"""

from __future__ import annotations

import logging

import pandas as pd

from .. import io
from ..errors import ConfigError, DataSourceError
from . import demo, folder, isic

#: Columns of every raw-data manifest; empty strings where a source does not know the value.
DATA_COLUMNS = io.MANIFEST_COLUMNS + ["lesion_id", "patient_id", "width", "height", "note", "license"]
REJECTED_COLUMNS = ["path", "reason", "detail"]
SOURCES = ("demo", "folder", "isic")

log = logging.getLogger("dermsynth")


def acquire(
    dataset: str,
    spec: dict,
    out_dir,
    manifest_path,
    rejected_path,
    seed: int,
    classes: list[str],
    threads: int = 1,
) -> pd.DataFrame:
    """Fetch/import/generate one dataset as PNGs in ``out_dir``; write manifest and rejected.csv.

    ``spec`` is one entry of the config's ``datasets`` section; ``spec["source"]`` picks the source.
    ``threads`` decode/encode images in parallel (folder and isic sources).
    """
    source = spec.get("source")
    if source == "demo":
        manifest, rejected = demo.generate(dataset, spec.get("demo") or {}, out_dir, seed, classes)
    elif source == "folder":
        manifest, rejected = folder.import_folder(
            dataset, spec.get("folder") or {}, out_dir, classes, threads=threads, seed=seed
        )
    elif source == "isic":
        manifest, rejected = isic.download(
            dataset,
            spec.get("isic") or {},
            out_dir,
            classes,
            label_map=(spec.get("folder") or {}).get("label_map"),
            threads=threads,
        )
    else:
        raise ConfigError(f"datasets.{dataset}.source is '{source}'; allowed: {', '.join(SOURCES)}")
    manifest = normalise_manifest(manifest)
    rejected = rejected.reindex(columns=REJECTED_COLUMNS).fillna("")
    # written before the emptiness check: it is what the user needs to see why nothing was usable
    io.write_csv(rejected_path, rejected)
    if manifest.empty:
        raise DataSourceError(
            f"dataset '{dataset}' ({source}) gave no usable image ({len(rejected)} rejected, see "
            f"{rejected_path}): check the source settings"
        )
    io.write_csv(manifest_path, manifest)
    counts = manifest["label"].value_counts().to_dict()
    log.info("dataset %s: %d images %s, %d rejected", dataset, len(manifest), counts, len(rejected))
    return manifest


def normalise_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Put :data:`DATA_COLUMNS` first (filling unknowns with ''), extras after, lesion_id never empty."""
    df = df.copy()
    for col in DATA_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    if len(df):
        empty = df["lesion_id"].isna() | (df["lesion_id"].astype(str) == "")
        # one image per lesion is the safe assumption when the source does not say
        df.loc[empty, "lesion_id"] = df.loc[empty, "source_id"]
    extras = [c for c in df.columns if c not in DATA_COLUMNS]
    return df[DATA_COLUMNS + extras].fillna("")
