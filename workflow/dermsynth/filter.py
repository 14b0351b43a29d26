"""The filter stage: per-image artifact checks plus the set-level ones, and contact sheets.

Also a command line for any folder of images (labels from subfolders):
``python -m dermsynth.filter --config config/config.yaml --images DIR --out DIR``.

``filter_synthetic`` keeps a generated image only if every check passes: the per-image verdict of
``dermsynth.artifacts`` (the same one generation tops up against) and two checks that need every
image at once. Each rejected image gets a row in ``rejected.csv`` whose reason is the first failing
one in ``artifacts.REASONS`` order (the others are listed in its detail):

- ``memorized``: a near copy (also flipped / rotated) of a fine-tune image (``dermsynth.audit``).
- ``memorized_semantic``: a near copy the pixel audit misses (cropped, slightly rotated, recoloured,
  re-encoded), found in an embedding with a threshold calibrated each run
  (``dermsynth.semantic_audit``).
- ``duplicate``: same pixels as, or a near copy (pHash + thumbnail correlation, as in the splits) of,
  an image kept earlier in manifest order.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from . import audit, io, semantic_audit
from .artifacts import REASONS, check_image, image_verdict, thresholds
from .errors import ConfigError, DermsynthError
from .imaging import contact_sheet, pairs_sheet
from .progress import Bar
from .splits import find_duplicates, phashes, thumbnails

log = logging.getLogger("dermsynth.filter")

REJECTED_COLUMNS = ["path", "label", "sampler", "reason", "score", "detail"]


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _near_duplicates(
    thumbs: np.ndarray, pixel_hashes: list[str], thr: dict
) -> dict[int, tuple[int, str, int]]:
    """For image j: (the earlier image i it copies, kind, pHash distance), via the splits' search."""
    d = thr["duplicates"]
    frame = pd.DataFrame(
        {
            "sha256": pixel_hashes,
            "source_id": [str(i) for i in range(len(pixel_hashes))],
            "dataset": "synthetic",
        }
    )
    # exact pixel copies are always duplicates; near copies only when the check is on
    threshold = int(d["phash_threshold"]) if d["activate"] else -1
    pairs = find_duplicates(
        frame, thumbs, phashes(thumbs), threshold=threshold, min_corr=float(d["min_corr"])
    )
    out: dict[int, tuple[int, str, int]] = {}
    for i, j, kind, ham in pairs:
        out.setdefault(j, (i, kind, ham))  # pairs come sorted: the first i is the earliest copy
    return out


def _semantic(
    paths, verdicts, finetune, mem, threads, quality_cfg, semantic_path, calibration_path, model=None
) -> None:
    """The semantic audit: adds ``memorized_semantic`` to the verdicts, writes its two outputs."""
    sem = mem["semantic"]
    rows = pd.DataFrame(columns=semantic_audit.NEAREST_COLUMNS)
    calib: dict = {"activate": False}
    if finetune is not None and mem["activate"] and sem["activate"]:
        rows, calib = semantic_audit.semantic_audit(
            paths, io.read_csv(finetune), sem, threads, quality_cfg, model
        )
        for i in np.flatnonzero(rows["memorized_semantic"].to_numpy(bool)):
            r = rows.iloc[i]
            reasons = verdicts[i]["reasons"]
            if not reasons or reasons[0][0] not in ("unreadable", "sha_mismatch"):
                detail = f"cosine {r.similarity:.4f} to {r.nearest} ({r.view}; threshold {r.threshold:.4f})"
                reasons.append(("memorized_semantic", float(r.similarity), detail))
    if semantic_path is not None:
        io.write_csv(semantic_path, rows)
    if calibration_path is not None:
        io.write_json(calibration_path, calib)


