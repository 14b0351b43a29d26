"""Fine-tuning and evaluating image classifiers (ViT, MobileNetV2) on benign vs malignant lesions.

A plain PyTorch loop rather than HF Trainer: augmentations run on whole batches as tensors (no
torchvision), class balancing and early stopping stay in view, and one loop serves CPU (fp32,
deterministic per seed and thread count) and CUDA (autocast fp16/bf16).

Class imbalance: by default (``class_balance: loss``) the cross-entropy is weighted by
n / (K * n_class). Unlike an oversampling sampler it sees every image exactly once per epoch, keeps the
number of steps independent of the imbalance and repeats no minority image within an epoch; the
validation loss used for early stopping carries the same weights, so the epoch chosen is the best
one for the balanced objective. ``class_balance: sampler`` (weighted sampling with replacement) and
``none`` are available for comparison.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import config, io, metrics
from .device import resolve_device
from .errors import ConfigError, DataSourceError, TrainingError
from .hub import load_pretrained
from .progress import Bar

log = logging.getLogger("dermsynth.classify")

#: config arch name -> transformers ``model_type`` the checkpoint must have
ARCHS = {"vit": "vit", "mobilenet_v2": "mobilenet_v2"}

#: written beside the saved model so prediction normalises exactly as training did
PREPROCESS_FILE = "dermsynth_classifier.json"
_AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- helpers


def label_indices(df: pd.DataFrame, classes: list[str], what: str) -> np.ndarray:
    if "path" not in df.columns or "label" not in df.columns:
        raise DataSourceError(f"{what} manifest needs columns path and label")
    unknown = sorted(set(df["label"].astype(str)) - set(classes))
    if unknown:
        raise DataSourceError(
            f"{what} manifest has labels {unknown} outside classes {classes}: fix the config"
        )
    index = {c: i for i, c in enumerate(classes)}
    return df["label"].astype(str).map(index).to_numpy(np.int64, copy=True)


def _load_square(path: str, size: int) -> np.ndarray:
    im = io.load_rgb(path)
    if im.width != im.height:  # centre crop: the pipeline delivers squares, other inputs still work
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def load_images(paths: list[str], size: int, threads: int = 1, desc: str | None = None) -> torch.Tensor:
    """Decode images to a uint8 tensor (N, 3, size, size); PIL decoding runs in ``threads`` threads."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        it = pool.map(lambda p: _load_square(str(p), size), paths)
        for i, arr in enumerate(Bar(it, total=len(paths), desc=desc, disable=not desc, leave=False)):
            out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


def _processor_stats(pretrained: str) -> tuple[list[float], list[float], object | None]:
    """Normalisation mean/std from the checkpoint's image processor, else 0.5/0.5."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(pretrained)
        mean, std = list(proc.image_mean), list(proc.image_std)
        return [float(m) for m in mean], [float(s) for s in std], proc
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        log.warning(
            "no image processor for %s (%s): normalising with mean=std=0.5", pretrained, type(e).__name__
        )
        return [0.5] * 3, [0.5] * 3, None


def normalizer(mean, std, device):
    """x in [0, 1] (B, 3, H, W) -> (x - mean) / std per channel, as the checkpoint was trained."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return lambda x: (x - m) / s


def augment(x: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """Random flips, quarter turns and colour jitter on a float batch in [0, 1] (B, 3, H, W).

    Every random draw comes from ``gen`` on the CPU, so a seed fixes the augmentations on any device.
    """
    b = x.shape[0]

    def draw(*shape):
        return torch.rand(*shape, generator=gen).to(x.device)

    x = x.clone()
    if aug.get("hflip"):
        m = draw(b) < 0.5
        x[m] = x[m].flip(-1)
    if aug.get("vflip"):
        m = draw(b) < 0.5
        x[m] = x[m].flip(-2)
    if aug.get("rotate90") and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=gen).to(x.device)
        for q in (1, 2, 3):
            m = k == q
            if m.any():
                x[m] = torch.rot90(x[m], q, dims=(-2, -1))
    s = float(aug.get("color_jitter") or 0.0)
    if s > 0:
        bright, contrast, sat = ((1 - s) + 2 * s * draw(b, 1, 1, 1) for _ in range(3))
        x = x * bright
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray) * sat + gray
    return x.clamp_(0.0, 1.0)


