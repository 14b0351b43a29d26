"""Leakage-proof splits, split selection, and the real / hybrid / synthetic training regimes.

Splits are made per dataset, by group (lesion, else patient, else image), stratified by label.
Duplicates are searched within and across datasets by three keys: the file's sha256, the same
source_id in two datasets (an ISIC id), and a 64-bit perceptual hash (pHash of a 32x32 grayscale
thumbnail, Hamming distance <= ``phash_threshold``) confirmed by the correlation of the thumbnails
(``min_corr``): pHash alone pairs different lesions that share a layout (a centred dark blob in a
dermoscope ring). Measured here: HAM10000 600x450 vs 200x150 copies correlate >= 0.995, demo
copies resized + JPEG q60-q80 >= 0.998, different lesions <= 0.97 (demo) and <= 0.97 (HAM10000).
Within a dataset, duplicates are merged into one group before the split, so they cannot straddle
splits. Across datasets, a copy of a train image is removed from val/test (with its lesion group),
never the other way round. Every overlap found is listed in leakage.csv.
"""

from __future__ import annotations

import logging
import zlib

import cv2
import numpy as np
import pandas as pd

from . import io
from .errors import ConfigError, ImageError

log = logging.getLogger("dermsynth")

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["dataset", "source_id", "lesion_id", "label", "split", "sha256", "phash"]
LEAKAGE_COLUMNS = ["dataset_a", "source_id_a", "dataset_b", "source_id_b", "kind", "action", "hamming"]
REGIMES = ("real", "hybrid", "synthetic")
_RANK = {"train": 0, "val": 1, "test": 2}


# ---------------------------------------------------------------------------------------------
# perceptual hash


