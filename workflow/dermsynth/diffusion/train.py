"""DreamBooth-LoRA fine-tuning of a Stable Diffusion UNet (the loop of diffusers' train_dreambooth_lora.py).

One LoRA is trained on all classes, each image captioned with its class prompt (the paper's setup,
``lora_mode: shared``), or one LoRA per class (``lora_mode: per_class``).
Differences from the diffusers example, and why:

* the text encoder is frozen, so each distinct prompt is encoded once;
* with ``cache_latents`` the VAE encodes every image once (both flips when flipping is on): the
  step then draws ``mean + std * eps`` from the cached distribution, as the uncached step does;
* the loss is synced to the host only every ``logging_steps`` steps (and before a checkpoint), not
  every step; a NaN/inf found then still names its step and stops before anything is saved;
* the data order and flips depend only on (seed, epoch) and each step's noise/timesteps only on
  (seed, step, micro-batch), so a run resumed from a checkpoint ends at the same LoRA as an
  uninterrupted one;
* micro-batches form one stream across epochs, so every optimizer step accumulates exactly
  ``gradient_accumulation_steps`` micro-batches (the example's last step of an epoch may take fewer);
* checkpoints hold only the LoRA tensors, optimizer, lr scheduler, scaler and RNG states (megabytes,
  not the whole UNet), written atomically, newest two kept, removed once the final LoRA is written.
"""

from __future__ import annotations

import contextlib
import functools
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
from ..errors import ConfigError, TrainingError, one_line
from ..hub import load_pretrained
from .adamw8bit import adamw8bit_class
from .flat_params import BNB_BLOCK, BNB_MIN_8BIT_SIZE, FlatParams
from .pipeline import KOHYA_SUFFIX, LORA_WEIGHT_NAME, compile_unavailable, resolve_device

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
    "lora_mode": "shared",
    "gradient_checkpointing": False,
    "attention": "sdpa",
    "cache_latents": True,
    "channels_last": True,
    "compile": True,
    "compile_mode": "default",
    "compile_check_tol": 0.1,
    "snr_gamma": None,
    "noise_offset": 0.0,
    "allow_tf32": True,
    "logging_steps": 10,
    "validation_epochs": 20,
    "num_validation_images": 4,
    "validation_inference_steps": 20,
    "validation_guidance_scale": 7.0,
    "validation_sampler": "euler",
    "tensorboard": True,
    "export": ["diffusers", "kohya"],
}
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw8bit", "adamw")
PRECISIONS = ("no", "fp16", "bf16")
LORA_MODES = ("shared", "per_class")
EXPORTS = ("diffusers", "kohya")
ATTENTIONS = ("sdpa", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: keys that may change between a checkpoint and its resume without changing the result
_RESUME_NEUTRAL = (
    "channels_last",
    "compile",
    "compile_mode",
    "compile_check_tol",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "logging_steps",
    "validation_epochs",
    "num_validation_images",
    "validation_inference_steps",
    "validation_guidance_scale",
    "validation_sampler",
    "tensorboard",
    "export",
)


def settings(cfg: dict) -> dict:
    """``cfg`` over DEFAULTS, with the enumerated values checked."""
    s = {
        **DEFAULTS,
        **{
            k: v
            for k, v in cfg.items()
            if v is not None or k in ("max_train_steps", "snr_gamma", "compile_check_tol")
        },
    }
    s.pop("run", None)  # the run's name is the output folder, not a training setting
    for key, allowed in (
        ("lr_scheduler", LR_SCHEDULERS),
        ("optimizer", OPTIMIZERS),
        ("mixed_precision", PRECISIONS),
        ("lora_mode", LORA_MODES),
        ("attention", ATTENTIONS),
        ("compile_mode", COMPILE_MODES),
    ):
        if s[key] not in allowed:
            raise ConfigError(f"finetune.{key} = '{s[key]}' is not allowed: use one of {', '.join(allowed)}")
    for key in (
        "train_batch_size",
        "gradient_accumulation_steps",
        "rank",
        "checkpointing_steps",
        "resolution",
        "logging_steps",
    ):
        if int(s[key]) < 1:
            raise ConfigError(f"finetune.{key} must be >= 1, got {s[key]}")
    if "diffusers" not in s["export"] or not set(s["export"]) <= set(EXPORTS):
        raise ConfigError(
            f"finetune.export = {s['export']} is not allowed: list diffusers (generate loads it), "
            f"optionally with {', '.join(EXPORTS[1:])}"
        )
    if s["snr_gamma"] is not None and float(s["snr_gamma"]) <= 0:
        raise ConfigError(f"finetune.snr_gamma must be > 0 or null, got {s['snr_gamma']}")
    if s["compile_check_tol"] is not None and float(s["compile_check_tol"]) <= 0:
        raise ConfigError(f"finetune.compile_check_tol must be > 0 or null, got {s['compile_check_tol']}")
    if s["cache_latents"] and not s["center_crop"]:
        # a random crop changes every epoch: a cache would freeze the first one
        log.warning("cache_latents is off: center_crop is false, so crops change every epoch")
        s["cache_latents"] = False
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
    """Deterministic batches: micro-batch ``m`` is batch ``m % nb`` of epoch ``m // nb``; an epoch
    shows every image once, and its last batch repeats up to ``bs - 1`` of them."""

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

    def indices(self, m: int):
        """(image indices, flip flags, crop fractions) of micro-batch ``m``: always ``bs`` images, the
        last batch of an epoch topped up with the epoch's first ones."""
        epoch, b = divmod(m, self.nb)
        perm, flips, crops = self._plan(epoch)
        # a smaller last batch would change the step's shapes: a compiled UNet would compile again
        # for it (minutes on a GPU), and under CUDA graphs record and keep a second graph
        idx = perm[np.arange(b * self.bs, (b + 1) * self.bs) % self.n]
        return idx, (flips[idx] & self.random_flip), crops[idx]

    def pixels(self, idx, flips, crops):
        import torch

        arrays = [self._load(i, bool(f), c) for i, f, c in zip(idx, flips, crops, strict=True)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def batch(self, m: int):
        idx, flips, crops = self.indices(m)
        return self.pixels(idx, flips, crops), [self.labels[i] for i in idx]

    def _load(self, i: int, flip: bool, crop_frac) -> np.ndarray:
        from PIL import Image

        im = io.load_rgb(self.paths[i])
        w, h = im.size
        scale = self.res / min(w, h)
        if (w, h) != (self.res, self.res):
            im = im.resize(
                (max(self.res, round(w * scale)), max(self.res, round(h * scale))), Image.Resampling.BILINEAR
            )
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


def _fingerprint(pretrained: str, images: pd.DataFrame, s: dict, num_processes: int = 1) -> str:
    key = {k: v for k, v in s.items() if k not in _RESUME_NEUTRAL}
    key.update(
        pretrained=str(pretrained),
        paths=[str(p) for p in images["path"]],
        labels=[str(v) for v in images["label"]],
    )
    # 2: optimizer states of flat parameter buffers (flat_params.py), not one per LoRA matrix
    key["checkpoint_format"] = 2
    if num_processes != 1:
        # a step's micro-batches and the LR schedule's step count scale with the process count: a
        # checkpoint from another GPU count would resume on another data stream and schedule
        key["num_processes"] = int(num_processes)
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
    (d / "rng.json").write_text(
        json.dumps(
            {
                "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": [version, list(pstate), pgauss],
            }
        )
    )


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


def _save_checkpoint(
    ckpt_dir: Path,
    step: int,
    params: dict,
    optimizer,
    lr_scheduler,
    scaler,
    history: list,
    fingerprint: str,
    keep: int,
) -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"checkpoint-{step}"
    tmp = ckpt_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # copies: the parameters are views of shared flat buffers, which safetensors refuses
    tensors = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in params.items()}
    save_file(tensors, tmp / "lora.safetensors")
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


def _flat_params(s: dict, params: list) -> FlatParams:
    """The LoRA re-homed into flat buffers, laid out so 8-bit AdamW updates exactly as per tensor."""
    if s["optimizer"] == "adamw8bit":
        return FlatParams(params, split_at=BNB_MIN_8BIT_SIZE, align=BNB_BLOCK)
    return FlatParams(params)


def _optimizer(s: dict, flat: FlatParams, device: str = "cpu"):
    import torch

    params = [
        {"params": [f], **({"optim_bits": 32} if small else {})}
        for f, small in zip(flat.flat, flat.small, strict=True)
    ]
    kw = dict(
        lr=float(s["lora_learning_rate"]),
        betas=(float(s["adam_beta1"]), float(s["adam_beta2"])),
        weight_decay=float(s["adam_weight_decay"]),
        eps=float(s["adam_epsilon"]),
    )
    if s["optimizer"] == "adamw8bit":
        try:
            return adamw8bit_class()(params, **kw)
        except (ImportError, RuntimeError) as e:
            log.warning("bitsandbytes unavailable (%s); using torch AdamW", e)
    if device.startswith("cuda"):
        kw["fused"] = True  # one kernel for all parameters instead of a loop of small ones
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
    return Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=accum, cpu=not device.startswith("cuda")
    )