def _class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.ones(n_classes)
    present = counts > 0
    w[present] = len(y) / (present.sum() * counts[present])
    return w


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # a batch of one breaks BatchNorm statistics (MobileNetV2): fold it into the previous batch
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    return chunks


def _lr_lambda(total: int, warmup: int, schedule: str):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _autocast(device: torch.device, mixed_precision: str):
    if device.type == "cuda" and mixed_precision in _AMP:
        return torch.autocast("cuda", dtype=_AMP[mixed_precision])
    return torch.autocast(device.type, enabled=False)


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).logits.float()


@torch.inference_mode()
def _evaluate_tensor(
    model,
    images: torch.Tensor,
    y: np.ndarray,
    norm,
    device,
    batch_size: int,
    loss_weight: torch.Tensor | None,
    mixed_precision: str = "no",
) -> tuple[float, np.ndarray]:
    """(mean loss, softmax probabilities) over preloaded uint8 images."""
    model.eval()
    probs, loss_sum, w_sum = [], 0.0, 0.0
    for i in range(0, len(images), batch_size):
        x = norm(images[i : i + batch_size].to(device, non_blocking=True).float() / 255.0)
        t = torch.from_numpy(y[i : i + batch_size]).to(device)
        with _autocast(device, mixed_precision):
            logits = _logits(model, x)
        lw = loss_weight if loss_weight is not None else torch.ones(logits.shape[1], device=device)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, t, weight=lw, reduction="sum"))
        w_sum += float(lw[t].sum())
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, 2))
    return (loss_sum / w_sum if w_sum else float("nan")), p


def _positive_index(classes: list[str]) -> int:
    if len(classes) != 2:
        raise ConfigError(f"binary metrics need exactly 2 classes, got {classes}")
    return 1  # class 1 is the positive (malignant) class by convention


def _save_model_dir(model, processor, info: dict, final: Path) -> None:
    """Write the model folder beside its final name, then swap it in: no half-written model survives."""
    with io.atomic_dir(final) as tmp:
        model.save_pretrained(tmp)  # safetensors is the only format transformers 5 writes
        if processor is not None:
            processor.save_pretrained(tmp)
        (tmp / PREPROCESS_FILE).write_text(json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------- train


def _load_classifier(arch: str, pretrained: str, classes: list[str], size: int, seed: int):
    """``pretrained`` with a new head for ``classes`` (drawn from ``seed``), checked against ``arch`` and
    ``size``; returns (model, mean, std, image processor) with the normalisation it was trained with."""
    from transformers import AutoModelForImageClassification

    if arch not in ARCHS:
        raise ConfigError(f"classifier arch '{arch}' is not supported: use one of {sorted(ARCHS)}")
    torch.manual_seed(seed)  # the new classification head is initialised from the global RNG
    np.random.seed(seed % (2**32))
    model = load_pretrained(
        AutoModelForImageClassification,
        str(pretrained),
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
        ignore_mismatched_sizes=True,
    )
    if getattr(model.config, "model_type", None) != ARCHS[arch]:
        raise ConfigError(
            f"'{pretrained}' is a {model.config.model_type} checkpoint, not {arch}: "
            "fix classify.models in the config"
        )
    if arch == "vit" and int(getattr(model.config, "image_size", size)) != size:
        raise ConfigError(
            f"'{pretrained}' expects {model.config.image_size} px images but "
            f"classify.image_size is {size}: make them equal"
        )
    mean, std, processor = _processor_stats(str(pretrained))
    return model, mean, std, processor


class _Optimizer:
    """AdamW with linear warmup then cosine or linear decay, gradient clipping and the fp16 loss scale."""

    def __init__(self, model, c: dict, total_steps: int, amp: str):
        self.params = list(model.parameters())
        self.opt = torch.optim.AdamW(
            self.params, lr=float(c["learning_rate"]), weight_decay=float(c["weight_decay"])
        )
        warmup = int(round(float(c["warmup_ratio"]) * total_steps))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _lr_lambda(total_steps, warmup, c["lr_schedule"])
        )
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.max_grad_norm = c["max_grad_norm"]

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, float(self.max_grad_norm))
        stepped = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            # fp16 skips a step whose gradients overflowed (the scale then drops): the schedule waits
            stepped = self.scaler.get_scale() >= scale
        else:
            self.opt.step()
        if stepped:
            self.sched.step()