def thumbnail(path) -> np.ndarray:
    """32x32 grayscale float32 thumbnail (area interpolation)."""
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:  # formats OpenCV lacks: go through PIL, which raises a one-line ImageError
        gray = cv2.cvtColor(np.asarray(io.load_rgb(path)), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def phash_bits(thumb: np.ndarray) -> int:
    """64-bit pHash: signs of the 8x8 lowest DCT frequencies against their median."""
    low = cv2.dct(thumb)[:8, :8].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def phash(path) -> str:
    return f"{phash_bits(thumbnail(path)):016x}"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 1.0


def find_duplicates(
    df: pd.DataFrame,
    thumbs: np.ndarray,
    hashes: np.ndarray,
    threshold: int = 6,
    min_corr: float = 0.985,
    chunk: int = 1024,
) -> list[tuple[int, int, str, int]]:
    """All pairs (i < j, kind, hamming) that are exact, same-id (across datasets) or near duplicates."""
    pairs: dict[tuple[int, int], set] = {}
    for kind, col in (("sha256", "sha256"), ("source_id", "source_id")):
        for _, idx in df.groupby(col).indices.items():
            if len(idx) < 2:
                continue
            for a in range(len(idx)):
                for b in range(a + 1, len(idx)):
                    i, j = int(idx[a]), int(idx[b])
                    if kind == "source_id" and df["dataset"].iat[i] == df["dataset"].iat[j]:
                        continue
                    pairs.setdefault((i, j), set()).add(kind)
    n = len(hashes)
    dist = {}
    for s in range(0, n, chunk):
        d = np.bitwise_count(hashes[s : s + chunk, None] ^ hashes[None, :])
        ii, jj = np.nonzero(d <= threshold)
        for i, j in zip(ii + s, jj, strict=True):
            if j <= i:
                continue
            dist[(int(i), int(j))] = int(d[i - s, j])
    for i, j in dist:
        # pHash alone confuses different lesions that share a layout (centred dark blob):
        # a near copy must also match pixel by pixel at 32x32
        if (i, j) in pairs or _corr(thumbs[i], thumbs[j]) >= min_corr:
            pairs.setdefault((i, j), set()).add("phash")
    out = []
    for (i, j), kinds in sorted(pairs.items()):
        h = dist.get((i, j))
        if h is None:
            h = int(np.bitwise_count(hashes[i] ^ hashes[j]))
        out.append((i, j, "+".join(k for k in ("sha256", "source_id", "phash") if k in kinds), h))
    return out


# ---------------------------------------------------------------------------------------------
# splits


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _group_key(row: dict) -> str:
    """lesion_id, else patient_id, else source_id. A lesion_id equal to the source_id is the data
    stage's stand-in for "unknown" (one image per lesion), so a known patient_id wins over it."""
    lesion, patient, source = (row.get(c) or "" for c in ("lesion_id", "patient_id", "source_id"))
    if lesion and lesion != source:
        return f"lesion_id:{lesion}"
    if patient:
        return f"patient_id:{patient}"
    return f"source_id:{source}" if source else f"row:{row['_row']}"


def _fractions(dataset: str, fr: dict | None) -> tuple[float, float]:
    fr = fr or {}
    val, test = float(fr.get("val", 0.0) or 0.0), float(fr.get("test", 0.0) or 0.0)
    if min(val, test) < 0 or val + test > 1.0 + 1e-9:
        raise ConfigError(
            f"split fractions of '{dataset}' are val={val}, test={test}: each must be >= 0 "
            "and val + test <= 1 (test: 1.0 makes a test-only dataset)"
        )
    return val, test


def assign_groups(
    groups: list[tuple[list[int], str]], val: float, test: float, rng: np.random.Generator
) -> dict[int, str]:
    """Split per label: groups in random order, largest first, each to the split furthest below target."""
    out: dict[int, str] = {}
    if test >= 1.0:
        return {i: "test" for rows, _ in groups for i in rows}
    for label in sorted({lab for _, lab in groups}):
        mine = [g for g, lab in groups if lab == label]
        order = rng.permutation(len(mine))
        mine = sorted((mine[k] for k in order), key=len, reverse=True)  # stable: ties stay shuffled
        n = sum(len(g) for g in mine)
        target = {"train": n * (1 - val - test), "val": n * val, "test": n * test}
        count = dict.fromkeys(SPLITS, 0)
        for g in mine:
            split = max(SPLITS, key=lambda s: (target[s] - count[s], -_RANK[s]))
            count[split] += len(g)
            out.update(dict.fromkeys(g, split))
    return out


def _load(m) -> pd.DataFrame:
    return m.copy() if isinstance(m, pd.DataFrame) else io.read_csv(m)


def make_splits(
    manifests: dict[str, str],
    fractions: dict[str, dict],
    seed: int,
    splits_path,
    leakage_path,
    phash_threshold: int = 6,
    min_corr: float = 0.985,
    patient_groups: bool = False,
) -> pd.DataFrame:
    """Write splits.csv (dataset, source_id, lesion_id, label, split, sha256, phash) and leakage.csv.

    ``fractions[dataset] = {"val": f, "test": f}``; train is the rest, ``test: 1.0`` is test-only.
    Groups: lesion_id, else patient_id, else source_id (the ``lesion_id`` column of splits.csv is the
    group used). ``patient_groups`` also keeps all images of one patient together. Near duplicates:
    pHash Hamming distance <= ``phash_threshold`` and thumbnail correlation >= ``min_corr``.
    """
    frames = []
    for ds, m in manifests.items():
        df = _load(m)
        df["dataset"] = ds
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    for col in ("lesion_id", "patient_id", "source_id", "sha256"):
        df[col] = df[col].fillna("").astype(str) if col in df.columns else ""
    df["_row"] = np.arange(len(df))
    if df["sha256"].eq("").any():
        missing = df["sha256"].eq("")
        df.loc[missing, "sha256"] = [io.sha256_file(p) for p in df.loc[missing, "path"]]
    thumbs = np.empty((len(df), 32, 32), np.float32)
    for i, p in enumerate(df["path"]):
        try:
            thumbs[i] = thumbnail(p)
        except ImageError as e:
            raise ImageError(f"splits: {e}") from None
    hashes = np.array([phash_bits(t) for t in thumbs], dtype=np.uint64)
    df["phash"] = [f"{int(h):016x}" for h in hashes]
    keys = [_group_key(r) for r in df.to_dict("records")]
    # the column reports the group actually used, so a reader can check that no group straddles splits
    df["lesion_id"] = [k.split(":", 1)[1] for k in keys]
    pairs = find_duplicates(df, thumbs, hashes, phash_threshold, min_corr)

    # groups: same lesion key, plus within-dataset duplicates
    uf = _UnionFind(len(df))
    first: dict[tuple[str, str], int] = {}
    for i, (ds, key) in enumerate(zip(df["dataset"], keys, strict=True)):
        uf.union(first.setdefault((ds, key), i), i)
        if patient_groups and df["patient_id"].iat[i]:
            uf.union(first.setdefault((ds, "patient_id:" + df["patient_id"].iat[i]), i), i)
    ds_arr = df["dataset"].to_numpy()
    for i, j, _, _ in pairs:
        if ds_arr[i] == ds_arr[j]:
            uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(len(df))])

    split = np.empty(len(df), dtype=object)
    for ds in manifests:
        val, test = _fractions(ds, fractions.get(ds))
        idx = np.nonzero(ds_arr == ds)[0]
        comps: dict[int, list[int]] = {}
        for i in idx:
            comps.setdefault(int(roots[i]), []).append(int(i))
        groups = [(rows, df["label"].iloc[rows].mode().sort_values().iat[0]) for rows in comps.values()]
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(ds.encode())])
        for i, s in assign_groups(groups, val, test, rng).items():
            split[i] = s

    # across datasets: the copy on the later split goes, with its whole group
    final = split.copy()
    leak = []
    for i, j, kind, h in pairs:
        a, b = (i, j)
        if ds_arr[a] == ds_arr[b]:
            action = "grouped"
        elif split[a] == split[b]:
            action = f"kept (both {split[a]})"
        else:
            drop = a if _RANK[split[a]] > _RANK[split[b]] else b
            final[roots == roots[drop]] = "excluded"
            action = "excluded_a" if drop == a else "excluded_b"
        leak.append(
            {
                "dataset_a": ds_arr[a],
                "source_id_a": df["source_id"].iat[a],
                "dataset_b": ds_arr[b],
                "source_id_b": df["source_id"].iat[b],
                "kind": kind,
                "action": action,
                "hamming": h,
            }
        )
    df["split"] = final
    out = df[SPLIT_COLUMNS].reset_index(drop=True)
    io.write_csv(splits_path, out)
    io.write_csv(leakage_path, pd.DataFrame(leak, columns=LEAKAGE_COLUMNS))
    summary = out.groupby(["dataset", "split"]).size().to_dict()
    log.info("splits: %s; %d overlaps listed in %s", summary, len(leak), leakage_path)
    return out