def _weight_dtype(mixed_precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


# ---------------------------------------------------------------------------------------------
# outputs


def _save_lora(unet, output_dir: Path, kohya_name: str | None = None) -> Path:
    """Write the LoRA in diffusers' format (+ kohya's as ``kohya_name``); return the diffusers file.

    The adapter's LoraConfig goes into the file's metadata, as diffusers' DreamBooth-LoRA scripts save it
    (their ``_collate_lora_metadata``): without it ``load_lora_weights`` assumes alpha = rank.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    peft_sd = get_peft_model_state_dict(unet)
    tmp = output_dir / f".tmp-lora-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(
        tmp,
        unet_lora_layers=convert_state_dict_to_diffusers(peft_sd),
        safe_serialization=True,
        weight_name=LORA_WEIGHT_NAME,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    final = output_dir / LORA_WEIGHT_NAME
    os.replace(tmp / LORA_WEIGHT_NAME, final)
    shutil.rmtree(tmp, ignore_errors=True)
    if kohya_name:
        _save_kohya(peft_sd, unet.peft_config["default"], output_dir / kohya_name)
    return final


def _save_kohya(peft_sd: dict, config, path: Path) -> None:
    """The LoRA as kohya/AUTOMATIC1111 web UI read it: ``lora_unet_*.lora_{down,up}.weight`` + ``.alpha``."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    sd = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    # diffusers writes alpha = rank (its scripts train so); the web UI scales by alpha / rank
    alpha = float(config.lora_alpha)
    sd = {k: torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous() for k, v in sd.items()}
    # kohya's own metadata keys, which the web UI shows and kohya's tools read
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.r),
        "ss_network_alpha": str(alpha),
    }
    with io.atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)


def plot_loss(history: pd.DataFrame, path) -> None:
    """Loss per step and its moving average (the paper's Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, min(50, len(history) // 10))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(history["step"], history["loss"], lw=0.8, alpha=0.4, label="loss")
    ax.plot(
        history["step"],
        history["loss"].rolling(window, min_periods=1).mean(),
        lw=1.8,
        label=f"moving average ({window} steps)",
    )
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


def _peak_figures(peaks: dict, device: str) -> dict:
    """The summary's memory figures from the peaks of training and of validation, in GB."""
    if not device.startswith("cuda"):
        rss = round(_peak_mem_gb(device), 3)  # a process's RSS peak cannot be split by stretch
        return {
            "peak_mem_gb": rss,
            "peak_mem_with_validation_gb": rss,
            "peak_mem_reserved_gb": None,
            "peak_mem_reserved_with_validation_gb": None,
        }
    (alloc, reserved), (val_alloc, val_reserved) = peaks["train"], peaks["validation"]
    return {
        "peak_mem_gb": round(alloc, 3),
        "peak_mem_with_validation_gb": round(max(alloc, val_alloc), 3),
        "peak_mem_reserved_gb": round(reserved, 3),
        "peak_mem_reserved_with_validation_gb": round(max(reserved, val_reserved), 3),
    }