def filter_synthetic(
    manifests: list[str],
    out_manifest,
    rejected_path,
    cfg: dict,
    threads: int = 1,
    finetune=None,
    nearest_path=None,
    semantic_path=None,
    calibration_path=None,
    quality_cfg: dict | None = None,
    feature_model=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every generated image; write kept rows (all columns) and ``rejected.csv``.

    ``cfg`` is the config's ``filter`` section. With ``finetune`` (a manifest of the fine-tune
    images) every image is also audited for memorization, and ``nearest_path`` receives each
    image's nearest fine-tune image; ``semantic_path`` and ``calibration_path`` the semantic
    audit's nearest neighbours and its threshold calibration (JSON). ``quality_cfg`` (the quality
    section) configures a ``dinov2`` / ``clip`` / ``tiny`` embedding, ``feature_model`` (``models.<kind>``)
    names a dinov2 / clip model. Returns (kept, rejected).
    """
    thr = thresholds(cfg)
    verdict = image_verdict(cfg)
    if not manifests:
        raise ConfigError("filter_synthetic needs at least one generation manifest")
    df = io.read_manifests(manifests)
    shas = df["sha256"].map(_text) if "sha256" in df.columns else pd.Series([""] * len(df))
    paths = df["path"].map(str).tolist()
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        verdicts = list(
            Bar(
                pool.map(lambda a: check_image(a[0], a[1] or None, verdict), zip(paths, shas, strict=True)),
                total=len(paths),
                desc="filter: checks",
            )
        )
    thumbs, readable = thumbnails(paths, threads, "filter: thumbnails")

    mem = thr["memorization"]
    nearest = pd.DataFrame(columns=audit.NEAREST_COLUMNS)
    if finetune is not None and mem["activate"]:
        train = io.read_csv(finetune)["path"].map(str).tolist()
        nearest = audit.memorization_audit(
            paths,
            train,
            mem["min_similarity"],
            mem["transforms"],
            int(mem["block"]),
            threads,
            synthetic_thumbs=(thumbs, readable),
        )
        for i in np.flatnonzero(nearest["memorized"].to_numpy()):
            r = nearest.iloc[i]
            detail = f"similarity {r.similarity:.4f} to {r.nearest} ({r.transform})"
            detail += f", pHash distance {r.phash_distance}"
            reasons = verdicts[i]["reasons"]
            if not reasons or reasons[0][0] not in ("unreadable", "sha_mismatch"):
                reasons.append(("memorized", float(r.similarity), detail))
    if nearest_path is not None:
        io.write_csv(nearest_path, nearest)
    _semantic(
        paths, verdicts, finetune, mem, threads, quality_cfg, semantic_path, calibration_path, feature_model
    )

    # duplicates are judged in manifest order among images that pass every other check:
    # the first copy is kept, later copies are rejected
    ok = [i for i, v in enumerate(verdicts) if not v["reasons"]]
    dups = _near_duplicates(thumbs[ok], [verdicts[i]["pixel_hash"] for i in ok], thr) if ok else {}
    for jj, (ii, kind, ham) in dups.items():
        what = "same pixels as" if "sha256" in kind else f"near copy (pHash distance {ham}) of"
        verdicts[ok[jj]]["reasons"].append(("duplicate", float(ham), f"{what} {paths[ok[ii]]}"))

    order = {r: k for k, r in enumerate(REASONS)}
    sampler = df["sampler"].map(_text) if "sampler" in df.columns else pd.Series([""] * len(df))
    keep, rejected = [], []
    for i, v in enumerate(verdicts):
        if not v["reasons"]:
            keep.append(i)
            continue
        reasons = sorted(v["reasons"], key=lambda r: order[r[0]])
        reason, score, detail = reasons[0]
        if len(reasons) > 1:
            detail += "; also " + ", ".join(r[0] for r in reasons[1:])
        rejected.append(
            {
                "path": paths[i],
                "label": _text(df["label"].iat[i]),
                "sampler": sampler.iat[i],
                "reason": reason,
                "score": score,
                "detail": detail,
            }
        )
    kept = df.iloc[keep].reset_index(drop=True)
    rej = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    io.write_csv(out_manifest, kept)
    io.write_csv(rejected_path, rej)
    counts = rej["reason"].value_counts().to_dict()
    log.info("filter: kept %d of %d images; rejected %s", len(kept), len(df), counts or "none")
    return kept, rej


# ---------------------------------------------------------------------------------------------
# report fragment


def failed_checks(reason: str, detail: str) -> list[str]:
    """Every check a rejected row failed: its reason and those its detail lists after '; also '."""
    out = [reason]
    if "; also " in str(detail):
        out += [r.strip() for r in str(detail).rsplit("; also ", 1)[1].split(",") if r.strip() in REASONS]
    return out


def class_reject_rates(labels: pd.Series, rej: pd.DataFrame, max_gap: float) -> pd.DataFrame:
    """Per check: the share of each class's images that fail it (every failing check counts, not
    only the first), the largest difference between classes, and whether it exceeds ``max_gap``."""
    totals = labels.map(_text).value_counts().sort_index()
    classes = totals.index.tolist()
    hits = {r: dict.fromkeys(classes, 0) for r in REASONS}
    for r in rej.itertuples():
        for c in set(failed_checks(r.reason, r.detail)):
            if _text(r.label) in hits[c]:
                hits[c][_text(r.label)] += 1
    rows = []
    for r in REASONS:
        rates = {c: hits[r][c] / totals[c] for c in classes}
        gap = max(rates.values()) - min(rates.values()) if rates else 0.0
        rows.append({"check": r, **rates, "gap": gap, "flagged": bool(gap > max_gap)})
    return pd.DataFrame(rows, columns=["check", *classes, "gap", "flagged"])


def _histogram(nearest: pd.DataFrame, min_similarity: float, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = nearest["similarity"].dropna().to_numpy(float)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if len(sims):
        lo = min(float(sims.min()), float(min_similarity)) - 0.01
        ax.hist(sims, bins=np.linspace(lo, 1.0, 60), color="#4878a8")
    ax.axvline(min_similarity, color="#c03030", ls="--", label=f"memorized at >= {min_similarity}")
    ax.set_xlabel("similarity to the nearest fine-tune image (32x32 gray correlation, best of 8 symmetries)")
    ax.set_ylabel("synthetic images")
    ax.xaxis.label.set_size(8)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def section_filter(
    total: int,
    rej: pd.DataFrame,
    nearest: pd.DataFrame,
    cfg: dict,
    section_md,
    hist_png,
    pairs_png,
    sheets: dict[str, str],
    closest: int = 8,
    per_reason: int = 16,
    targets: pd.DataFrame | None = None,
    labels: pd.Series | None = None,
    semantic: pd.DataFrame | None = None,
    calibration: dict | None = None,
    semantic_png=None,
) -> None:
    """The filter's report fragment: counts per reason, kept vs target per class x sampler
    (``targets``, from ``kept_vs_target``), the audit's histogram and closest pairs, and one contact
    sheet per reason (figures are referenced relative to results/report/). With ``labels`` (the class
    of every checked image) a table gives each check's reject rate per class and flags a check whose
    rates differ by more than ``filter.max_class_gap``. With ``semantic`` (nearest_semantic.csv) and
    ``calibration`` the semantic audit's figures and closest pairs (``semantic_png``) follow."""
    thr = thresholds(cfg)
    md = ["## Artifact filter and memorization audit", ""]
    md.append(f"{total - len(rej)} of {total} synthetic images kept; {len(rej)} rejected.")
    md.append("")
    if targets is not None and len(targets):
        md += [
            "Generation replaces an image that fails a per-image check by a new seed, up to "
            "`generate.max_rounds` rounds; duplicates and memorized images are only dropped here.",
            "",
            "| class | sampler | target | generated | kept | short |",
            "|---|---|---:|---:|---:|---:|",
        ]
        md += [
            f"| {r.label} | {r.sampler} | {r.target} | {r.generated} | {r.kept} | {r.short} |"
            for r in targets.itertuples()
        ]
        md.append("")
    counts = rej["reason"].value_counts()
    md += ["| reason | images | check |", "|---|---:|---|"]
    active = {
        "clipped": "clipped",
        "cast": "cast",
        "noise": "noise",
        "tiling": "tiling",
        "blurry": "blur",
        "no_lesion": "lesion",
        "duplicate": "duplicates",
        "memorized": "memorization",
    }
    for r in REASONS:
        state = "on"
        if r in active and not thr[active[r]]["activate"]:
            state = "near copies off (exact copies still)" if r == "duplicate" else "off"
        mem = thr["memorization"]
        if r == "memorized_semantic" and not (mem["activate"] and mem["semantic"]["activate"]):
            state = "off"
        md.append(f"| {r} | {int(counts.get(r, 0))} | {state} |")
    md.append("")
    if labels is not None and len(labels):
        gap = float(thr["max_class_gap"])
        rates = class_reject_rates(labels, rej, gap)
        classes = [c for c in rates.columns if c not in ("check", "gap", "flagged")]
        flagged = rates[rates["flagged"]]["check"].tolist()
        md += [
            f"Reject rate of each check per class (an image counts for every check it fails); a gap above"
            f" `filter.max_class_gap` = {gap} is flagged, as it skews the kept set by class."
            + (f" **Flagged: {', '.join(flagged)}.**" if flagged else " No check is flagged."),
            "",
            "| check | " + " | ".join(classes) + " | gap | |",
            "|---|" + "---:|" * (len(classes) + 1) + "---|",
        ]
        for d in rates.to_dict("records"):  # class names need not be identifiers
            cells = " | ".join(f"{100 * d[c]:.1f} %" for c in classes)
            flag = "**flagged**" if d["flagged"] else ""
            md.append(f"| {d['check']} | {cells} | {100 * d['gap']:.1f} pt | {flag} |")
        md.append("")
        for c in flagged:
            log.warning("filter: check %s rejects classes unevenly (gap > %s)", c, gap)

    def sec(p) -> str:  # figures sit beside the fragment, which is pasted into results/report/
        return f"sections/{Path(p).name}"

    for r in REASONS:
        g = rej[rej["reason"] == r].head(per_reason)
        contact_sheet(
            g["path"].tolist(),
            sheets[r],
            ncols=8,
            labels=[f"{s:.3g}" for s in g["score"]] if len(g) else None,
            title=f"rejected: {r} ({int(counts.get(r, 0))})" if len(g) else None,
        )
        if len(g):
            md += [f"![rejected: {r}]({sec(sheets[r])})", ""]
    _histogram(nearest, float(thr["memorization"]["min_similarity"]), hist_png)
    sims = nearest["similarity"].dropna()
    if len(sims):
        q = sims.quantile([0.5, 0.99]).to_numpy()
        md.append(
            f"Memorization audit: nearest fine-tune image of each synthetic image (flips and quarter turns"
            f" included). Similarity median {q[0]:.3f}, 99th percentile {q[1]:.3f}, max {sims.max():.4f};"
            f" {int(nearest['memorized'].sum())} at or above {thr['memorization']['min_similarity']}"
            f" (rejected as `memorized`)."
            f" Median pHash distance {nearest['phash_distance'].median():.0f} bits."
        )
    else:
        md.append("Memorization audit: off (no fine-tune images or `filter.memorization.activate: false`).")
    md += ["", f"![nearest-neighbour similarity]({sec(hist_png)})", ""]
    top = nearest.dropna(subset=["similarity"]).nlargest(closest, "similarity")
    views = [r.transform for r in top.itertuples()]  # no column at all when nothing was audited
    pairs_sheet(top, pairs_png, views, "closest pairs: synthetic | fine-tune")
    md += [f"![closest pairs]({sec(pairs_png)})", ""]
    if semantic is not None and semantic_png is not None:
        closest_sem = int(thr["memorization"]["semantic"]["closest"])
        md += semantic_audit.section_lines(
            semantic, calibration or {}, semantic_png, closest_sem, sec(semantic_png)
        )
    io.write_text(section_md, "\n".join(md) + "\n")