def select(manifest, splits, split: str, datasets: list[str] | None = None) -> pd.DataFrame:
    """Rows of ``manifest`` whose (dataset, source_id) is in ``split`` (optionally only ``datasets``)."""
    if split not in SPLITS + ("excluded",):
        raise ConfigError(f"split '{split}' is not one of {', '.join(SPLITS)}, excluded")
    m, s = _load(manifest), _load(splits)
    keys = s.loc[s["split"] == split, ["dataset", "source_id"]]
    if datasets is not None:
        keys = keys[keys["dataset"].isin(list(datasets))]
        m = m[m["dataset"].isin(list(datasets))]
    m = m.astype({"source_id": str})
    keys = keys.astype({"source_id": str}).drop_duplicates()
    return m.merge(keys, on=["dataset", "source_id"], how="inner").reset_index(drop=True)


def make_regime(
    real_train: pd.DataFrame,
    synthetic: pd.DataFrame,
    regime: str,
    synthetic_fraction: float,
    seed: int,
    classes: list[str],
) -> pd.DataFrame:
    """Training list of one regime, with ``origin`` = real | synthetic.

    hybrid: all real images plus, per class, round(n_real * f / (1 - f)) synthetic ones sampled without
    replacement, so synthetic images are ~f of the total (f = 0.75: three synthetic per real).
    """
    if regime not in REGIMES:
        raise ConfigError(f"hybrid regime '{regime}' is unknown; allowed: {', '.join(REGIMES)}")
    real = real_train[real_train["label"].isin(classes)].assign(origin="real")
    syn = synthetic[synthetic["label"].isin(classes)].assign(origin="synthetic")
    if regime == "real":
        return real.reset_index(drop=True)
    if regime == "synthetic":
        return syn.reset_index(drop=True)
    f = float(synthetic_fraction)
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"hybrid.synthetic_fraction is {f}; it must be in [0, 1) for the hybrid regime")
    parts = [real]
    rng = np.random.default_rng(int(seed))
    for label in classes:
        want = int(round((real["label"] == label).sum() * f / (1 - f)))
        pool = syn[syn["label"] == label]
        if len(pool) < want:
            log.warning(
                "hybrid: %s needs %d synthetic images, only %d available: using all", label, want, len(pool)
            )
            want = len(pool)
        pick = np.sort(rng.choice(len(pool), size=want, replace=False)) if want else np.array([], int)
        parts.append(pool.iloc[pick])
    return pd.concat(parts, ignore_index=True).fillna("")


def write_split_manifests(
    cls_manifests: dict[str, str],
    sd_manifests: dict[str, str],
    fractions: dict[str, dict],
    seed: int,
    finetune_datasets: list[str],
    splits_path,
    leakage_path,
    finetune_path,
    out_dir,
    phash_threshold: int = 6,
    min_corr: float = 0.985,
    patient_groups: bool = False,
) -> pd.DataFrame:
    """The split stage: splits.csv + leakage.csv, then per-dataset split manifests and the fine-tune set.

    Splits are decided once on the classifier-size images; the diffusion-size manifest of the same
    images is filtered with the same assignment, so fine-tuning never sees a val/test lesion.
    """
    splits = make_splits(
        cls_manifests,
        fractions,
        seed,
        splits_path,
        leakage_path,
        phash_threshold=phash_threshold,
        min_corr=min_corr,
        patient_groups=patient_groups,
    )
    for ds, manifest in cls_manifests.items():
        for name in SPLITS:
            io.write_csv(f"{out_dir}/{ds}/{name}.csv", select(manifest, splits, name))
    finetune = pd.concat(
        [select(sd_manifests[ds], splits, "train") for ds in finetune_datasets], ignore_index=True
    )
    io.write_csv(finetune_path, finetune)
    log.info("fine-tune set: %d images (%s)", len(finetune), finetune["label"].value_counts().to_dict())
    return splits


def write_regime(
    real_manifests: list[str],
    synthetic_manifest: str | None,
    regime: str,
    synthetic_fraction: float,
    seed: int,
    classes: list[str],
    out_path,
) -> pd.DataFrame:
    """The hybrid stage: one regime's training list from the real train splits and the kept synthetic set."""
    real = pd.concat([io.read_csv(p) for p in real_manifests], ignore_index=True)
    synthetic = io.read_csv(synthetic_manifest) if synthetic_manifest else real.iloc[0:0]
    out = make_regime(real, synthetic, regime, synthetic_fraction, seed, classes)
    io.write_csv(out_path, out)
    log.info("regime %s: %s", regime, out.groupby(["origin", "label"]).size().to_dict())
    return out