class _Batches:
    """The training images on the host (uint8) and one epoch's shuffled, augmented batches of them."""

    def __init__(self, x: torch.Tensor, y: np.ndarray, class_weights: np.ndarray, c: dict, seed: int):
        self.x, self.y, self.c = x, y, c
        self.bs = int(c["batch_size"])
        self.sample_p = torch.tensor(class_weights[y] / class_weights[y].sum(), dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(int(seed))  # order and augmentations, on any device

    def __len__(self) -> int:
        return len(_batches(np.arange(len(self.y)), self.bs))

    def epoch(self, dev, norm):
        """(index array, normalised augmented images on ``dev``, targets on ``dev``) per batch."""
        n = len(self.y)
        if self.c["class_balance"] == "sampler":
            order = torch.multinomial(self.sample_p, n, replacement=True, generator=self.gen).numpy()
        else:
            order = torch.randperm(n, generator=self.gen).numpy()
        for idx in _batches(order, self.bs):
            x = self.x[torch.from_numpy(idx)].to(dev, non_blocking=True).float() / 255.0
            yield idx, norm(augment(x, self.c["augment"], self.gen)), torch.from_numpy(self.y[idx]).to(dev)


def _train_epoch(model, batches: _Batches, optim: _Optimizer, norm, loss_w, dev, amp: str, epoch: int, bar):
    """One pass over the training set; returns (mean training loss, images seen, seconds)."""
    t0 = time.perf_counter()
    model.train()
    loss_sum, n_seen = 0.0, 0
    for idx, x, t in batches.epoch(dev, norm):
        with _autocast(dev, amp):
            logits = _logits(model, x)
        loss = torch.nn.functional.cross_entropy(logits, t, weight=loss_w)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {float(loss)} at epoch {epoch}: lower "
                "classify.learning_rate or set mixed_precision: bf16/no"
            )
        optim.step(loss)
        loss_val = float(loss.detach())
        loss_sum += loss_val * len(idx)
        n_seen += len(idx)
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{loss_val:.4f}")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return loss_sum / max(1, n_seen), n_seen, time.perf_counter() - t0


def _validate(
    model, x_va, y_va, norm, dev, c: dict, loss_w, amp: str, n_classes: int
) -> tuple[dict, np.ndarray]:
    """The epoch's validation figures, and P(class 1) of each validation image."""
    if not len(y_va):
        nan = float("nan")
        return {"val_loss": nan, "val_accuracy": nan, "val_auroc": nan}, np.zeros(0)
    val_loss, p_va = _evaluate_tensor(model, x_va, y_va, norm, dev, int(c["eval_batch_size"]), loss_w, amp)
    figures = {
        "val_loss": val_loss,
        "val_accuracy": metrics.accuracy(y_va, p_va.argmax(1)),
        "val_auroc": metrics.auroc(y_va, p_va[:, 1]) if n_classes == 2 else float("nan"),
    }
    return figures, p_va[:, 1]


HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_auroc",
    "lr",
    "seconds",
    "train_seconds",
]


def _training_device(device: str) -> torch.device:
    dev = torch.device(resolve_device(device))
    if dev.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels; TF32 matmuls
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def _load_splits(train_df: pd.DataFrame, val_df: pd.DataFrame, size: int, threads: int):
    """The training and validation images as uint8 tensors, decoded once before the first epoch."""
    t_load = time.perf_counter()
    x_tr = load_images(train_df["path"].astype(str).tolist(), size, threads, desc="load train")
    val_paths = val_df["path"].astype(str).tolist() if len(val_df) else []
    x_va = load_images(val_paths, size, threads, desc="load val")
    log.info(
        "loaded %d train + %d val images at %d px in %.1f s",
        len(x_tr),
        len(x_va),
        size,
        time.perf_counter() - t_load,
    )
    return x_tr, x_va


def _save_val_predictions(out: Path, y_va, val_df, score: np.ndarray) -> None:
    """The kept epoch's P(class 1) on the validation split: the evaluation picks its clinical
    operating points (threshold at a target specificity) here, never on the test set."""
    paths = val_df["path"].astype(str).to_numpy() if len(y_va) else np.zeros(0, str)
    io.write_csv(out / VAL_PREDICTIONS, pd.DataFrame({"path": paths, "y": y_va, "score": score}))


