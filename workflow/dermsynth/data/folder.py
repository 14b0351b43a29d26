"""Import images that already exist on disk, and the one conversion path every source shares.

Layouts understood (``folder.path`` is a directory, or ``folder.csv`` / ``folder.path`` is a table):

- class subfolders: ``<path>/<label>/**/<image>``; the folder name is a class or a ``label_map`` key;
- a CSV with ``path,label`` (optional ``source_id, isic_id, lesion_id, patient_id, dataset``), paths
  relative to the CSV's folder; ``filter_dataset`` keeps rows of one (or several) ``dataset`` values
  (``/work/shared/data/labels.csv`` style);
- HAM10000: ``HAM10000_metadata.csv`` / ``metadata.csv`` with ``image_id, lesion_id, dx`` next to an
  ``images/`` folder; the label is ``label_map[dx]``;
- an isic-cli download: ``<isic_id>.jpg`` files and ``metadata.csv`` with ``isic_id`` and
  ``diagnosis_1`` (or the older ``benign_malignant``).

Every usable image is decoded once, converted to 8-bit RGB with EXIF orientation applied, and
written as PNG without metadata, its longest side capped at ``max_side`` (Lanczos). Every input that
is not used becomes a row of rejected.csv, including those left out by ``per_class`` (reason
``not_selected``) and, for the table layouts, files in the tables' image folders that no row names
(``not_listed``; ``not_in_metadata`` for isic-cli downloads).

Clinical metadata (:data:`CLINICAL_COLUMNS`: dx, sex, age, localization) is carried into the manifest
where a table has it (HAM10000's columns, isic-cli's diagnosis / age_approx / anatom_site_general),
'' elsewhere: the classifiers' results are reported by these subgroups.
"""

from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import io
from ..errors import ConfigError, DataSourceError, ImageError
from ..progress import Bar

log = logging.getLogger("dermsynth")

#: sidecar files that sit next to images in downloads and are not images themselves
SIDECAR_SUFFIXES = {".csv", ".json"}
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv", "labels.csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class Candidate:
    """One input image before conversion."""

    src: Path
    raw_label: str
    source_id: str
    lesion_id: str = ""
    patient_id: str = ""
    note: str = ""
    meta_label: str = ""  # label in the source's metadata, cross-checked when raw_label came from elsewhere
    license: str = ""  # as the source's metadata gives it; '' when it says nothing
    clinical: dict | None = None  # CLINICAL_COLUMNS as the source's metadata gives them


#: HAM10000's licence (Tschandl et al., Sci. Data 2018; the ISIC collection says the same).
HAM10000_LICENSE = "CC-BY-NC-4.0"


def licence_of(row: dict) -> str:
    """A metadata row's licence: isic-cli's ``copyright_license`` or a ``license`` column."""
    return str(row.get("copyright_license") or row.get("license") or "")


#: Per-image clinical metadata carried to the split manifests for subgroup results ('' = unknown).
CLINICAL_COLUMNS = ["dx", "sex", "age", "localization"]
#: where each comes from: HAM10000's columns first, then isic-cli's (and older ISIC exports')
CLINICAL_SOURCES = {
    "dx": ("dx", "diagnosis", "diagnosis_3", "diagnosis_2"),
    "sex": ("sex",),
    "age": ("age", "age_approx"),
    "localization": ("localization", "anatom_site_general", "anatom_site_general_challenge"),
}
#: ISIC diagnosis names -> HAM10000's dx codes (a name not listed is kept, lower-cased)
ISIC_DX = {
    "melanoma": "mel",
    "nevus": "nv",
    "basal cell carcinoma": "bcc",
    "actinic keratosis": "akiec",
    "bowen's disease": "akiec",
    "pigmented benign keratosis": "bkl",
    "seborrheic keratosis": "bkl",
    "solar lentigo": "bkl",
    "lichenoid keratosis": "bkl",
    "dermatofibroma": "df",
    "vascular lesion": "vasc",
}


