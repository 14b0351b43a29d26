"""DreamBooth-LoRA fine-tuning of a Stable Diffusion UNet (the loop of diffusers' train_dreambooth_lora.py).

One LoRA is trained on all classes, each image captioned with its class prompt (the paper's setup).
Differences from the diffusers example, and why:

* the text encoder is frozen, so each distinct prompt is encoded once;
* the data order and flips depend only on (seed, epoch) and each step's noise/timesteps only on
  (seed, step, micro-batch), so a run resumed from a checkpoint ends at the same LoRA as an
  uninterrupted one;
* micro-batches form one stream across epochs, so every optimizer step accumulates exactly
  ``gradient_accumulation_steps`` micro-batches (the example's last step of an epoch may take fewer);
* checkpoints hold only the LoRA tensors, optimizer, lr scheduler, scaler and RNG states (megabytes,
  not the whole UNet), written atomically, newest two kept, removed once the final LoRA is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..errors import ConfigError, TrainingError
from ..hub import load_pretrained
from .pipeline import LORA_WEIGHT_NAME, resolve_device

log = logging.getLogger("dermsynth")

#: defaults for the ``finetune`` config section (paper Table II); the schema holds the same values.
DEFAULTS = {
    "instance_prompt": "a dermoscopic image of a {label} skin lesion",
    "resolution": 512,
    "train_batch_size": 2,
    "num_train_epochs": 120,
    "max_train_steps": None,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2.0e-6,
    "lr_min": 1.0e-6,
    "lora_learning_rate": 1.0e-4,
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 0,
    "optimizer": "adamw8bit",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_weight_decay": 1.0e-2,
    "adam_epsilon": 1.0e-8,
    "max_grad_norm": 1.0,
    "mixed_precision": "fp16",
    "rank": 4,
    "alpha": 4,
    "target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
    "checkpointing_steps": 500,
    "checkpoints_total_limit": 2,
    "center_crop": True,
    "random_flip": True,
    "seed": 42,
}
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw8bit", "adamw")
PRECISIONS = ("no", "fp16", "bf16")
#: keys that may change between a checkpoint and its resume without changing the result
_RESUME_NEUTRAL = ("checkpointing_steps", "checkpoints_total_limit")


def settings(cfg: dict) -> dict:
    """``cfg`` over DEFAULTS, with the enumerated values checked."""
    s = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or k == "max_train_steps"}}
    for key, allowed in (("lr_scheduler", LR_SCHEDULERS), ("optimizer", OPTIMIZERS),
                         ("mixed_precision", PRECISIONS)):
        if s[key] not in allowed:
            raise ConfigError(f"finetune.{key} = '{s[key]}' is not allowed: use one of {', '.join(allowed)}")
    for key in ("train_batch_size", "gradient_accumulation_steps", "rank", "checkpointing_steps",
                "resolution"):
        if int(s[key]) < 1:
            raise ConfigError(f"finetune.{key} must be >= 1, got {s[key]}")
    return s


def effective_precision(requested: str, device: str) -> str:
    if requested == "fp16" and not device.startswith("cuda"):
        # Accelerate silently runs fp32 for fp16 on CPU, and fp16 weights on CPU are 5-11x slower
        log.warning("mixed_precision fp16 needs CUDA; training on %s in fp32 (mixed_precision 'no')", device)
        return "no"
    return requested


def _seed_int(*parts) -> int:
    """A stable 63-bit seed from parts (hashlib: Python's hash() changes per process)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# data


class _Data:
    """Deterministic batches: micro-batch ``m`` is batch ``m % nb`` of epoch ``m // nb``."""

    def __init__(self, images: pd.DataFrame, s: dict):
        self.paths = [str(p) for p in images["path"]]
        self.labels = [str(v) for v in images["label"]]
        self.n = len(self.paths)
        self.bs = int(s["train_batch_size"])
        self.nb = math.ceil(self.n / self.bs)
        self.res = int(s["resolution"])
        self.center_crop = bool(s["center_crop"])
        self.random_flip = bool(s["random_flip"])
        self.seed = int(s["seed"])
        self._plans: dict[int, tuple] = {}

    def _plan(self, epoch: int):
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.n)
            flips = rng.random(self.n) < 0.5
            crops = rng.random((self.n, 2))
            self._plans = {epoch: (perm, flips, crops)}  # only the current epoch is ever needed
        return self._plans[epoch]

    def epoch_of(self, m: int) -> int:
        return m // self.nb

    def batch(self, m: int):
        import torch

        epoch, b = divmod(m, self.nb)
        perm, flips, crops = self._plan(epoch)
        idx = perm[b * self.bs : (b + 1) * self.bs]
        arrays = [self._load(i, bool(flips[i]) and self.random_flip, crops[i]) for i in idx]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return pixels, [self.labels[i] for i in idx]

    def _load(self, i: int, flip: bool, crop_frac) -> np.ndarray:
        from PIL import Image

        im = io.load_rgb(self.paths[i])
        w, h = im.size
        scale = self.res / min(w, h)
        if (w, h) != (self.res, self.res):
            im = im.resize((max(self.res, round(w * scale)), max(self.res, round(h * scale))),
                           Image.Resampling.BILINEAR)
        w, h = im.size
        if self.center_crop:
            left, top = (w - self.res) // 2, (h - self.res) // 2
        else:
            left, top = int(crop_frac[0] * (w - self.res + 1)), int(crop_frac[1] * (h - self.res + 1))
        im = im.crop((left, top, left + self.res, top + self.res))
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(im, dtype=np.uint8)