def filter_stage(
    manifests: list[str],
    finetune,
    kept_path,
    rejected_path,
    nearest_path,
    section_md,
    hist_png,
    pairs_png,
    sheets: list[str],
    cfg: dict,
    threads: int = 1,
    semantic_path=None,
    calibration_path=None,
    semantic_png=None,
    quality_cfg: dict | None = None,
    feature_model=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The filter rule: filter + audits, then the report fragment (``sheets`` in ``REASONS`` order;
    the semantic audit's part when ``semantic_path``, ``calibration_path`` and ``semantic_png`` are given)."""
    if len(sheets) != len(REASONS):
        raise ConfigError(f"{len(sheets)} contact sheet paths for {len(REASONS)} reasons")
    kept, rej = filter_synthetic(
        manifests,
        kept_path,
        rejected_path,
        cfg,
        threads,
        finetune,
        nearest_path,
        semantic_path,
        calibration_path,
        quality_cfg,
        feature_model,
    )
    with_semantic = None not in (semantic_path, calibration_path, semantic_png)
    nearest = io.read_csv(nearest_path)
    made = io.read_manifests(manifests)
    targets = kept_vs_target(made, kept)
    for r in targets[targets["short"] > 0].itertuples():
        log.warning("filter: %s/%s keeps %d of its target %d images", r.label, r.sampler, r.kept, r.target)
    section_filter(
        len(kept) + len(rej),
        rej,
        nearest,
        cfg,
        section_md,
        hist_png,
        pairs_png,
        dict(zip(REASONS, sheets, strict=True)),
        targets=targets,
        labels=made["label"],
        semantic=io.read_csv(semantic_path) if with_semantic else None,
        calibration=json.loads(Path(calibration_path).read_text()) if with_semantic else None,
        semantic_png=semantic_png if with_semantic else None,
    )
    return kept, rej


def kept_vs_target(made: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """Per label x sampler: target (image slots; one per row without an ``index`` column), images
    generated (top-up rounds included), kept, and the shortfall."""
    cols = ["label", "sampler", "target", "generated", "kept", "short"]
    if "sampler" not in made.columns:
        return pd.DataFrame(columns=cols)
    keys = ["label", "sampler"]
    slot = made["index"] if "index" in made.columns else pd.Series(range(len(made)), index=made.index)
    out = (
        made.assign(slot=slot)
        .groupby(keys, sort=False)
        .agg(target=("slot", "nunique"), generated=("slot", "size"))
    )
    out["kept"] = kept.groupby(keys).size().reindex(out.index, fill_value=0) if len(kept) else 0
    out["short"] = (out["target"] - out["kept"]).clip(lower=0)
    return out.reset_index()[cols]


# ---------------------------------------------------------------------------------------------
# command line: filter a folder of images from any generator


def folder_manifest(images) -> pd.DataFrame:
    """path, label (the first subfolder under ``images``; empty for files at its top), sampler
    (empty) of every image file below ``images``, in path order; no sha256: files are checked as they are."""
    from .data.folder import IMAGE_SUFFIXES

    root = Path(images)
    if not root.is_dir():
        raise ConfigError(f"--images {root}: not a folder")
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in f.parts)
    )
    if not files:
        raise ConfigError(f"--images {root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    labels = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "" for f in files]
    return pd.DataFrame({"path": [str(f) for f in files], "label": labels, "sampler": ""})


def main(argv=None) -> int:
    """``python -m dermsynth.filter --config C --images DIR --out DIR``: the filter rule's per-image
    and duplicate checks (and the memorization audit with ``--finetune``) on any folder of images;
    writes filtered.csv and rejected.csv to ``--out`` and prints each check's reject rate per class."""
    import argparse

    import yaml

    from .config import validate

    p = argparse.ArgumentParser(prog="python -m dermsynth.filter", description=main.__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="workflow config (its filter section is used)")
    p.add_argument("--images", required=True, help="folder of images; labels from its subfolders")
    p.add_argument("--out", required=True, help="output folder for filtered.csv and rejected.csv")
    p.add_argument("--finetune", default=None, help="manifest of fine-tune images (audits memorization)")
    p.add_argument("--schema", default=None, help="config schema (default: schema.yaml beside --config)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg_path = Path(a.config)
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        cfg = validate(cfg, a.schema or cfg_path.parent / "schema.yaml")["filter"]
        made = folder_manifest(a.images)
        out = Path(a.out)
        manifest = out / "input.csv"
        io.write_csv(manifest, made)
        _, rej = filter_synthetic(
            [str(manifest)],
            out / "filtered.csv",
            out / "rejected.csv",
            cfg,
            a.threads,
            a.finetune,
            out / "nearest.csv" if a.finetune else None,
        )
    except (DermsynthError, OSError) as e:
        print(f"error: {e}")
        return 2
    rates = class_reject_rates(made["label"], rej, float(thresholds(cfg)["max_class_gap"]))
    print(rates[rates.drop(columns=["check", "gap", "flagged"]).sum(axis=1) > 0].to_string(index=False))
    print(
        f"kept {len(made) - len(rej)} of {len(made)}; wrote {out / 'filtered.csv'} and {out / 'rejected.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