def clinical_of(row: dict) -> dict:
    """The CLINICAL_COLUMNS of a metadata row, from whichever column the layout names them in."""
    out = {}
    for col, keys in CLINICAL_SOURCES.items():
        value = next((str(row[k]).strip() for k in keys if str(row.get(k) or "").strip()), "")
        if col == "dx" and value:
            low = value.lower()
            # isic-cli's diagnosis_3 adds a qualifier ("Melanoma Invasive"): match the leading name
            value = next((code for name, code in ISIC_DX.items() if low.startswith(name)), low)
        out[col] = value
    return out


def reject(path, reason: str, detail: str = "") -> dict:
    return {"path": str(path), "reason": reason, "detail": detail}


def resolve_label(raw: str, classes: list[str], label_map: dict | None) -> str | None:
    """Class name for a raw label (folder name, dx, diagnosis_1); None when it maps to no class."""
    raw = str(raw).strip()
    if raw in classes:
        return raw
    lowered = {str(k).strip().lower(): str(v) for k, v in (label_map or {}).items()}
    if raw.lower() in lowered:
        mapped = lowered[raw.lower()]
        return mapped if mapped in classes else None
    return raw.lower() if raw.lower() in classes else None


def safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "image"


# ---------------------------------------------------------------------------------------------
# layouts -> candidates