class _Prefetcher:
    """Loads micro-batch m+1 on a thread while m trains (image decoding is off the GPU's path)."""

    def __init__(self, data: _Data):
        self.data = data
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[int, object] = {}

    def get(self, m: int):
        fut = self.pending.pop(m, None) or self.pool.submit(self.data.batch, m)
        self.pending = {m + 1: self.pool.submit(self.data.batch, m + 1)}
        return fut.result()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# checkpoints


def _fingerprint(pretrained: str, images: pd.DataFrame, s: dict) -> str:
    key = {k: v for k, v in s.items() if k not in _RESUME_NEUTRAL}
    key.update(pretrained=str(pretrained), paths=[str(p) for p in images["path"]],
               labels=[str(v) for v in images["label"]])
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _save_rng(d: Path) -> None:
    """RNG states as a tensor file + JSON (no pickle, so loading a checkpoint runs no code)."""
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(tensors, d / "rng.pt")
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    (d / "rng.json").write_text(json.dumps({
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(pstate), pgauss],
    }))


def _load_rng(d: Path) -> None:
    import torch

    tensors = torch.load(d / "rng.pt", weights_only=True)
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    state = json.loads((d / "rng.json").read_text())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, pstate, pgauss = state["python"]
    random.setstate((version, tuple(pstate), pgauss))


def _save_checkpoint(ckpt_dir: Path, step: int, params: dict, optimizer, lr_scheduler, scaler,
                     history: list, fingerprint: str, keep: int) -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"checkpoint-{step}"
    tmp = ckpt_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: p.detach().float().cpu().contiguous() for n, p in params.items()}, tmp / "lora.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    _save_rng(tmp)
    # state.json last: its presence marks a complete checkpoint
    state = {"step": step, "fingerprint": fingerprint, "history": history}
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for d in ckpt_dir.glob("checkpoint-*"):
        suffix = d.name.split("-", 1)[1]
        if suffix.isdigit() and (d / "state.json").exists():
            found.append((int(suffix), d))
    return [d for _, d in sorted(found)]


def _load_checkpoint(d: Path, params: dict, optimizer, lr_scheduler, scaler) -> tuple[int, list]:
    import torch
    from safetensors.torch import load_file

    state = json.loads((d / "state.json").read_text())
    tensors = load_file(d / "lora.safetensors")
    if set(tensors) != set(params):
        raise TrainingError(f"checkpoint {d} holds other LoRA tensors than this model: delete {d.parent}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=True))
    if scaler is not None and (d / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(d / "scaler.pt", weights_only=True))
    _load_rng(d)
    return int(state["step"]), state["history"]


def _find_resume(ckpt_dir: Path, fingerprint: str) -> Path | None:
    for d in reversed(_checkpoints(ckpt_dir)):
        if json.loads((d / "state.json").read_text()).get("fingerprint") == fingerprint:
            return d
        log.warning("ignoring checkpoint %s: it was made with other data or settings", d)
    return None


# ---------------------------------------------------------------------------------------------
# model parts


def _optimizer(s: dict, params: list):
    import torch

    kw = dict(lr=float(s["lora_learning_rate"]), betas=(float(s["adam_beta1"]), float(s["adam_beta2"])),
              weight_decay=float(s["adam_weight_decay"]), eps=float(s["adam_epsilon"]))
    if s["optimizer"] == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kw)
        except (ImportError, RuntimeError) as e:
            log.warning("bitsandbytes unavailable (%s); using torch AdamW", e)
    return torch.optim.AdamW(params, **kw)


