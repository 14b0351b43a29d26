"""Resumable checkpoints (LoRA tensors, optimizer, scheduler, scaler and RNG states) and the final LoRA files.

A checkpoint holds megabytes, not the whole UNet; it is written atomically, the newest
``checkpoints_total_limit`` are kept, and its fingerprint of data and settings decides whether a job
may resume from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ... import io
from ...errors import TrainingError
from ..pipeline import LORA_WEIGHT_NAME
from .settings import RESUME_NEUTRAL

log = logging.getLogger("dermsynth")


def fingerprint(pretrained: str, images: pd.DataFrame, s: dict, num_processes: int = 1) -> str:
    """A hash of everything that decides the trained LoRA: a checkpoint resumes only a job of its own."""
    key = {k: v for k, v in s.items() if k not in RESUME_NEUTRAL}
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


def save_rng(d: Path) -> None:
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


def load_rng(d: Path) -> None:
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


def save_checkpoint(
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
    save_rng(tmp)
    # state.json last: its presence marks a complete checkpoint
    state = {"step": step, "fingerprint": fingerprint, "history": history}
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for d in ckpt_dir.glob("checkpoint-*"):
        suffix = d.name.split("-", 1)[1]
        if suffix.isdigit() and (d / "state.json").exists():
            found.append((int(suffix), d))
    return [d for _, d in sorted(found)]


def load_checkpoint(d: Path, params: dict, optimizer, lr_scheduler, scaler) -> tuple[int, list]:
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
    load_rng(d)
    return int(state["step"]), state["history"]


def find_resume(ckpt_dir: Path, fingerprint: str) -> Path | None:
    for d in reversed(complete_checkpoints(ckpt_dir)):
        if json.loads((d / "state.json").read_text()).get("fingerprint") == fingerprint:
            return d
        log.warning("ignoring checkpoint %s: it was made with other data or settings", d)
    return None


def save_lora(unet, output_dir: Path, kohya_name: str | None = None) -> Path:
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
        unet_lora_adapter_metadata=stable_metadata(unet.peft_config["default"].to_dict()),
    )
    final = output_dir / LORA_WEIGHT_NAME
    canonical_header(tmp / LORA_WEIGHT_NAME)
    os.replace(tmp / LORA_WEIGHT_NAME, final)
    shutil.rmtree(tmp, ignore_errors=True)
    if kohya_name:
        save_kohya(peft_sd, unet.peft_config["default"], output_dir / kohya_name)
    return final


def stable_metadata(meta: dict) -> dict:
    """The adapter config with its sets (peft keeps ``target_modules`` as one) as sorted lists.

    diffusers writes a set as ``list(set)``, whose order follows the process's string-hash seed, so
    the same LoRA got a different sha256 in every run and the manifests' ``lora_sha256`` could not
    trace an image to its LoRA.
    """
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in meta.items()}


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's ``__metadata__`` with its keys sorted, in place.

    safetensors writes the metadata map in Rust hash-map order, which changes from process to process:
    the same tensors and metadata gave a different file, and sha256, in every run. The header keeps its
    length (same JSON, other order), so the tensor data and offsets stay where they are.
    """
    import json
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw, object_pairs_hook=dict)
        if len(header.get("__metadata__") or {}) < 2:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:
            raise ValueError(f"{path}: the sorted safetensors header is longer than the original")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def save_kohya(peft_sd: dict, config, path: Path) -> None:
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
        canonical_header(tmp)
