"""The paper's detection check (Derm-T2IM Fig. 12): a lesion detector trained on real images, run on
the kept synthetic ones.

The paper trained YOLOv8 on real lesions and reports that it found and correctly classified the
lesion in 72 % of 200 synthetic images. Ultralytics needs opencv-python and torchvision (which pull a
second OpenCV and replace the pinned torch) and fetches fonts and weights online, so this module
trains a transformers detector instead: YOLOS (``YolosForObjectDetection``, the paper config's
hustvl/yolos-tiny), with its own Hungarian-matching loss, two classes (benign / malignant lesion).

Boxes come from the segment stage's lesion masks: the bounding box of the largest mask component,
normalised (cx, cy, w, h) as YOLOS expects. One box per image: the top-scoring detection token.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import config, io, metrics
from .device import resolve_device
from .errors import DataSourceError, TrainingError
from .hub import load_pretrained
from .progress import Bar
from .splits import select

log = logging.getLogger("dermsynth.detect")

#: written beside the saved detector so prediction prepares images exactly as training did
DETECTOR_FILE = "dermsynth_detector.json"
#: columns of a predictions table (plus the manifest's path, label, sampler)
PREDICTION_COLUMNS = ["score", "pred_label", "cx", "cy", "w", "h", "detected", "correct"]


# ---------------------------------------------------------------- boxes from masks


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Bounding box of the largest connected component of ``mask``, normalised (cx, cy, w, h).

    Pixel edges, not centres: a component spanning columns 2..5 of a 10 px wide image has x from 0.2
    to 0.6, so w = 0.4 and cx = 0.4. None for an empty mask.
    """
    from scipy import ndimage

    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        return None
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        m = lab == (int(np.argmax(sizes)) + 1)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    h, w = m.shape
    y0, y1 = rows[0], rows[-1] + 1
    x0, x1 = cols[0], cols[-1] + 1
    return ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)


def training_rows(sd_manifests, splits_csv, mask_tables, split: str = "train") -> pd.DataFrame:
    """The real images of ``split`` (diffusion-size manifests, the images the masks were drawn on)
    with a non-empty lesion mask: columns path, label, mask_path."""
    frames = [select(m, splits_csv, split) for m in sd_manifests]
    images = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "label"])
    masks = io.read_manifests(mask_tables) if mask_tables else pd.DataFrame(columns=["path"])
    if "mask_path" not in masks.columns:
        raise DataSourceError("the mask tables lack a mask_path column: rerun the segment stage")
    ok = masks[masks["status"].astype(str) == "ok"][["path", "mask_path"]].drop_duplicates("path")
    rows = images[["path", "label"]].astype(str).merge(ok.astype(str), on="path", how="inner")
    log.info("%s split: %d of %d images have a lesion mask", split, len(rows), len(images))
    return rows.reset_index(drop=True)