# ---------------------------------------------------------------------------------------------
# speed options, latent cache, validation


def _apply_speed_options(unet, s: dict, device: str) -> str:
    """Attention kernel, gradient checkpointing, memory format and TF32; returns the attention's name."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if s["attention"] == "sdpa":
        # torch 2's fused scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)
        unet.set_attn_processor(AttnProcessor2_0())
        attention = "sdpa (torch.nn.functional.scaled_dot_product_attention)"
    else:
        unet.set_attn_processor(AttnProcessor())
        attention = "eager (softmax(QK^T)V in separate kernels)"
    if s["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    if device.startswith("cuda"):
        # every step has the same shapes, so cuDNN's one-off algorithm search pays for itself
        torch.backends.cudnn.benchmark = True
        if s["channels_last"]:
            # NHWC is the layout tensor-core convolutions want; NCHW costs a transpose per conv
            unet.to(memory_format=torch.channels_last)
        if s["allow_tf32"]:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return attention


def _upsample2x_nearest(m, hidden_states, output_size=None, *args, **kwargs):
    """diffusers' Upsample2D at its SD settings, the 2x nearest copy written as broadcast + reshape.

    Same values as ``F.interpolate(scale_factor=2.0, mode="nearest")``, same memory format; its
    backward is a sum over each 2x2 block where interpolate's is a scatter-add (index_put).
    """
    import torch

    n, c, h, w = hidden_states.shape
    if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
        return type(m).forward(m, hidden_states, output_size, *args, **kwargs)
    if hidden_states.is_contiguous(memory_format=torch.channels_last) and c > 1:
        # NHWC: copy in that order, so the result stays channels-last with a single copy
        x = hidden_states.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c)
        x = x.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    else:
        x = hidden_states[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
    return m.conv(x)


def _upsampling_without_scatter(unet) -> int:
    """Routes the UNet's 2x nearest upsamplers through ``_upsample2x_nearest``; returns how many.

    Inductor (torch 2.13, CPU) can order the scatter-add of interpolate's backward after a kernel
    that already reads its result when a division follows it, as ResnetBlock2D's
    ``/ output_scale_factor`` does before every SD up-block's Upsample2D: the gradient into the up
    block comes back zero. Which shapes it hits depends on its fusion choices (the test UNet's, not
    SD1.5's at 16x16 latents; the CPU repro's shapes came out right with torch 2.11's Triton on an
    H100); a block sum has no scatter to misorder.
    """
    from diffusers.models.upsampling import Upsample2D

    n = 0
    for m in unet.modules():
        if (
            type(m) is Upsample2D
            and m.interpolate
            and m.use_conv
            and not m.use_conv_transpose
            and m.norm is None
            and m.name == "conv"
        ):
            m.forward = functools.partial(_upsample2x_nearest, m)
            n += 1
    return n


def _compiles_on(device: str) -> bool:
    """torch.compile pays on CUDA only: on CPU its minutes of compilation outweigh the step it speeds."""
    return device.startswith("cuda")


def _compile_backend() -> str:
    return "inductor"


def _records_cuda_graphs(mode: str) -> bool:
    """Whether torch.compile's ``mode`` replays the step as CUDA graphs (where the device allows)."""
    return mode in ("reduce-overhead", "max-autotune")


def _without_cuda_graphs(mode: str) -> str:
    """The compile mode that builds the same kernels as ``mode`` but records no CUDA graphs."""
    return "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"


def _compile_checks(mode: str) -> int:
    """How many steps of a compiled job are checked against eager: 2 where the mode records CUDA
    graphs (the first run and the first replay), else 1."""
    return 2 if _records_cuda_graphs(mode) else 1


def _compile_trial_calls(mode: str) -> int:
    """The compiled calls in which torch.compile builds its graphs: the first; where the mode records
    CUDA graphs, up to the first replay (warm-up, record, replay)."""
    return 3 if _records_cuda_graphs(mode) else 1


def _cuda_graphs_ran(compiled: bool, mode: str, skips_before: int = 0) -> bool | None:
    """The summary's ``cuda_graphs``: null where the job records none, else whether Inductor has
    declined none since ``skips_before`` (it records no graph of a CPU step, and may decline a GPU
    one, e.g. for a CPU tensor in it)."""
    if not (compiled and _records_cuda_graphs(mode) and _compile_backend() == "inductor"):
        return None
    return _cudagraph_skips() == skips_before


def _cudagraph_skips() -> int:
    """How many times Inductor declined CUDA graphs in this process (it logs each reason on CUDA)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _grad_rel_error(ref: list, got: list) -> float:
    """||got - ref|| / ||ref|| over all tensors: nan where ``ref`` is not finite (no reference),
    inf where only ``got`` is not, 0 where both are 0."""
    den = sum(float(r.float().square().sum()) for r in ref)
    if not math.isfinite(den):
        return math.nan
    num = sum(float((g.float() - r.float()).square().sum()) for r, g in zip(ref, got, strict=True))
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def _eager():
    """Context in which compiled modules run their eager code (torch >= 2.6), else no-op."""
    import torch

    if hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()


def _to_device(t, device, dtype=None):
    """A small host tensor onto the device without a stream sync.

    A blocking host-to-device copy waits for every kernel already queued, and a training step makes
    several (noise, timesteps, cache indices); from pageable memory the non-blocking copy still stages
    the data before returning, so the host tensor may go at once.
    """
    return t.to(device=device, dtype=dtype, non_blocking=True)


class _LatentCache:
    """The VAE's latent distribution (mean, std) of every image, and of its mirror when flipping is on."""

    def __init__(self, vae, data: _Data, dev, dtype, batch: int):
        import torch

        flips = (False, True) if data.random_flip else (False,)
        means, stds = {}, {}
        with torch.no_grad():
            for flip in flips:
                mu, sd = [], []
                for lo in range(0, data.n, batch):
                    idx = np.arange(lo, min(lo + batch, data.n))
                    pixels = data.pixels(idx, np.full(len(idx), flip), np.zeros((len(idx), 2)))
                    dist = vae.encode(pixels.to(dev, dtype=dtype)).latent_dist
                    mu.append(dist.mean)
                    sd.append(dist.std)
                means[flip], stds[flip] = torch.cat(mu), torch.cat(sd)
        self.means, self.stds = means, stds
        self.nbytes = sum(t.numel() * t.element_size() for t in (*means.values(), *stds.values()))

    def get(self, idx, flips):
        import torch

        dev = self.means[False].device
        idx_t = _to_device(torch.as_tensor(np.asarray(idx)), dev)
        flip_t = _to_device(torch.as_tensor(np.asarray(flips, dtype=bool)), dev)
        if True not in self.means:
            return self.means[False][idx_t], self.stds[False][idx_t]
        f = flip_t.view(-1, 1, 1, 1)
        mean = torch.where(f, self.means[True][idx_t], self.means[False][idx_t])
        std = torch.where(f, self.stds[True][idx_t], self.stds[False][idx_t])
        return mean, std