def _lr_scheduler(s: dict, optimizer, total_steps: int, num_processes: int):
    from diffusers.optimization import get_polynomial_decay_schedule_with_warmup, get_scheduler

    warmup = int(s["lr_warmup_steps"]) * num_processes
    total = total_steps * num_processes
    if s["lr_scheduler"] == "polynomial":
        # the one schedule with a floor: lr_min is its end value
        return get_polynomial_decay_schedule_with_warmup(optimizer, warmup, total, lr_end=float(s["lr_min"]))
    return get_scheduler(s["lr_scheduler"], optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _new_accelerator(mixed_precision: str, accum: int, device: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # the state is a process-wide singleton: a second run in one process (tests, notebooks) with
    # another precision or device would otherwise be refused
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=accum,
                       cpu=not device.startswith("cuda"))


def _weight_dtype(mixed_precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


# ---------------------------------------------------------------------------------------------
# outputs


def _save_lora(unet, output_dir: Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    tmp = output_dir / f".tmp-lora-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True,
                                              weight_name=LORA_WEIGHT_NAME)
    final = output_dir / LORA_WEIGHT_NAME
    os.replace(tmp / LORA_WEIGHT_NAME, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


def plot_loss(history: pd.DataFrame, path) -> None:
    """Loss per step and its moving average (the paper's Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, min(50, len(history) // 10))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(history["step"], history["loss"], lw=0.8, alpha=0.4, label="loss")
    ax.plot(history["step"], history["loss"].rolling(window, min_periods=1).mean(), lw=1.8,
            label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title("DreamBooth-LoRA training loss")
    ax.legend()
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _peak_mem_gb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


# ---------------------------------------------------------------------------------------------
# the loop


def train_lora(pretrained: str, images: pd.DataFrame, output_dir, cfg: dict, checkpoint_dir,
               threads: int = 1, device: str = "auto", on_step=None) -> dict:
    """Train one DreamBooth LoRA on ``images`` (columns path,label); return the training summary.

    Writes ``pytorch_lora_weights.safetensors``, ``loss.csv``, ``loss.png`` and ``train_summary.json``
    into ``output_dir``. Resumes from the newest complete checkpoint in ``checkpoint_dir`` and
    deletes that folder at the end. ``on_step(step, loss)`` is called after every optimizer step.
    """
    import torch
    import torch.nn.functional as F
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from tqdm.auto import tqdm
    from transformers import CLIPTextModel, CLIPTokenizer

    t_start = time.perf_counter()
    s = settings(cfg)
    if len(images) == 0:
        raise TrainingError("no training images: the fine-tune split is empty, check the split stage")
    torch.set_num_threads(threads)
    device = resolve_device(device)
    mp = effective_precision(s["mixed_precision"], device)
    accum = int(s["gradient_accumulation_steps"])
    accelerator = _new_accelerator(mp, accum, device)
    dev = accelerator.device
    set_seed(int(s["seed"]))

    data = _Data(images, s)
    steps_per_epoch = math.ceil(data.nb / accum)
    total_steps = int(s["max_train_steps"] or int(s["num_train_epochs"]) * steps_per_epoch)

    # -- models: frozen VAE and text encoder, LoRA on the UNet's attention projections.
    # On CPU the frozen weights stay fp32: low-precision CPU kernels are slower; autocast covers bf16.
    weight_dtype = _weight_dtype(mp) if device.startswith("cuda") else torch.float32
    pretrained = str(pretrained)
    kw = dict(use_safetensors=True, dtype=weight_dtype)
    tokenizer = load_pretrained(CLIPTokenizer, pretrained, subfolder="tokenizer", model_max_length=77)
    text_encoder = load_pretrained(CLIPTextModel, pretrained, subfolder="text_encoder", **kw)
    vae = load_pretrained(AutoencoderKL, pretrained, subfolder="vae", **kw)
    unet = load_pretrained(UNet2DConditionModel, pretrained, subfolder="unet", **kw)
    noise_scheduler = load_pretrained(DDPMScheduler, pretrained, subfolder="scheduler")
    for m in (vae, text_encoder, unet):
        m.requires_grad_(False)
        m.to(dev)
    unet.add_adapter(LoraConfig(r=int(s["rank"]), lora_alpha=float(s["alpha"]), init_lora_weights="gaussian",
                                target_modules=list(s["target_modules"])))
    if weight_dtype != torch.float32:
        # fp32 master weights: the fp16 scaler refuses fp16 grads, and bf16 rounds away small Adam updates
        cast_training_params(unet, dtype=torch.float32)
    params = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    n_trainable = sum(p.numel() for p in params.values())

    # -- the frozen text encoder gives each class prompt one embedding, computed once
    embeds = {}
    with torch.no_grad():
        for label in sorted(set(data.labels)):
            ids = tokenizer(s["instance_prompt"].format(label=label), padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            embeds[label] = text_encoder(ids.to(dev))[0]
    del text_encoder
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    optimizer = _optimizer(s, list(params.values()))
    lr_scheduler = _lr_scheduler(s, optimizer, total_steps, accelerator.num_processes)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    # -- resume
    ckpt_dir = Path(checkpoint_dir)
    fingerprint = _fingerprint(pretrained, images, s)
    start, history, resumed_from = 0, [], None
    resume = _find_resume(ckpt_dir, fingerprint)
    if resume is not None:
        start, history = _load_checkpoint(resume, params, optimizer, lr_scheduler, accelerator.scaler)
        resumed_from = start
        log.info("resuming from %s (step %d of %d)", resume, start, total_steps)
    log.info("training LoRA r=%s on %d images (%d labels), %d steps, batch %d x accum %d, %s, "
             "mixed precision %s, %d trainable params", s["rank"], data.n, len(embeds), total_steps, data.bs,
             accum, device, mp, n_trainable)

    prediction_type = noise_scheduler.config.prediction_type
    scaling = vae.config.scaling_factor
    n_train_t = noise_scheduler.config.num_train_timesteps
    loader = _Prefetcher(data)
    bar = tqdm(total=total_steps, initial=start, desc="finetune", disable=None, dynamic_ncols=True)
    t_loop = time.perf_counter()
    unet.train()
    try:
        for step in range(start, total_steps):
            micro_losses = []
            for a in range(accum):
                m = step * accum + a
                pixels, labels = loader.get(m)
                # randomness depends on (seed, micro-batch index) only: a resumed run draws the same noise
                g = torch.Generator().manual_seed(_seed_int(s["seed"], "noise", m))
                with accelerator.accumulate(unet):
                    with torch.no_grad():
                        dist = vae.encode(pixels.to(dev, dtype=weight_dtype)).latent_dist
                        eps = torch.randn(dist.mean.shape, generator=g).to(dist.mean)
                        latents = (dist.mean + dist.std * eps) * scaling
                    noise = torch.randn(latents.shape, generator=g).to(latents)
                    t = torch.randint(0, n_train_t, (latents.shape[0],), generator=g).to(dev)
                    noisy = noise_scheduler.add_noise(latents, noise, t)
                    cond = torch.cat([embeds[lb] for lb in labels])
                    pred = unet(noisy, t, cond, return_dict=False)[0]
                    if prediction_type == "epsilon":
                        target = noise
                    elif prediction_type == "v_prediction":
                        target = noise_scheduler.get_velocity(latents, noise, t)
                    else:
                        raise ConfigError(f"scheduler prediction_type '{prediction_type}' is not supported")
                    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                    value = loss.item()
                    if not math.isfinite(value):
                        hint = " or use mixed_precision 'bf16'/'no'" if mp == "fp16" else ""
                        raise TrainingError(
                            f"loss became {value} at step {step + 1} (epoch {data.epoch_of(m)}): lower "
                            f"finetune.lora_learning_rate (now {s['lora_learning_rate']}){hint}; no LoRA was "
                            "written"
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(list(params.values()), float(s["max_grad_norm"]))
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_losses.append(value)
            global_step = step + 1
            loss_value = float(np.mean(micro_losses))
            lr_now = lr_scheduler.get_last_lr()[0]
            history.append([global_step, data.epoch_of(step * accum), loss_value, lr_now])
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if global_step % int(s["checkpointing_steps"]) == 0 and global_step < total_steps:
                d = _save_checkpoint(ckpt_dir, global_step, params, optimizer, lr_scheduler,
                                     accelerator.scaler, history, fingerprint,
                                     keep=int(s["checkpoints_total_limit"]))
                log.info("saved checkpoint %s", d)
            if on_step is not None:
                on_step(global_step, loss_value)
    finally:
        bar.close()
        loader.close()
    loop_s = time.perf_counter() - t_loop

    # -- outputs
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    unet = accelerator.unwrap_model(unet)
    lora_path = _save_lora(unet, out)
    hist = pd.DataFrame(history, columns=["step", "epoch", "loss", "lr"])
    io.write_csv(out / "loss.csv", hist)
    plot_loss(hist, out / "loss.png")
    ran = total_steps - start
    summary = {
        "steps": total_steps,
        "epochs": data.epoch_of(total_steps * accum - 1) + 1,
        "steps_this_run": ran,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "it_s": round(ran / loop_s, 3) if loop_s > 0 else None,
        "peak_mem_gb": round(_peak_mem_gb(device), 3),
        "device": device,
        "mixed_precision": mp,
        "mixed_precision_requested": s["mixed_precision"],
        "n_images": data.n,
        "labels": sorted(embeds),
        "resumed_from": resumed_from,
        "final_loss": float(hist["loss"].tail(max(1, len(hist) // 10)).mean()),
        "trainable_params": n_trainable,
        "optimizer": type(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).__name__,
        "seed": int(s["seed"]),
        "threads": threads,
        "pretrained": pretrained,
        "lora_sha256": io.sha256_file(lora_path),
    }
    io.write_json(out / "train_summary.json", summary)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("LoRA written to %s (%d steps, %.2f it/s, final loss %.4f)", lora_path, total_steps,
             summary["it_s"] or 0.0, summary["final_loss"])
    return summary
