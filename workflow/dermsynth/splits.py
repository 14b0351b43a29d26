"""Leakage-proof splits, split selection, and the real / hybrid / synthetic training regimes.

Splits are made per dataset, by group (lesion, else patient, else image), stratified by label.
Duplicates are searched within and across datasets by four keys: the file's sha256, the same
source_id in two datasets (an ISIC id), the same known lesion_id in two datasets, and a 64-bit
perceptual hash (pHash of a 32x32 grayscale thumbnail, Hamming distance <= ``phash_threshold``)
confirmed by the correlation of the thumbnails (``min_corr``): pHash alone pairs different lesions
that share a layout (a centred dark blob in a dermoscope ring). Measured on the real HAM10000
(benchmarks/dedup.py, 10,015 images at 200x150 + 124 of them at 600x450 under other ids): all 124
copies found (Hamming <= 4, correlation >= 0.995); among 1,801 pairs within Hamming 6, different
lesions correlate <= 0.975 except one pair that is the same photograph filed under two lesion ids
(ISIC_0030074 / ISIC_0025226); the pairwise comparison of 5.1e7 pairs takes ~1 s.
A lesion photographed again (other zoom, angle, light) under a second lesion id has other pixels:
``split.embedding`` pairs those by descriptor similarity (dermsynth.lesion_match, kind ``embedding``).
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

from . import io, lesion_match
from .errors import ConfigError, ImageError
from .imaging import image_threads
from .progress import Bar

log = logging.getLogger("dermsynth")

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["dataset", "source_id", "lesion_id", "label", "split", "sha256", "phash"]
LEAKAGE_COLUMNS = [
    "dataset_a",
    "source_id_a",
    "dataset_b",
    "source_id_b",
    "kind",
    "action",
    "hamming",
    "similarity",
]
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


def _thumbnail_or_error(path) -> np.ndarray | ImageError:
    try:
        return thumbnail(path)
    except ImageError as e:
        return e


def thumbnails(
    paths, threads: int = 1, desc: str = "thumbnails", strict: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32) float32 thumbnails of ``paths``, decoded on ``threads`` threads, and n bools: readable.

    An unreadable image gets a zero thumbnail and False, or with ``strict`` raises its ImageError.
    """
    paths = [str(p) for p in paths]
    out = np.zeros((len(paths), 32, 32), np.float32)
    readable = np.ones(len(paths), bool)
    with image_threads(threads) as pmap:
        for i, t in enumerate(Bar(pmap(_thumbnail_or_error, paths), total=len(paths), desc=desc)):
            if isinstance(t, ImageError):
                if strict:
                    raise t
                readable[i] = False
            else:
                out[i] = t
    return out, readable


def phashes(thumbs: np.ndarray) -> np.ndarray:
    """The 64-bit pHash of every thumbnail, as uint64."""
    return np.array([phash_bits(t) for t in thumbs], dtype=np.uint64)


def phash(path) -> str:
    return f"{phash_bits(thumbnail(path)):016x}"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 1.0