def _validate(
    unet, vae, scheduler_config, embeds: dict, uncond, s: dict, out: Path, step: int, epoch: int, autocast
) -> Path:
    """``num_validation_images`` per class into ``out/validation/step-N/`` (one image at a time).

    Runs under no_grad with the UNet in eval mode and decodes one image at a time, so validation
    never needs more memory than a training step; the text encoder is not needed (embeddings are cached).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    from .pipeline import make_scheduler

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=make_scheduler(s["validation_sampler"], scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    d = out / "validation" / f"step-{step:07d}"
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad(), autocast():
            for label in sorted(embeds):
                for i in range(int(s["num_validation_images"])):
                    # the same seeds at every validation: rows of the grid differ only by training
                    g = torch.Generator().manual_seed(_seed_int(s["seed"], "validation", label, i))
                    image = pipe(
                        prompt_embeds=embeds[label],
                        negative_prompt_embeds=uncond,
                        num_inference_steps=int(s["validation_inference_steps"]),
                        guidance_scale=float(s["validation_guidance_scale"]),
                        height=int(s["resolution"]),
                        width=int(s["resolution"]),
                        generator=g,
                        output_type="pil",
                    ).images[0]
                    io.save_png(d / f"{label}_{i}.png", image)
    finally:
        unet.train(was_training)
    io.write_json(d / "info.json", {"step": step, "epoch": epoch})
    return d


def validation_grid(out: Path, path: Path) -> Path:
    """One row per validation (oldest on top), one column per image (class by class): the paper's Fig. 4."""
    from PIL import Image, ImageDraw

    rows = sorted((out / "validation").glob("step-*/info.json"))
    grid_rows = []
    for info_path in rows:
        info = json.loads(info_path.read_text())
        files = sorted(info_path.parent.glob("*.png"))
        if files:
            grid_rows.append((info, [Image.open(f).convert("RGB") for f in files], [f.stem for f in files]))
    if not grid_rows:
        raise TrainingError(
            f"no validation images under {out / 'validation'}: set finetune.num_validation_images"
        )
    size = grid_rows[0][1][0].size[0]
    cols = max(len(r[1]) for r in grid_rows)
    label_w, head_h = 110, 14
    grid = Image.new("RGB", (label_w + cols * size, head_h + len(grid_rows) * size), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(grid_rows[-1][2]):
        draw.text((label_w + c * size + 2, 1), name, fill=(0, 0, 0))
    for r, (info, images, _) in enumerate(grid_rows):
        y = head_h + r * size
        draw.text((4, y + size // 2 - 6), f"epoch {info['epoch']}\nstep {info['step']}", fill=(0, 0, 0))
        for c, im in enumerate(images):
            grid.paste(im.resize((size, size)), (label_w + c * size, y))
    with io.atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def _tensorboard(s: dict, log_dir: Path, is_main: bool):
    """A SummaryWriter when ``tensorboard`` is installed and wanted; None otherwise (never required)."""
    if not (s["tensorboard"] and is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard not installed: no TensorBoard logs (loss.csv has the same numbers)")
        return None
    return SummaryWriter(log_dir=str(log_dir))


# ---------------------------------------------------------------------------------------------
# the loop


def train_lora(
    pretrained: str,
    images: pd.DataFrame,
    output_dir,
    cfg: dict,
    checkpoint_dir,
    threads: int = 1,
    device: str = "auto",
    on_step=None,
) -> dict:
    """Train DreamBooth LoRA(s) on ``images`` (columns path,label); return the training summary.

    Writes ``pytorch_lora_weights.safetensors`` (with export kohya also ``<run>_kohya.safetensors``,
    ``<run>`` being the folder's name), ``loss.csv``, ``loss.png``, ``train_summary.json``, ``validation/``
    and ``validation_grid.png`` into ``output_dir``. With ``lora_mode: per_class`` each class gets its own
    LoRA in ``output_dir/<label>/`` (kohya: ``<run>_<label>_kohya.safetensors``) and the top-level files
    gather them. Resumes from the newest complete checkpoint in ``checkpoint_dir`` and deletes that
    folder at the end.
    ``on_step(step, loss)`` is called after every optimizer step (``loss`` is a float on logging steps).
    """
    s = settings(cfg)
    if len(images) == 0:
        raise TrainingError("no training images: the fine-tune split is empty, check the split stage")
    out, ckpt = Path(output_dir), Path(checkpoint_dir)
    if s["lora_mode"] == "shared":
        return _train_one(pretrained, images, out, s, ckpt, threads, device, on_step, out.name)
    runs = {}
    for label in sorted(images["label"].astype(str).unique()):
        part = images[images["label"].astype(str) == label].reset_index(drop=True)
        runs[label] = _train_one(
            pretrained, part, out / label, s, ckpt / label, threads, device, on_step, f"{out.name}_{label}"
        )
    hist = pd.concat([pd.read_csv(out / lb / "loss.csv").assign(lora=lb) for lb in runs], ignore_index=True)
    io.write_csv(out / "loss.csv", hist)
    plot_loss(hist, out / "loss.png")
    grids = [out / lb / "validation_grid.png" for lb in runs]
    _stack_images(grids, out / "validation_grid.png")
    summary = {
        "lora_mode": "per_class",
        "loras": {lb: str(out / lb / LORA_WEIGHT_NAME) for lb in runs},
        "runs": runs,
        "wall_s": round(sum(r["wall_s"] for r in runs.values()), 3),
        "peak_mem_gb": max(r["peak_mem_gb"] for r in runs.values()),
    }
    io.write_json(out / "train_summary.json", summary)
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary


def _stack_images(paths, dest: Path) -> None:
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)), (255, 255, 255))
    y = 0
    for im in ims:
        canvas.paste(im, (0, y))
        y += im.height
    with io.atomic_path(dest) as tmp:
        canvas.save(tmp, format="PNG")


def _train_one(
    pretrained: str,
    images: pd.DataFrame,
    out: Path,
    s: dict,
    ckpt_dir: Path,
    threads: int,
    device: str,
    on_step,
    name: str,
) -> dict:
    """One LoRA into ``out``; ``name`` names its kohya export (the web UI's ``<lora:name:w>``)."""
    import torch
    import torch.nn.functional as F
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import LoraConfig
    from tqdm.auto import tqdm
    from transformers import CLIPTextModel, CLIPTokenizer

    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    device = resolve_device(device)
    mp = effective_precision(s["mixed_precision"], device)
    accum = int(s["gradient_accumulation_steps"])
    accelerator = _new_accelerator(mp, accum, device)
    dev = accelerator.device
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    is_main = accelerator.is_main_process
    set_seed(int(s["seed"]))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    data = _Data(images, s)
    # each process takes every n_proc-th micro-batch of one stream: the union over processes is the
    # single-GPU stream, so the data seen per optimizer step does not depend on the GPU count
    steps_per_epoch = math.ceil(data.nb / (accum * n_proc))
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
    attention = _apply_speed_options(unet, s, device)
    unet.add_adapter(
        LoraConfig(
            r=int(s["rank"]),
            lora_alpha=float(s["alpha"]),
            init_lora_weights="gaussian",
            target_modules=list(s["target_modules"]),
        )
    )
    if weight_dtype != torch.float32:
        # fp32 master weights: the fp16 scaler refuses fp16 grads, and bf16 rounds away small Adam updates
        cast_training_params(unet, dtype=torch.float32)
    params = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    n_trainable = sum(p.numel() for p in params.values())

    # -- the frozen text encoder gives each class prompt one embedding, computed once (and "" for CFG)
    embeds = {}
    with torch.no_grad():

        def encode(text):
            ids = tokenizer(
                text,
                padding="max_length",
                truncation=True,
                max_length=tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids
            return text_encoder(ids.to(dev))[0]

        for label in sorted(set(data.labels)):
            embeds[label] = encode(s["instance_prompt"].format(label=label))
        uncond = encode("")
    text_encoder = None  # frees it (the closure above holds the name, not the model)
    cache = None
    if s["cache_latents"]:
        # encoded a training batch at a time: a larger VAE batch would set the job's peak memory
        cache = _LatentCache(vae, data, dev, weight_dtype, batch=data.bs)
        log.info(
            "cached VAE latents of %d images%s (%.1f MB)",
            data.n,
            " and their mirrors" if data.random_flip else "",
            cache.nbytes / 1e6,
        )
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # DDP's start-up broadcast gives the parameters new storage: re-home them after it
    unet = accelerator.prepare(unet)
    # 256 matrices (SD1.5, rank 4) as views of two buffers: optimizer, clip, unscale and zeroing
    # then cost a call per buffer, not per matrix
    flat = _flat_params(s, list(params.values()))
    optimizer = _optimizer(s, flat, device)
    lr_scheduler = _lr_scheduler(s, optimizer, total_steps, n_proc)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    # both only apply on CUDA (_apply_speed_options); the log and the summary say what was applied
    channels_last = bool(s["channels_last"]) and device.startswith("cuda")
    compiled = bool(s["compile"]) and _compiles_on(device)
    if compiled and (why := compile_unavailable(dev)) is not None:
        log.warning(
            "torch.compile cannot build kernels here (%s): training eager, about 2.4x slower per step; "
            "finetune.compile: false skips this check",
            why,
        )
        compiled = False
    compile_mode = s["compile_mode"]  # what the job compiles with: a failed CUDA-graph recording drops them

    def compile_unet(mode):
        # in place (Module.compile), so parameter names and the saved LoRA keys stay as they are;
        # the first step pays the compilation (minutes for SD1.5 forward + backward, once per job)
        accelerator.unwrap_model(unet).compile(
            mode=None if mode == "default" else mode, backend=_compile_backend()
        )

    if compiled:
        _upsampling_without_scatter(accelerator.unwrap_model(unet))
        compile_unet(compile_mode)

    # -- resume
    fingerprint = _fingerprint(pretrained, images, s, n_proc)
    start, history, resumed_from = 0, [], None
    resume = _find_resume(ckpt_dir, fingerprint)
    if resume is not None:
        start, history = _load_checkpoint(resume, params, optimizer, lr_scheduler, accelerator.scaler)
        resumed_from = start
        log.info("resuming from %s (step %d of %d)", resume, start, total_steps)
    elif is_main:
        shutil.rmtree(out / "validation", ignore_errors=True)  # images of an earlier, different run
    log.info(
        "training LoRA r=%s alpha=%s on %d images (%d labels), %d steps, batch %d x accum %d x %d "
        "process(es), %s, mixed precision %s, attention %s, gradient checkpointing %s, cached latents %s, "
        "channels-last %s, compiled %s (mode %s), snr_gamma %s, noise_offset %s, %d trainable params",
        s["rank"],
        s["alpha"],
        data.n,
        len(embeds),
        total_steps,
        data.bs,
        accum,
        n_proc,
        device,
        mp,
        attention,
        s["gradient_checkpointing"],
        cache is not None,
        channels_last,
        compiled,
        s["compile_mode"],
        s["snr_gamma"],
        s["noise_offset"],
        n_trainable,
    )

    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"scheduler prediction_type '{prediction_type}' is not supported")
    scaling = vae.config.scaling_factor
    n_train_t = noise_scheduler.config.num_train_timesteps
    snr_gamma = None if s["snr_gamma"] is None else float(s["snr_gamma"])
    noise_offset = float(s["noise_offset"])
    logging_steps = int(s["logging_steps"])
    val_every = int(s["validation_epochs"])
    writer = _tensorboard(s, out / "tensorboard", is_main)
    loader = _Prefetcher(data) if cache is None else None
    bar = tqdm(
        total=total_steps,
        initial=start,
        desc="finetune",
        disable=None if is_main else True,
        dynamic_ncols=True,
    )
    pending: list = []  # (step, epoch, lr, loss tensor) not yet synced to the host
    peaks = {"train": [0.0, 0.0], "validation": [0.0, 0.0]}  # GB (allocated, reserved), CUDA only

    def flush():
        """Sync the pending losses to the host (one transfer), check them, append them to the history."""
        if not pending:
            return
        values = accelerator.reduce(torch.stack([p[3] for p in pending]), reduction="mean").float().cpu()
        for (step_, epoch_, lr_, _), v in zip(pending, values.tolist(), strict=True):
            if not math.isfinite(v):
                hint = " or use mixed_precision 'bf16'/'no'" if mp == "fp16" else ""
                raise TrainingError(
                    f"loss became {v} at step {step_} (epoch {epoch_}): lower finetune.lora_learning_rate "
                    f"(now {s['lora_learning_rate']}){hint}; no LoRA was written"
                )
            history.append([step_, epoch_, v, lr_])
            if writer is not None:
                writer.add_scalar("loss", v, step_)
                writer.add_scalar("lr", lr_, step_)
        bar.set_postfix(loss=f"{history[-1][2]:.4f}", refresh=False)
        pending.clear()

    def note_peak(kind):
        """Adds the GPU memory peaks since the last call to training's or validation's, then restarts
        them: each figure is then of its own stretches only."""
        if device.startswith("cuda"):
            # reserved is the figure to read under CUDA graphs: their memory pool stays reserved
            # between replays, which max_memory_allocated misses
            now = (torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9)
            peaks[kind] = [max(old, new) for old, new in zip(peaks[kind], now, strict=True)]
            torch.cuda.reset_peak_memory_stats()

    def validate(step_, epoch_):
        nonlocal val_s
        t0 = time.perf_counter()
        note_peak("train")
        if compiled and _records_cuda_graphs(compile_mode):
            # the CUDA graphs' memory pool stays reserved and validation's eager allocations cannot use
            # it: freed here, so validation needs no memory beyond training's
            drop_compiled_step(compile_mode)
        if is_main:
            # a compiled UNet would compile a second (eval, no-grad) graph for a few images: run eager
            with _eager():
                d = _validate(
                    accelerator.unwrap_model(unet),
                    vae,
                    noise_scheduler.config,
                    embeds,
                    uncond,
                    s,
                    out,
                    step_,
                    epoch_,
                    accelerator.autocast,
                )
            if writer is not None:
                for f in sorted(d.glob("*.png")):
                    from PIL import Image

                    writer.add_image(
                        f"validation/{f.stem}",
                        np.asarray(Image.open(f).convert("RGB")),
                        step_,
                        dataformats="HWC",
                    )
        accelerator.wait_for_everyone()
        note_peak("validation")
        val_s += time.perf_counter() - t0

    # one micro-batch's loss; the step whose compiled gradient is checked runs it eager first
    def forward_loss(noisy, t, cond, target):
        pred = unet(noisy, t, cond, return_dict=False)[0]
        if snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        # min-SNR weighting (Hang et al. 2023), as diffusers' --snr_gamma
        snr = compute_snr(noise_scheduler, t)
        w = torch.clamp(snr, max=snr_gamma)
        w = w / (snr + 1) if prediction_type == "v_prediction" else w / snr
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        return (loss.mean(dim=list(range(1, loss.ndim))) * w).mean()

    flat.verify()
    val_s = 0.0
    t_loop = time.perf_counter()
    unet.train()
    # a miscompiled backward trains silently wrong: the first step's gradients are compared with eager
    # ones, and with CUDA graphs those of their first replay too (a graph is recorded on the second
    # call and replayed from the third: its inputs and outputs live in other memory than the first's)
    checks_left = 0 if not compiled or s["compile_check_tol"] is None else _compile_checks(compile_mode)
    next_check = start
    compile_check: list = []
    compile_error = None
    # the compiled calls in which torch.compile builds its graphs (and, with CUDA graphs, records
    # and first replays them): a failure there trains on, without CUDA graphs where the compile
    # itself went through, else eager, instead of ending the job
    trial_calls = _compile_trial_calls(compile_mode) if compiled else 0
    skips_before = _cudagraph_skips()
    stance = contextlib.ExitStack()  # holds the eager fallback, if the check fails, until the loop ends

    def train_eager_from_now():
        nonlocal compiled, checks_left, trial_calls
        stance.enter_context(_eager())
        compiled, checks_left, trial_calls = False, 0, 0

    def drop_compiled_step(mode):
        """Drops the compiled step and its CUDA graphs (dynamo's reset frees their memory pool): the next
        call compiles ``mode`` again, from Inductor's caches (20 s against 3 min cold for SD1.5's step
        on CPU), and records anew, with the compile's trial calls again."""
        nonlocal compile_mode, trial_calls
        torch._dynamo.reset()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        if mode != compile_mode:
            compile_mode = mode
            compile_unet(mode)
        trial_calls = _compile_trial_calls(mode)

    try:
        for step in range(start, total_steps):
            step_loss = None
            for a in range(accum):
                if compiled:
                    # with CUDA graphs (compile_mode reduce-overhead) each micro-batch replays one graph
                    # over the last one's outputs; nothing of those is read again (the loss is computed
                    # outside the graph, the grads are added into the flat buffers)
                    torch.compiler.cudagraph_mark_step_begin()
                m = (step * accum + a) * n_proc + rank
                # randomness depends on (seed, micro-batch index) only: a resumed run draws the same noise
                g = torch.Generator().manual_seed(_seed_int(s["seed"], "noise", m))
                with accelerator.accumulate(unet):
                    idx, flips, crops = data.indices(m)
                    labels = [data.labels[i] for i in idx]
                    if cache is not None:
                        mean, std = cache.get(idx, flips)
                    else:
                        pixels, _ = loader.get(m)
                        with torch.no_grad():
                            dist = vae.encode(pixels.to(dev, dtype=weight_dtype)).latent_dist
                            mean, std = dist.mean, dist.std
                    eps = _to_device(torch.randn(mean.shape, generator=g), dev, mean.dtype)
                    latents = (mean + std * eps) * scaling
                    noise = _to_device(torch.randn(latents.shape, generator=g), dev, latents.dtype)
                    t = _to_device(torch.randint(0, n_train_t, (latents.shape[0],), generator=g), dev)
                    if noise_offset:
                        # https://www.crosslabs.org/blog/diffusion-with-offset-noise
                        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=g)
                        noise = noise + noise_offset * _to_device(offset, dev, latents.dtype)
                    noisy = noise_scheduler.add_noise(latents, noise, t)
                    cond = torch.cat([embeds[lb] for lb in labels])
                    if prediction_type == "epsilon":
                        target = noise
                    else:
                        target = noise_scheduler.get_velocity(latents, noise, t)

                    check_now = checks_left > 0 and step >= next_check and a == 0
                    if check_now:
                        # the first micro-batch of a step (its gradient buffers are zero) once eager, as
                        # the reference of the compiled gradients it then gets
                        with _eager():
                            accelerator.backward(forward_loss(noisy, t, cond, target))
                        eager_grads = [f.grad.clone() for f in flat.flat]
                        flat.zero_grad()
                    before = [f.grad.clone() for f in flat.flat] if trial_calls > 0 else None
                    while True:
                        loss, failed = None, None
                        try:
                            loss = forward_loss(noisy, t, cond, target)
                            accelerator.backward(loss)
                        except Exception as e:
                            if before is None:
                                raise
                            # dynamo's wrapper names the backend; the cause names what failed
                            failed = one_line(getattr(e, "inner_exception", None) or e, limit=300)
                        if failed is None:
                            break
                        # out of the except block, so the failed call's traceback no longer holds its
                        # activations: the micro-batch again, from the gradients it started from
                        compile_error, loss = failed, None
                        for f, b in zip(flat.flat, before, strict=True):
                            f.grad.copy_(b)
                        # a compiled call went through (only CUDA-graph modes try more than one), so
                        # the kernels built and recording or replaying the graphs failed
                        if trial_calls < _compile_trial_calls(compile_mode):
                            log.warning(
                                "torch.compile's CUDA graphs failed at step %d (%s): training compiled "
                                "without them (compile_mode %s)",
                                step + 1,
                                compile_error,
                                _without_cuda_graphs(compile_mode),
                            )
                            # the same kernels launched one by one still beat eager by 2.4x on an H100
                            drop_compiled_step(_without_cuda_graphs(compile_mode))
                        else:
                            log.warning(
                                "torch.compile failed at step %d (%s): training eager, about 2.4x slower; "
                                "finetune.compile: false skips compiling",
                                step + 1,
                                compile_error,
                            )
                            train_eager_from_now()
                            check_now, before = False, None
                    trial_calls = max(0, trial_calls - 1)
                    del before
                    if check_now:
                        err = _grad_rel_error(eager_grads, [f.grad for f in flat.flat])
                        if not math.isnan(err):  # fp16: the scaler's first scales may overflow; next step
                            checks_left -= 1
                            next_check = step + 2  # this step's call is the warm-up; +2 is the replay
                            compile_check.append({"step": step + 1, "grad_rel_error": err})
                            if err > float(s["compile_check_tol"]):
                                log.warning(
                                    "torch.compile's gradients differ from eager ones (relative error %.3g > "
                                    "finetune.compile_check_tol %s): training eager, about 2.4x slower",
                                    err,
                                    s["compile_check_tol"],
                                )
                                for f, e in zip(flat.flat, eager_grads, strict=True):
                                    f.grad.copy_(e)
                                train_eager_from_now()
                            else:
                                log.info("compiled gradients match eager ones (relative error %.3g)", err)
                        del eager_grads
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(flat.flat, float(s["max_grad_norm"]))
                    optimizer.step()
                    lr_scheduler.step()
                    if accelerator.sync_gradients:
                        flat.zero_grad()  # in place: autograd accumulates into the flat buffers
                d_loss = loss.detach() / accum
                step_loss = d_loss if step_loss is None else step_loss + d_loss
            global_step = step + 1
            last_m = (global_step * accum) * n_proc - 1
            epoch = data.epoch_of(step * accum * n_proc)
            pending.append((global_step, epoch, lr_scheduler.get_last_lr()[0], step_loss))
            bar.update(1)
            ckpt_now = global_step % int(s["checkpointing_steps"]) == 0 and global_step < total_steps
            epoch_done = data.epoch_of(last_m + 1) > data.epoch_of(last_m)
            val_now = (
                val_every > 0
                and epoch_done
                and (data.epoch_of(last_m) + 1) % val_every == 0
                and global_step < total_steps
            )
            if (
                global_step % logging_steps == 0
                or ckpt_now
                or val_now
                or global_step == total_steps
                or not device.startswith("cuda")
            ):
                flush()  # on CPU a sync costs nothing; on CUDA only every logging_steps
            if ckpt_now:
                if is_main:
                    d = _save_checkpoint(
                        ckpt_dir,
                        global_step,
                        params,
                        optimizer,
                        lr_scheduler,
                        accelerator.scaler,
                        history,
                        fingerprint,
                        keep=int(s["checkpoints_total_limit"]),
                    )
                    log.info("saved checkpoint %s", d)
                accelerator.wait_for_everyone()
            if val_now:
                validate(global_step, data.epoch_of(last_m) + 1)
            if on_step is not None:
                on_step(global_step, history[-1][2] if history and history[-1][0] == global_step else None)
    finally:
        stance.close()
        bar.close()
        if loader is not None:
            loader.close()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    note_peak("train")
    cuda_graphs = _cuda_graphs_ran(compiled, s["compile_mode"], skips_before)
    if compile_mode != s["compile_mode"]:
        cuda_graphs = None if cuda_graphs is None else False  # recording failed: compile_error says why
    elif cuda_graphs is False and device.startswith("cuda"):
        log.warning(
            "compile_mode %s: torch.compile replayed no CUDA graphs for %d graph(s) (the "
            "torch._inductor.cudagraph warnings above say why): the step ran as in mode default",
            compile_mode,
            _cudagraph_skips() - skips_before,
        )
    loop_s = time.perf_counter() - t_loop - val_s  # it/s of training, not of validation

    # -- outputs (main process only; every process passes the same barriers)
    flat.verify()
    flat.release()
    unet = accelerator.unwrap_model(unet)
    epochs = data.epoch_of(total_steps * accum * n_proc - 1) + 1
    if int(s["num_validation_images"]) > 0:
        validate(total_steps, epochs)
    if not is_main:
        accelerator.wait_for_everyone()
        return {}
    out.mkdir(parents=True, exist_ok=True)
    if int(s["num_validation_images"]) > 0:
        validation_grid(out, out / "validation_grid.png")
    lora_path = _save_lora(unet, out, f"{name}{KOHYA_SUFFIX}" if "kohya" in s["export"] else None)
    hist = pd.DataFrame(history, columns=["step", "epoch", "loss", "lr"])
    io.write_csv(out / "loss.csv", hist)
    plot_loss(hist, out / "loss.png")
    ran = total_steps - start
    summary = {
        "steps": total_steps,
        "epochs": epochs,
        "steps_this_run": ran,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "it_s": round(ran / loop_s, 3) if loop_s > 0 else None,
        **_peak_figures(peaks, device),
        "device": device,
        "num_processes": n_proc,
        "mixed_precision": mp,
        "mixed_precision_requested": s["mixed_precision"],
        "attention": s["attention"],
        "gradient_checkpointing": bool(s["gradient_checkpointing"]),
        "cache_latents": cache is not None,
        "channels_last": channels_last,
        "compile": compiled,
        "compile_mode": compile_mode if compiled else None,
        "compile_check": compile_check or None,
        "compile_error": compile_error,
        "cuda_graphs": cuda_graphs,
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
    if writer is not None:
        writer.close()
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    reserved = ""
    if summary["peak_mem_reserved_gb"] is not None:
        reserved = (
            f" (reserved {summary['peak_mem_reserved_gb']:.2f} / "
            f"{summary['peak_mem_reserved_with_validation_gb']:.2f} GB)"
        )
    log.info(
        "LoRA written to %s (%d steps, %.2f it/s, peak memory %.2f GB training / %.2f GB with validation%s, "
        "%.0f s)",
        lora_path,
        total_steps,
        summary["it_s"] or 0.0,
        summary["peak_mem_gb"],
        summary["peak_mem_with_validation_gb"],
        reserved,
        summary["wall_s"],
    )
    return summary


# ---------------------------------------------------------------------------------------------
# entry points: in-process on one GPU/CPU, `accelerate launch` on several


def launch_command(
    num_gpus: int,
    pretrained: str,
    images_csv,
    output_dir,
    cfg: dict,
    checkpoint_dir,
    threads: int = 1,
    python: str | None = None,
) -> list[str]:
    """The ``accelerate launch`` command line that runs this module's ``main`` on ``num_gpus`` GPUs."""
    import sys

    if int(num_gpus) < 2:
        raise ConfigError(f"accelerate launch is for 2 or more GPUs, got {num_gpus}")
    return [
        python or sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(int(num_gpus)),
        "--num_machines",
        "1",
        # a port of its own: two fine-tunes on one node (two runs, two workflows) would otherwise both
        # rendezvous on torchrun's default 29500, and the second would fail or join the first
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        str(settings(cfg)["mixed_precision"]),
        "--dynamo_backend",
        "no",
        "-m",
        "dermsynth.diffusion.train",
        "--pretrained_model_name_or_path",
        str(pretrained),
        "--instance_data_csv",
        str(images_csv),
        "--output_dir",
        str(output_dir),
        "--checkpoint_dir",
        str(checkpoint_dir),
        "--config_json",
        json.dumps(cfg, sort_keys=True, default=str),
        "--threads",
        str(int(threads)),
    ]


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_finetune(
    pretrained: str, images_csv, output_dir, cfg: dict, checkpoint_dir, threads: int = 1, gpus: int = 1
) -> dict | None:
    """The finetune stage: in this process on one GPU (or CPU), through ``accelerate launch`` on several."""
    import subprocess

    if int(gpus or 0) > 1:
        cmd = launch_command(gpus, pretrained, images_csv, output_dir, cfg, checkpoint_dir, threads)
        log.info("launching on %d GPUs: %s", gpus, " ".join(cmd[:8]) + " ...")
        rc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
        if rc != 0:
            raise TrainingError(
                f"accelerate launch on {gpus} GPUs exited with status {rc}: see the log above"
            )
        return json.loads((Path(output_dir) / "train_summary.json").read_text())
    return train_lora(pretrained, io.read_csv(images_csv), output_dir, cfg, checkpoint_dir, threads=threads)


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m dermsynth.diffusion.train", description=__doc__.splitlines()[0]
    )
    p.add_argument("--pretrained_model_name_or_path", required=True)
    p.add_argument("--instance_data_csv", required=True, help="manifest CSV with columns path,label")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--config_json", default="{}", help="the finetune config section as JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from .. import logs

    args = parse_args(argv)
    # under accelerate launch every process runs this; only the main one reports progress
    rank = int(os.environ.get("RANK", "0"))
    logs.setup(None, level=logging.INFO if rank == 0 else logging.WARNING)
    train_lora(
        args.pretrained_model_name_or_path,
        io.read_csv(args.instance_data_csv),
        args.output_dir,
        json.loads(args.config_json),
        args.checkpoint_dir,
        threads=args.threads,
        device=args.device,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