def import_folder(
    dataset: str, cfg: dict, out_dir, classes: list[str], threads: int = 1, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``folder`` source: find the layout, then convert every image (see module docstring).

    cfg keys: path, csv, label_map, filter_dataset (str or list), max_side (optional, px), per_class
    (optional: a ``seed``-ed sample of at most this many images per class).
    """
    label_map = cfg.get("label_map") or {}
    table, root = cfg.get("csv"), cfg.get("path")
    if table:
        cands, rejected = read_table(Path(table), cfg.get("filter_dataset"))
    elif root:
        root = Path(root)
        if root.is_file():
            cands, rejected = read_table(root, cfg.get("filter_dataset"))
        elif not root.is_dir():
            raise DataSourceError(
                f"datasets.{dataset}.folder.path '{root}' does not exist: point it at a "
                "folder of class subfolders, a metadata.csv folder, or a CSV"
            )
        elif found := next((root / n for n in METADATA_NAMES if (root / n).is_file()), None):
            cands, rejected = read_table(found, cfg.get("filter_dataset"))
        else:
            cands, rejected = scan_class_folders(root)
    else:
        raise ConfigError(
            f"datasets.{dataset}.folder needs 'path' (a folder or CSV) or 'csv' for source: folder"
        )
    return ingest(
        cands,
        dataset,
        out_dir,
        classes,
        label_map,
        rejected,
        threads=threads,
        max_side=cfg.get("max_side"),
        per_class=cfg.get("per_class"),
        seed=seed,
    )


def scan_class_folders(root: Path) -> tuple[list[Candidate], list[dict]]:
    """``root/<label>/**/<file>``: every non-hidden file is a candidate, labelled by its top folder."""
    cands, rejected = [], []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = f.relative_to(root).parts
        if any(p.startswith(".") for p in parts) or f.suffix.lower() in SIDECAR_SUFFIXES:
            continue
        if len(parts) == 1:
            rejected.append(reject(f, "unknown_label", "file is not inside a class subfolder"))
            continue
        cands.append(Candidate(f, parts[0], f.stem))
    return cands, rejected


def read_table(path: Path, filter_dataset=None) -> tuple[list[Candidate], list[dict]]:
    """Candidates from a CSV: HAM10000 metadata, isic-cli metadata, or ``path,label``."""
    if not path.is_file():
        raise DataSourceError(f"CSV '{path}' does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    cols = set(df.columns)
    listed_paths = list(df["path"]) if "path" in cols else []
    if {"image_id", "dx"} <= cols:
        return ham_candidates(df, path.parent)
    if "isic_id" in cols and "path" not in cols:
        return isic_candidates(df, path.parent)
    if {"path", "label"} <= cols:
        if filter_dataset:
            if "dataset" not in cols:
                raise DataSourceError(
                    f"{path}: folder.filter_dataset is set but the CSV has no 'dataset' column"
                )
            keep = [filter_dataset] if isinstance(filter_dataset, str) else list(filter_dataset)
            df = df[df["dataset"].isin(keep)]
        cands = []
        for r in df.itertuples(index=False):
            r = r._asdict()
            src = Path(r["path"])
            src = src if src.is_absolute() else path.parent / src
            sid = r.get("source_id") or r.get("isic_id") or src.stem
            cands.append(
                Candidate(
                    src,
                    r["label"],
                    sid,
                    r.get("lesion_id", ""),
                    r.get("patient_id", ""),
                    license=licence_of(r),
                    clinical=clinical_of(r),
                )
            )
        # rows of other datasets still name their files: only a file that no row names is unlisted
        named = {_resolved(p if Path(p).is_absolute() else path.parent / p) for p in listed_paths}
        return cands, unlisted({c.src.parent for c in cands}, named | {_resolved(path)})
    raise DataSourceError(
        f"{path}: unknown CSV layout (columns {sorted(cols)}); expected path,label or "
        "HAM10000 image_id,lesion_id,dx or isic-cli isic_id,diagnosis_1"
    )


def _resolved(p: Path) -> Path:
    return Path(p).resolve()


def unlisted(dirs, named: set[Path]) -> list[dict]:
    """A ``not_listed`` rejected row for each visible, non-sidecar file in ``dirs`` (not recursive)
    whose resolved path is not in ``named``: a table's folder often holds images its rows forgot."""
    rows = []
    for d in sorted({Path(d) for d in dirs}):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if (
                f.is_file()
                and not f.name.startswith(".")
                and f.suffix.lower() not in SIDECAR_SUFFIXES
                and _resolved(f) not in named
            ):
                rows.append(reject(f, "not_listed", "in the imported folder, named by no row of the table"))
    return rows


def _index_images(dirs: list[Path]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    index.setdefault(f.stem, f)
    return index


def ham_candidates(df: pd.DataFrame, root: Path) -> tuple[list[Candidate], list[dict]]:
    """HAM10000 metadata rows; images in ``images/`` (or the part_1/part_2 folders, or beside)."""
    index = _index_images(
        [
            root / "images",
            root / "HAM10000_images_part_1",
            root / "HAM10000_images_part_2",
            root / "HAM10000_images",
            root,
        ]
    )
    cands, rejected = [], []
    for r in df.to_dict("records"):
        src = index.get(r["image_id"])
        if src is None:
            rejected.append(
                reject(
                    root / "images" / f"{r['image_id']}.jpg",
                    "missing_file",
                    "listed in metadata, no image file found",
                )
            )
            continue
        cands.append(
            Candidate(
                src,
                r["dx"],
                r["image_id"],
                r.get("lesion_id", ""),
                r.get("patient_id", ""),
                license=licence_of(r) or HAM10000_LICENSE,
                clinical=clinical_of(r),
            )
        )
    listed = set(df["image_id"]) if len(df) else set()
    rejected += [
        reject(f, "not_listed", "image without a metadata row")
        for stem, f in index.items()
        if stem not in listed
    ]
    return cands, rejected


def metadata_label(row: dict) -> str:
    """Raw label of an ISIC metadata row: the current ``diagnosis_1`` or older fields."""
    for key in ("diagnosis_1", "benign_malignant", "dx"):
        if row.get(key):
            return str(row[key])
    return ""


def isic_candidates(
    df: pd.DataFrame, root: Path, label: str | None = None
) -> tuple[list[Candidate], list[dict]]:
    """isic-cli layout. With ``label`` the class is known from the query; metadata must not contradict it."""
    index = _index_images([root, root / "images"])
    cands, rejected = [], []
    for r in df.to_dict("records"):
        src = index.get(r["isic_id"])
        if src is None:
            rejected.append(
                reject(
                    root / f"{r['isic_id']}.jpg",
                    "missing_file",
                    "listed in metadata.csv, no image file (interrupted download?)",
                )
            )
            continue
        meta = metadata_label(r)
        note = ""
        raw = meta
        if label is not None:
            raw = label
            note = f"metadata label {meta}" if meta else "no metadata label"
        cands.append(
            Candidate(
                src,
                raw,
                r["isic_id"],
                r.get("lesion_id", ""),
                r.get("patient_id", ""),
                note,
                meta,
                licence_of(r),
                clinical_of(r),
            )
        )
    listed = set(df["isic_id"]) if len(df) else set()
    for stem, f in index.items():
        if stem not in listed:
            rejected.append(
                reject(f, "not_in_metadata", "image without a metadata.csv row (earlier download?)")
            )
    return cands, rejected


# ---------------------------------------------------------------------------------------------
# conversion


def reason_of(err: ImageError) -> str:
    msg = str(err)
    if "empty file" in msg:
        return "empty_file"
    if "not an image" in msg:
        return "not_an_image"
    if "not found" in msg:
        return "missing_file"
    if "truncated" in msg:
        return "truncated"
    return "unreadable"


def sample_per_class(todo: list[tuple], n: int, seed: int) -> tuple[list[tuple], list[tuple]]:
    """(kept, left out): at most ``n`` rows per label (rows are (candidate, label, ...)), drawn with
    ``seed`` from the rows in input (sorted path) order, and returned in that order."""
    rng = np.random.default_rng(seed)
    keep = set()
    for label in sorted({t[1] for t in todo}):
        idx = [i for i, t in enumerate(todo) if t[1] == label]
        keep.update(idx if len(idx) <= n else rng.choice(idx, size=n, replace=False).tolist())
    return [t for i, t in enumerate(todo) if i in keep], [t for i, t in enumerate(todo) if i not in keep]


def describe(path: Path) -> str:
    """Conversion note for a readable image: what was changed to make it 8-bit RGB."""
    notes = []
    with Image.open(path) as im:
        mode, fmt = im.mode, im.format
        orientation = im.getexif().get(0x0112, 1)
        transparency = "transparency" in im.info
    if fmt == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        # IHDR bit depth: PIL opens 16-bit RGB PNGs as plain RGB, so read it from the header
        if len(head) >= 25 and head[24] == 16:
            notes.append("16-bit scaled to 8-bit")
    if mode in ("I;16", "I;16B", "I;16L", "I") and not notes:
        notes.append("16-bit scaled to 8-bit")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and transparency):
        notes.append(f"{mode} alpha composited on white")
    elif mode == "P":
        notes.append("palette converted to RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale converted to RGB")
    elif mode not in ("RGB",) and not notes:
        notes.append(f"{mode} converted to RGB")
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    return "; ".join(notes)


def pixel_hash(rgb: np.ndarray) -> str:
    h = hashlib.sha256(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Longest side to ``max_side`` with PIL's antialiased Lanczos, the filter the resize stage uses.

    cv2 INTER_AREA (used before) aliases fine periodic detail (zone plate, :func:`imaging.lanczos`);
    on real images the two give the same 512 px stage input within 0.01 grey levels
    (benchmarks/import_size.py).
    """
    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS))


def _convert(src: Path, dst: Path, max_side: int | None) -> dict:
    """Decode, normalise and write one image (thread-safe; runs in a pool)."""
    try:
        rgb = np.asarray(io.load_rgb(src))
        note = describe(src)
    except ImageError as e:
        return {"error": (reason_of(e), str(e).split(": ", 1)[-1])}
    psha = pixel_hash(rgb)  # of the decoded pixels, before any downscaling
    h, w = rgb.shape[:2]
    if max_side and max(h, w) > max_side:
        rgb = downscale(rgb, max_side)
        note = "; ".join(n for n in (note, f"downscaled from {w}x{h}") if n)
    return {
        "pixels": psha,
        "sha256": io.save_png(dst, rgb),
        "note": note,
        "width": rgb.shape[1],
        "height": rgb.shape[0],
    }


def ingest(
    cands: list[Candidate],
    dataset: str,
    out_dir,
    classes: list[str],
    label_map: dict | None,
    rejected: list[dict] | None = None,
    threads: int = 1,
    max_side: int | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert candidates to PNG in ``out_dir/images``; return (manifest, rejected).

    Cheap checks (label, missing, empty, same file) run first and in order; decoding and PNG writing
    run on ``threads`` threads; pixel duplicates are then resolved in input order (first one kept).
    ``max_side`` (optional) downsizes larger images so that raw PNGs of 3000 px originals stay small.
    ``per_class`` (optional) keeps a ``seed``-ed sample of that many inputs per class among those that
    passed the cheap checks, before any decoding (a file that then fails to decode is not replaced).
    """
    out_dir = Path(out_dir)
    rejected = list(rejected or [])
    todo, file_seen, stems = [], {}, set()
    for c in sorted(cands, key=lambda c: str(c.src)):
        label = resolve_label(c.raw_label, classes, label_map)
        if label is None:
            rejected.append(
                reject(c.src, "unknown_label", f"'{c.raw_label}' is not a class or a label_map key")
            )
            continue
        meta_class = resolve_label(c.meta_label, classes, label_map) if c.meta_label else None
        if meta_class is not None and meta_class != label:
            rejected.append(
                reject(c.src, "label_mismatch", f"labelled {label}, metadata says {c.meta_label}")
            )
            continue
        if not c.src.is_file():
            rejected.append(reject(c.src, "missing_file", "file does not exist"))
            continue
        if c.src.stat().st_size == 0:
            rejected.append(reject(c.src, "empty_file", "0 bytes"))
            continue
        fsha = io.sha256_file(c.src)
        if fsha in file_seen:
            rejected.append(reject(c.src, "duplicate", f"same file as {file_seen[fsha]}"))
            continue
        file_seen[fsha] = c.src
        stem = base = safe_stem(c.source_id)
        k = 1
        while stem in stems:  # two different images with one name: keep both, distinctly
            k += 1
            stem = f"{base}-{k}"
        stems.add(stem)
        todo.append((c, label, stem, out_dir / "images" / f"{stem}.png"))
    if per_class:
        todo, left_out = sample_per_class(todo, int(per_class), seed)
        why = f"not in the sample of {per_class} per class (folder.per_class)"
        rejected += [reject(t[0].src, "not_selected", why) for t in left_out]

    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        results = pool.map(lambda t: _convert(t[0].src, t[3], max_side), todo)
        rows, pixel_seen = [], {}
        for (c, label, stem, dst), res in Bar(
            zip(todo, results, strict=True), total=len(todo), desc=f"import {dataset}"
        ):
            if "error" in res:
                rejected.append(reject(c.src, *res["error"]))
                continue
            if res["pixels"] in pixel_seen:
                dst.unlink(missing_ok=True)
                rejected.append(reject(c.src, "duplicate", f"same pixels as {pixel_seen[res['pixels']]}"))
                continue
            pixel_seen[res["pixels"]] = c.src
            rows.append(
                {
                    "path": io.rel(dst),
                    "label": label,
                    "dataset": dataset,
                    "source_id": c.source_id if stem == safe_stem(c.source_id) else stem,
                    "sha256": res["sha256"],
                    "lesion_id": c.lesion_id or "",
                    "patient_id": c.patient_id or "",
                    "width": res["width"],
                    "height": res["height"],
                    "note": "; ".join(n for n in (res["note"], c.note) if n),
                    "license": c.license,
                    **{k: (c.clinical or {}).get(k, "") for k in CLINICAL_COLUMNS},
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(rejected, columns=["path", "reason", "detail"])