def near_pairs(hashes: np.ndarray, threshold: int, chunk: int = 2048) -> tuple[np.ndarray, ...]:
    """All (i < j, Hamming distance) with distance <= ``threshold``, as three int arrays.

    Vectorised: one block of rows against all columns at a time (uint64 XOR + popcount), so 10k
    hashes (5e7 pairs) take about a second and memory stays at ``chunk * n`` bytes.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    out_i, out_j, out_d = [], [], []
    for s in range(0, n, chunk):
        block = hashes[s : s + chunk]
        # only columns right of the block's first row can hold j > i
        d = np.bitwise_count(block[:, None] ^ hashes[None, s:]).astype(np.uint8)
        ii, jj = np.nonzero(d <= threshold)
        keep = jj > ii  # column index is relative to s, like ii
        ii, jj = ii[keep], jj[keep]
        out_i.append(ii + s)
        out_j.append(jj + s)
        out_d.append(d[ii, jj])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (
        np.concatenate(out_i).astype(np.int64),
        np.concatenate(out_j).astype(np.int64),
        np.concatenate(out_d).astype(np.int64),
    )


def thumb_corr(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pearson correlation of thumbnails ``i[k]`` and ``j[k]`` for every k (vectorised)."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    flat = flat - flat.mean(1, keepdims=True)
    norm = np.sqrt((flat * flat).sum(1))
    out = np.ones(len(i))
    if len(i):
        num = np.einsum("ij,ij->i", flat[i], flat[j])
        den = norm[i] * norm[j]
        ok = den > 0
        out[ok] = num[ok] / den[ok]
    return out


def _group_pairs(values, allowed=None) -> list[tuple[int, int]]:
    """(i < j) for rows sharing a non-empty value; ``allowed(i, j)`` filters."""
    pairs = []
    groups: dict[str, list[int]] = {}
    for k, v in enumerate(values):
        if v:
            groups.setdefault(v, []).append(k)
    for idx in groups.values():
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if allowed is None or allowed(idx[a], idx[b]):
                    pairs.append((idx[a], idx[b]))
    return pairs


def find_duplicates(
    df: pd.DataFrame,
    thumbs: np.ndarray,
    hashes: np.ndarray,
    threshold: int = 6,
    min_corr: float = 0.985,
    chunk: int = 2048,
    lesions: list[str] | None = None,
) -> list[tuple[int, int, str, int]]:
    """All pairs (i < j, kind, hamming) that are exact, same-id (across datasets) or near duplicates.

    kinds: ``sha256`` (same file), ``source_id`` (same id in two datasets, e.g. an ISIC id),
    ``lesion_id`` (same known lesion in two datasets; ``lesions`` gives the group keys) and
    ``phash`` (Hamming <= ``threshold`` and thumbnail correlation >= ``min_corr``).
    """
    ds = df["dataset"].to_numpy()
    pairs: dict[tuple[int, int], set] = {}
    for i, j in _group_pairs(df["sha256"].tolist()):
        pairs.setdefault((i, j), set()).add("sha256")
    for i, j in _group_pairs(df["source_id"].tolist(), lambda i, j: ds[i] != ds[j]):
        pairs.setdefault((i, j), set()).add("source_id")
    if lesions is not None:
        known = [k if k.startswith("lesion_id:") else "" for k in lesions]
        for i, j in _group_pairs(known, lambda i, j: ds[i] != ds[j]):
            pairs.setdefault((i, j), set()).add("lesion_id")
    ii, jj, dd = near_pairs(hashes, threshold, chunk)
    # pHash alone confuses different lesions that share a layout (centred dark blob):
    # a near copy must also match pixel by pixel at 32x32
    corr = thumb_corr(thumbs, ii, jj)
    dist = {}
    for i, j, d, c in zip(ii.tolist(), jj.tolist(), dd.tolist(), corr.tolist(), strict=True):
        dist[(i, j)] = d
        if (i, j) in pairs or c >= min_corr:
            pairs.setdefault((i, j), set()).add("phash")
    out = []
    for (i, j), kinds in sorted(pairs.items()):
        h = dist.get((i, j))
        if h is None:
            h = int(np.bitwise_count(hashes[i] ^ hashes[j]))
        out.append(
            (i, j, "+".join(k for k in ("sha256", "source_id", "lesion_id", "phash") if k in kinds), h)
        )
    return out


def embedding_pairs(
    df: pd.DataFrame, keys: list[str], known: list, hashes: np.ndarray, cfg: dict | None, threads: int = 1
) -> tuple[list[tuple[int, int, str, int]], dict[tuple[int, int], float]]:
    """Same-lesion pairs by descriptor similarity (dermsynth.lesion_match) that no other key found.

    Pairs inside one known group (same dataset and lesion key) tell nothing new and are dropped.
    Returns pairs like :func:`find_duplicates` (kind ``embedding``) and their scores.
    """
    if not cfg or not lesion_match.validate(cfg)["activate"]:
        return [], {}
    ds = df["dataset"].to_numpy()
    seen = {(i, j) for i, j, _, _ in known}
    out, score = [], {}
    for i, j, s in lesion_match.find_pairs(df["path"].tolist(), cfg, threads):
        if (i, j) in seen or (ds[i] == ds[j] and keys[i] == keys[j]):
            continue
        out.append((i, j, "embedding", int(np.bitwise_count(hashes[i] ^ hashes[j]))))
        score[(i, j)] = s
    return out, score


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
    threads: int = 1,
    embedding: dict | None = None,
) -> pd.DataFrame:
    """Write splits.csv (dataset, source_id, lesion_id, label, split, sha256, phash) and leakage.csv.

    ``fractions[dataset] = {"val": f, "test": f}``; train is the rest, ``test: 1.0`` is test-only.
    Groups: lesion_id, else patient_id, else source_id (the ``lesion_id`` column of splits.csv is the
    group used). ``patient_groups`` also keeps all images of one patient together. Near duplicates:
    pHash Hamming distance <= ``phash_threshold`` and thumbnail correlation >= ``min_corr``.
    ``embedding`` (config ``split.embedding``; None = off) adds re-photographs of one lesion.
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
    try:
        thumbs, _ = thumbnails(df["path"], threads, "pHash", strict=True)
    except ImageError as e:
        raise ImageError(f"splits: {e}") from None
    hashes = phashes(thumbs)
    df["phash"] = [f"{int(h):016x}" for h in hashes]
    keys = [_group_key(r) for r in df.to_dict("records")]
    # the column reports the group actually used, so a reader can check that no group straddles splits
    df["lesion_id"] = [k.split(":", 1)[1] for k in keys]
    pairs = find_duplicates(df, thumbs, hashes, phash_threshold, min_corr, lesions=keys)
    extra, similarity = embedding_pairs(df, keys, pairs, hashes, embedding, threads)
    pairs = pairs + extra

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
                "similarity": similarity.get((i, j), ""),
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
    threads: int = 1,
    embedding: dict | None = None,
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
        threads=threads,
        embedding=embedding,
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
    real = io.read_manifests(real_manifests)
    synthetic = io.read_csv(synthetic_manifest) if synthetic_manifest else real.iloc[0:0]
    out = make_regime(real, synthetic, regime, synthetic_fraction, seed, classes)
    io.write_csv(out_path, out)
    log.info("regime %s: %s", regime, out.groupby(["origin", "label"]).size().to_dict())
    return out