#: the validation split's predictions beside each trained classifier
VAL_PREDICTIONS = "val_predictions.csv"


def _save_run(out: Path, model, processor, history, classes, size, mean, std, arch, pretrained) -> None:
    """``model/`` (with the preprocessing prediction must repeat) and ``history.csv``."""
    model.to("cpu")
    info = {
        "classes": list(classes),
        "image_size": size,
        "image_mean": mean,
        "image_std": std,
        "arch": arch,
        "pretrained": str(pretrained),
    }
    _save_model_dir(model, processor, info, out / "model")
    io.write_csv(out / "history.csv", pd.DataFrame(history, columns=HISTORY_COLUMNS))


def train(
    arch: str,
    pretrained: str,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    out_dir,
    cfg: dict,
    seed: int,
    classes: list[str],
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Fine-tune ``pretrained`` end to end; write ``model/``, ``history.csv`` and ``train_summary.json``.

    ``cfg`` is the config's ``classify`` section (keys left out take the schema's defaults). The weights
    of the epoch with the lowest validation loss are kept (early stopping after
    ``early_stopping_patience`` epochs without improvement; without validation images, the last epoch).
    """
    # ---- setup: device, labels, model, images, loss weights, optimizer
    c = config.section("classify", cfg)
    torch.set_num_threads(max(1, int(threads)))
    dev = _training_device(device)
    amp = c["mixed_precision"] if dev.type == "cuda" else "no"
    y_tr = label_indices(train_df, classes, "training")
    y_va = label_indices(val_df, classes, "validation") if len(val_df) else np.zeros(0, np.int64)
    if len(y_tr) == 0:
        raise TrainingError("training manifest is empty: check the split and hybrid stages")
    size = int(c["image_size"])
    model, mean, std, processor = _load_classifier(arch, pretrained, classes, size, seed)
    model.to(dev)
    norm = normalizer(mean, std, dev)
    x_tr, x_va = _load_splits(train_df, val_df, size, threads)
    cw = _class_weights(y_tr, len(classes))
    loss_w = torch.tensor(cw, dtype=torch.float32, device=dev) if c["class_balance"] == "loss" else None
    batches = _Batches(x_tr, y_tr, cw, c, seed)
    total = int(c["epochs"]) * len(batches)
    optim = _Optimizer(model, c, total, amp)

    # ---- epochs: train, validate, keep the best weights, stop early
    history, best = [], {"loss": math.inf, "epoch": 0, "state": None}
    train_time, train_images, bad_epochs = 0.0, 0, 0
    t_start = time.perf_counter()
    bar = Bar(total=total, desc=f"train {arch} seed {seed}")
    for epoch in range(1, int(c["epochs"]) + 1):
        t_ep = time.perf_counter()
        train_loss, n_seen, ep_train_s = _train_epoch(
            model, batches, optim, norm, loss_w, dev, amp, epoch, bar
        )
        train_time += ep_train_s
        train_images += n_seen
        val, val_score = _validate(model, x_va, y_va, norm, dev, c, loss_w, amp, len(classes))
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                **val,
                "lr": optim.lr,
                "seconds": time.perf_counter() - t_ep,
                "train_seconds": ep_train_s,  # the optimisation steps alone, for img/s
            }
        )
        log.info(
            "epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f val_auroc %.4f",
            epoch,
            train_loss,
            val["val_loss"],
            val["val_accuracy"],
            val["val_auroc"],
        )
        if not len(y_va) or val["val_loss"] < best["loss"]:  # without validation the last epoch is kept
            best = {
                "loss": val["val_loss"] if len(y_va) else math.inf,
                "epoch": epoch,
                "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                "val_score": val_score,  # the kept weights' validation scores, saved beside them
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= int(c["early_stopping_patience"]):
                log.info("early stopping after epoch %d (best epoch %d)", epoch, best["epoch"])
                break
    bar.close()

    # ---- summary: the best weights, the history and what the run was
    model.load_state_dict(best["state"])
    _save_val_predictions(Path(out_dir), y_va, val_df, best["val_score"])
    _save_run(Path(out_dir), model, processor, history, classes, size, mean, std, arch, pretrained)
    origin = train_df["origin"].astype(str) if "origin" in train_df.columns else pd.Series([], dtype=str)
    summary = {
        "arch": arch,
        "pretrained": str(pretrained),
        "seed": int(seed),
        "device": str(dev),
        "mixed_precision": amp,
        "threads": int(threads),
        "best_epoch": best["epoch"],
        "best_val_loss": best["loss"] if math.isfinite(best["loss"]) else None,
        "epochs_run": len(history),
        "n_train": int(len(y_tr)),
        "n_val": int(len(y_va)),
        "n_synthetic": int((origin == "synthetic").sum()),
        "n_train_per_class": {cl: int((y_tr == i).sum()) for i, cl in enumerate(classes)},
        "class_weights": cw.tolist() if loss_w is not None else None,
        "class_balance": c["class_balance"],
        "wall_s": time.perf_counter() - t_start,
        "train_img_s": train_images / train_time if train_time else None,
        "config": {k: v for k, v in c.items() if k not in ("models", "seeds")},  # the recipe, not the jobs
    }
    io.write_json(Path(out_dir) / "train_summary.json", summary)
    return summary


# ---------------------------------------------------------------- predict / evaluate


def model_dir_of(model_dir) -> Path:
    p = Path(model_dir)
    # accept the training output folder as well as its model/ subfolder
    if (p / "model" / "config.json").exists() and not (p / "config.json").exists():
        return p / "model"
    return p


def load_trained(model_dir, classes: list[str]):
    """A trained classifier (its folder or the training output above it) for ``classes``: (model, mean,
    std, image size), the normalisation and size it was trained with."""
    from transformers import AutoModelForImageClassification

    d = model_dir_of(model_dir)
    model = load_pretrained(AutoModelForImageClassification, str(d))
    names = [model.config.id2label.get(i, f"LABEL_{i}") for i in range(model.config.num_labels)]
    if not all(n.startswith("LABEL_") for n in names) and names != list(classes):
        raise ConfigError(
            f"model '{d}' was trained for classes {names}, not {list(classes)}: retrain or fix "
            "the config's classes"
        )
    info_path = d / PREPROCESS_FILE
    if info_path.exists():
        info = json.loads(info_path.read_text())
        mean, std, size = info["image_mean"], info["image_std"], int(info["image_size"])
    else:
        mean, std, _ = _processor_stats(str(d))
        size = int(getattr(model.config, "image_size", 224))
    return model, mean, std, size


def predict(
    model_dir,
    df: pd.DataFrame,
    classes: list[str],
    batch_size: int = 64,
    threads: int = 1,
    device: str = "auto",
    mixed_precision: str = "no",
) -> np.ndarray:
    """P(malignant) = P(class 1) for every row of ``df`` (column ``path``).

    ``mixed_precision`` (fp16 | bf16) autocasts the forward pass on CUDA; the CPU always runs fp32.
    """
    pos = _positive_index(classes)
    torch.set_num_threads(max(1, int(threads)))
    dev = torch.device(resolve_device(device))
    amp = mixed_precision if dev.type == "cuda" else "no"
    model, mean, std, size = load_trained(model_dir, classes)
    model.to(dev).eval()
    norm = normalizer(mean, std, dev)
    paths = df["path"].astype(str).tolist()
    out = np.zeros(len(paths), dtype=np.float64)
    with torch.inference_mode():
        for i in Bar(range(0, len(paths), batch_size), desc="predict"):
            x = load_images(paths[i : i + batch_size], size, threads)
            x = norm(x.to(dev).float() / 255.0)
            with _autocast(dev, amp):
                logits = _logits(model, x)
            out[i : i + len(x)] = torch.softmax(logits, dim=1)[:, pos].cpu().numpy()
    return out


def train_from_manifests(
    arch: str,
    pretrained: str,
    train_manifest,
    val_manifests: list,
    out_dir,
    cfg: dict,
    seed: int,
    classes: list[str],
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """The train_classifier stage: a regime's training list and the real validation splits."""
    train_df = io.read_csv(train_manifest)
    val_df = io.read_manifests(val_manifests)
    return train(
        arch, pretrained, train_df, val_df, out_dir, cfg, seed, classes, threads=threads, device=device
    )