def with_boxes(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (with mask_path) plus the mask's box columns cx, cy, w, h; empty masks dropped."""
    from .segment import load_mask

    boxes = [mask_box(load_mask(p)) for p in rows["mask_path"]]
    keep = [b is not None for b in boxes]
    out = rows[keep].reset_index(drop=True).copy()
    arr = np.array([b for b in boxes if b is not None], dtype=np.float64).reshape(-1, 4)
    for k, col in enumerate(("cx", "cy", "w", "h")):
        out[col] = arr[:, k]
    return out


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or len(df) <= n:
        return df.reset_index(drop=True)
    return df.sample(n=int(n), random_state=int(seed)).sort_index().reset_index(drop=True)


# ---------------------------------------------------------------- model and images


def load_detector(ref: str, classes: list[str], seed: int):
    """YOLOS from ``ref`` with a head for ``classes`` (drawn from ``seed``), and its (mean, std)."""
    import torch
    from transformers import YolosForObjectDetection, YolosImageProcessorPil

    torch.manual_seed(int(seed))  # a new class head is initialised from the global RNG
    labels = {i: c for i, c in enumerate(classes)}
    model = load_pretrained(
        YolosForObjectDetection,
        ref,
        id2label=labels,
        label2id={c: i for i, c in labels.items()},
        ignore_mismatched_sizes=True,  # a COCO checkpoint's 91-class head is replaced
    )
    proc = load_pretrained(YolosImageProcessorPil, ref)
    return model, list(proc.image_mean), list(proc.image_std)


def pixels(paths, size: int, mean, std, hflip=None, vflip=None):
    """A (n, 3, size, size) float batch: RGB resized (bilinear), optionally flipped, normalised."""
    import torch

    arrs = []
    for k, p in enumerate(paths):
        a = np.asarray(io.load_rgb(p).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        if hflip is not None and hflip[k]:
            a = a[:, ::-1]
        if vflip is not None and vflip[k]:
            a = a[::-1]
        arrs.append(np.ascontiguousarray(a))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def _targets(boxes: np.ndarray, labels: np.ndarray, hflip, vflip, device) -> list[dict]:
    """One target per image (its lesion), with the boxes flipped like the image."""
    import torch

    b = boxes.copy()
    b[hflip, 0] = 1.0 - b[hflip, 0]
    b[vflip, 1] = 1.0 - b[vflip, 1]
    return [
        {
            "class_labels": torch.tensor([int(y)], dtype=torch.long, device=device),
            "boxes": torch.tensor(bb[None], dtype=torch.float32, device=device),
        }
        for y, bb in zip(labels, b, strict=True)
    ]


def _save_dir(model, info: dict, final: Path) -> None:
    """Write the detector folder beside its final name, then swap it in: no half-written model."""
    from transformers import YolosImageProcessorPil

    with io.atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        YolosImageProcessorPil(image_mean=info["mean"], image_std=info["std"]).save_pretrained(tmp)
        (tmp / DETECTOR_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_trained(model_dir, device: str = "cpu"):
    """A detector saved by :func:`train`: (model in eval mode, info with image_size, mean, std, classes)."""
    from transformers import YolosForObjectDetection

    d = Path(model_dir)
    info_path = d / DETECTOR_FILE
    if not info_path.is_file():
        raise DataSourceError(
            f"{d} is not a detector trained by dermsynth (no {DETECTOR_FILE}): rerun train_detector"
        )
    info = json.loads(info_path.read_text())
    model = load_pretrained(YolosForObjectDetection, str(d)).to(device).eval()
    return model, info


# ---------------------------------------------------------------- training


def train(
    rows: pd.DataFrame,
    pretrained: str,
    classes: list[str],
    out_dir,
    cfg: dict | None = None,
    threads: int = 1,
    device: str = "auto",
) -> tuple:
    """Fine-tune YOLOS on ``rows`` (path, label, cx, cy, w, h) and save it to ``out_dir``: (model, history).

    Seeded (detect.seed): the head, the order and the flips; CPU runs are repeatable per thread count.
    """
    import torch

    c = config.section("detect", cfg)
    if not len(rows):
        raise DataSourceError("no real training image has a lesion mask: nothing to train the detector on")
    index = {name: i for i, name in enumerate(classes)}
    y = rows["label"].astype(str).map(index).to_numpy()
    if np.isnan(y.astype(float)).any():
        raise DataSourceError(
            f"training labels {sorted(set(rows['label']))} are not all in classes {classes}"
        )
    torch.set_num_threads(max(1, int(threads)))
    dev = torch.device(resolve_device(device))
    seed, size, bs = int(c["seed"]), int(c["image_size"]), int(c["batch_size"])
    model, mean, std = load_detector(pretrained, classes, seed)
    model.to(dev).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(c["learning_rate"]), weight_decay=float(c["weight_decay"])
    )
    boxes = rows[["cx", "cy", "w", "h"]].to_numpy(np.float64)
    paths = rows["path"].astype(str).tolist()
    gen = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(rows) / bs)
    history = []
    bar = Bar(total=int(c["epochs"]) * steps_per_epoch, desc="train detector", unit="step")
    for epoch in range(1, int(c["epochs"]) + 1):
        order, losses = gen.permutation(len(rows)), []
        for start in range(0, len(rows), bs):
            idx = order[start : start + bs]
            hf = gen.random(len(idx)) < 0.5 if c["augment_flip"] else np.zeros(len(idx), bool)
            vf = gen.random(len(idx)) < 0.5 if c["augment_flip"] else np.zeros(len(idx), bool)
            x = pixels([paths[i] for i in idx], size, mean, std, hf, vf).to(dev)
            out = model(pixel_values=x, labels=_targets(boxes[idx], y[idx], hf, vf, dev))
            loss = out.loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"detector loss is {loss.item()} at epoch {epoch}: lower detect.learning_rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if c["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(c["max_grad_norm"]))
            opt.step()
            losses.append(float(loss.item()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        history.append({"epoch": epoch, "steps": len(losses), "loss": float(np.mean(losses))})
        log.info("detector epoch %d: loss %.4f", epoch, history[-1]["loss"])
    bar.close()
    info = {
        "image_size": size,
        "mean": mean,
        "std": std,
        "classes": list(classes),
        "pretrained": str(pretrained),
    }
    model.cpu().eval()
    _save_dir(model, info, Path(out_dir))
    return model, pd.DataFrame(history)


# ---------------------------------------------------------------- prediction


def predict(model, info: dict, paths: list[str], batch_size: int, device: str = "cpu") -> pd.DataFrame:
    """The top box of each image: score (its class probability), pred_label and normalised cx, cy, w, h.

    YOLOS scores every detection token over the classes plus "no object"; the box kept is the token
    whose best lesion class is most probable.
    """
    import torch

    classes, rows = info["classes"], []
    with torch.no_grad():
        for start in Bar(range(0, len(paths), batch_size), desc="detect", unit="batch"):
            chunk = paths[start : start + batch_size]
            x = pixels(chunk, int(info["image_size"]), info["mean"], info["std"]).to(device)
            out = model(pixel_values=x)
            probs = out.logits.softmax(-1)[..., :-1]  # the last logit is "no object"
            best_cls_p, best_cls = probs.max(-1)
            tok = best_cls_p.argmax(-1)
            ar = torch.arange(len(chunk), device=tok.device)
            score, cls, box = best_cls_p[ar, tok], best_cls[ar, tok], out.pred_boxes[ar, tok]
            for k in range(len(chunk)):
                cx, cy, w, h = (float(v) for v in box[k].cpu())
                rows.append(
                    {
                        "score": float(score[k]),
                        "pred_label": classes[int(cls[k])],
                        "cx": cx,
                        "cy": cy,
                        "w": w,
                        "h": h,
                    }
                )
    return pd.DataFrame(rows, columns=["score", "pred_label", "cx", "cy", "w", "h"])


def judge(df: pd.DataFrame, preds: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``df`` (path, label, ...) beside its predictions, with detected (score >= threshold) and
    correct (detected and the box's class is the image's label)."""
    out = pd.concat([df.reset_index(drop=True), preds.reset_index(drop=True)], axis=1)
    out["detected"] = out["score"] >= float(threshold)
    out["correct"] = out["detected"] & (out["pred_label"].astype(str) == out["label"].astype(str))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (n, 4) normalised cxcywh boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)

    def corners(x):
        return x[:, 0] - x[:, 2] / 2, x[:, 1] - x[:, 3] / 2, x[:, 0] + x[:, 2] / 2, x[:, 1] + x[:, 3] / 2

    ax0, ay0, ax1, ay1 = corners(a)
    bx0, by0, bx1, by1 = corners(b)
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ---------------------------------------------------------------- stage entry points


def train_stage(
    sd_manifests,
    splits_csv,
    mask_tables,
    pretrained: str,
    classes: list[str],
    out_model,
    history_csv,
    val_predictions_csv,
    cfg: dict | None = None,
    threads: int = 1,
    device: str = "auto",
) -> pd.DataFrame:
    """Rule train_detector: boxes from the train split's masks, training, then the real val split
    scored with its mask boxes (the detector's own accuracy on real lesions, for scale)."""
    c = config.section("detect", cfg)
    rows = with_boxes(
        _sample(
            training_rows(sd_manifests, splits_csv, mask_tables, "train"), c["max_train_images"], c["seed"]
        )
    )
    _, history = train(rows, pretrained, classes, out_model, c, threads, device)
    io.write_csv(history_csv, history)
    val = with_boxes(training_rows(sd_manifests, splits_csv, mask_tables, "val"))
    judged = score_images(out_model, val[["path", "label"]], c, threads, device)
    if len(val):
        judged["iou"] = box_iou(
            judged[["cx", "cy", "w", "h"]].to_numpy(), val[["cx", "cy", "w", "h"]].to_numpy()
        )
    io.write_csv(val_predictions_csv, judged)
    return history


def score_images(
    model_dir, df: pd.DataFrame, cfg: dict | None = None, threads: int = 1, device: str = "auto"
):
    """``df`` (path, label, ...) judged by the saved detector (see :func:`judge`)."""
    import torch

    c = config.section("detect", cfg)
    torch.set_num_threads(max(1, int(threads)))
    dev = resolve_device(device)
    model, info = load_trained(model_dir, dev)
    preds = predict(model, info, df["path"].astype(str).tolist(), int(c["eval_batch_size"]), dev)
    return judge(df, preds, c["score_threshold"])


def detect_synthetic(
    model_dir, synthetic_csv, out_csv, cfg: dict | None = None, threads: int = 1, device: str = "auto"
) -> pd.DataFrame:
    """Rule detect_synthetic: the real-trained detector on the kept synthetic images (at most
    detect.max_images, a seeded sample; the paper used 200)."""
    c = config.section("detect", cfg)
    df = io.read_csv(synthetic_csv)
    if not len(df):
        raise DataSourceError(f"{synthetic_csv} holds no synthetic images: nothing to detect")
    if "sampler" not in df.columns:
        df["sampler"] = ""
    df = _sample(df[["path", "label", "sampler"]], c["max_images"], c["seed"])
    judged = score_images(model_dir, df, c, threads, device)
    io.write_csv(out_csv, judged)
    log.info(
        "detected %d of %d synthetic images, %d with the prompt's class",
        int(judged["detected"].sum()),
        len(judged),
        int(judged["correct"].sum()),
    )
    return judged


# ---------------------------------------------------------------- scores


def share_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Share of true values with a percentile bootstrap CI over images; nan for no images."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
    boots = v[metrics.resample_indices(len(v), int(n_boot), int(seed))].mean(axis=1)
    lo, hi = metrics.percentile_ci(boots, ci)
    return {"value": float(v.mean()), "lo": lo, "hi": hi}


def summary_table(judged: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per sampler, then all images: n, detection rate and accuracy (detected with the prompt's class)
    with bootstrap CIs, and the accuracy among detected images."""
    groups = []
    if "sampler" in judged.columns and judged["sampler"].astype(str).str.len().gt(0).any():
        groups += [(str(s), g) for s, g in judged.groupby(judged["sampler"].astype(str), sort=True)]
    groups.append(("all", judged))
    rows = []
    for name, g in groups:
        det = share_ci(g["detected"].astype(bool), n_boot, ci, seed)
        acc = share_ci(g["correct"].astype(bool), n_boot, ci, seed)
        n_det = int(g["detected"].astype(bool).sum())
        rows.append(
            {
                "set": name,
                "n": len(g),
                "detection_rate": det["value"],
                "detection_lo": det["lo"],
                "detection_hi": det["hi"],
                "accuracy": acc["value"],
                "accuracy_lo": acc["lo"],
                "accuracy_hi": acc["hi"],
                "accuracy_detected": g["correct"].astype(bool).sum() / n_det if n_det else float("nan"),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- report


def _pct(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f} %"


def _pct_ci(v: float, lo: float, hi: float) -> str:
    s = _pct(v)
    return s if not (math.isfinite(lo) and math.isfinite(hi)) else f"{s} [{100 * lo:.1f}, {100 * hi:.1f}]"


def box_sheet(judged: pd.DataFrame, out_png, per_row: int = 6, thumb: int = 128, seed: int = 0) -> int:
    """Up to ``per_row`` images per class x sampler with the top box drawn: green = detected with
    the prompt's class, red = detected with the other class, grey dashes = below the threshold."""
    from PIL import ImageDraw

    from .imaging import contact_sheet

    images, captions, row_labels = [], [], []
    keys = ["label", "sampler"] if "sampler" in judged.columns else ["label"]
    for key, g in judged.groupby(keys, sort=True):
        g = g.sample(n=min(per_row, len(g)), random_state=seed) if len(g) else g
        row_labels.append("\n".join(str(k) for k in (key if isinstance(key, tuple) else (key,))))
        for r in g.itertuples():
            im = io.load_rgb(r.path).resize((thumb, thumb), Image.BILINEAR)
            d = ImageDraw.Draw(im)
            x0, y0 = (r.cx - r.w / 2) * thumb, (r.cy - r.h / 2) * thumb
            x1, y1 = (r.cx + r.w / 2) * thumb, (r.cy + r.h / 2) * thumb
            colour = (0, 200, 0) if r.correct else (220, 0, 0) if r.detected else (150, 150, 150)
            d.rectangle([x0, y0, x1, y1], outline=colour, width=2 if r.detected else 1)
            images.append(np.asarray(im))
            captions.append(f"{str(r.pred_label)[:1].upper()} {r.score:.2f}")
        pad = per_row - len(g)
        images += [None] * pad
        captions += [""] * pad
    contact_sheet(
        images,
        out_png,
        ncols=per_row,
        thumb=thumb,
        labels=captions,
        title="top box per image: green = prompt's class, red = other class, grey = below threshold",
        row_labels=row_labels,
    )
    return int(sum(im is not None for im in images))


def section_detect(
    predictions_csv,
    val_predictions_csv,
    history_csv,
    out_md,
    sheet_png,
    table_csv,
    cfg: dict | None = None,
    paper_accuracy: float | None = None,
    detector: str = "",
    n_boot: int = 1000,
    ci: float = 0.95,
    section_dir_name: str = "sections",
) -> pd.DataFrame:
    """The report fragment "Detection check": ours beside the paper's Fig. 12 figure, a box sheet."""
    c = config.section("detect", cfg)
    judged = io.read_csv(predictions_csv)
    table = summary_table(judged, n_boot, ci, int(c["seed"]))
    val = io.read_csv(val_predictions_csv)
    val_row = summary_table(val.drop(columns=["sampler"], errors="ignore"), n_boot, ci, int(c["seed"]))
    val_row["set"] = "real validation"
    val_row["mean_iou"] = float(val["iou"].mean()) if "iou" in val.columns and len(val) else float("nan")
    table["paper_accuracy"] = float("nan")
    if paper_accuracy is not None:
        table.loc[table["set"] == "all", "paper_accuracy"] = float(paper_accuracy) / 100.0
    full = pd.concat([table, val_row], ignore_index=True)
    io.write_csv(table_csv, full)
    shown = box_sheet(judged, sheet_png, int(c["sheet_images"]), seed=int(c["seed"]))
    history = io.read_csv(history_csv)
    final_loss = float(history["loss"].iloc[-1]) if len(history) else float("nan")
    paper = f"{paper_accuracy:.0f} %" if paper_accuracy is not None else "—"
    lines = [
        "## Detection check (the paper's Fig. 12)",
        "",
        f"A YOLOS detector (`{detector}`, two classes: benign / malignant lesion) trained on the real "
        f"train split, boxes from the {c['mask_method']} lesion masks ({len(history)} epochs at "
        f"{c['image_size']} px, final loss {final_loss:.3f}), then run on {len(judged)} kept synthetic "
        f"images. Detected: the top box scores at least {c['score_threshold']}; correct: detected with "
        "the prompt's class. The paper ran YOLOv8 on 200 synthetic images and reports "
        f"{paper} correct. CIs: {ci:.0%} bootstrap over images ({n_boot} resamples).",
        "",
        "| set | n | detected [CI] | correct [CI] | correct among detected | paper |",
        "|---|---|---|---|---|---|",
    ]
    for r in full.itertuples():
        paper_cell = _pct(r.paper_accuracy) if r.set == "all" else ""
        lines.append(
            f"| {r.set} | {r.n} | {_pct_ci(r.detection_rate, r.detection_lo, r.detection_hi)} | "
            f"{_pct_ci(r.accuracy, r.accuracy_lo, r.accuracy_hi)} | {_pct(r.accuracy_detected)} | "
            f"{paper_cell} |"
        )
    iou = val_row["mean_iou"].iloc[0]
    iou_text = f"mean box IoU with the mask box {iou:.2f}" if math.isfinite(iou) else "no validation images"
    lines += [
        "",
        f"The *real validation* row scores the detector on held-out real images ({iou_text}): a "
        "detector that misses real lesions says little about synthetic ones.",
    ]
    if str(detector).startswith(config.TINY_PREFIX):
        lines += [
            "",
            "**The detector starts from a tiny random-weight YOLOS built offline: these figures only "
            "exercise the code path.**",
        ]
    lines += [
        "",
        f"![detected boxes]({section_dir_name}/{Path(sheet_png).name})",
        "",
        f"*Top box on {shown} kept synthetic images, per class and sampler; caption: predicted class "
        "initial and score.*",
        "",
    ]
    io.write_text(out_md, "\n".join(lines) + "\n")
    return full
