"""What the fine-tune trains and with what: the frozen SD parts, the LoRA, its optimizer and schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...errors import ConfigError
from ...hub import load_pretrained
from ..adamw8bit import adamw8bit_class
from ..flat_params import BNB_BLOCK, BNB_MIN_8BIT_SIZE, FlatParams

log = logging.getLogger("dermsynth")


@dataclass
class Models:
    """The LoRA-adapted UNet and the frozen parts a step needs (the text encoder is done after encoding)."""

    unet: object
    vae: object
    noise_scheduler: object
    embeds: dict  # class label -> its prompt's text embedding
    uncond: object  # the empty prompt's, for validation's classifier-free guidance
    params: dict  # the LoRA's trainable parameters by name
    attention: str  # the attention kernel, in words


def new_accelerator(mixed_precision: str, accum: int, device: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # the state is a process-wide singleton: a second run in one process (tests, notebooks) with
    # another precision or device would otherwise be refused
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=accum, cpu=not device.startswith("cuda")
    )


def weight_dtype(mixed_precision: str, device: str):
    """The frozen weights' dtype; on CPU fp32: low-precision CPU kernels are slower (autocast covers bf16)."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def load_models(pretrained: str, s: dict, labels: list, dev, device: str, dtype) -> Models:
    """Frozen VAE and text encoder, LoRA on the UNet's attention projections, one embedding per class."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = dict(use_safetensors=True, dtype=dtype)
    tokenizer = load_pretrained(CLIPTokenizer, pretrained, subfolder="tokenizer", model_max_length=77)
    text_encoder = load_pretrained(CLIPTextModel, pretrained, subfolder="text_encoder", **kw)
    vae = load_pretrained(AutoencoderKL, pretrained, subfolder="vae", **kw)
    unet = load_pretrained(UNet2DConditionModel, pretrained, subfolder="unet", **kw)
    noise_scheduler = load_pretrained(DDPMScheduler, pretrained, subfolder="scheduler")
    for m in (vae, text_encoder, unet):
        m.requires_grad_(False)
        m.to(dev)
    attention = apply_speed_options(unet, s, device)
    unet.add_adapter(
        LoraConfig(
            r=int(s["rank"]),
            lora_alpha=float(s["alpha"]),
            init_lora_weights="gaussian",
            target_modules=list(s["target_modules"]),
        )
    )
    if dtype != torch.float32:
        # fp32 master weights: the fp16 scaler refuses fp16 grads, and bf16 rounds away small Adam updates
        cast_training_params(unet, dtype=torch.float32)
    if s["fuse_qkv_lora"]:
        from .fused_lora import fuse_qkv_lora

        if s["attention"] != "sdpa":
            raise ConfigError(
                "finetune.fuse_qkv_lora needs finetune.attention: sdpa (its processor is SDPA's)"
            )
        attention += f", q/k/v LoRA fused in {fuse_qkv_lora(unet)} attention modules"
    params = {n: p for n, p in unet.named_parameters() if p.requires_grad}

    # the frozen text encoder gives each class prompt one embedding, computed once (and "" for CFG)
    def encode(text):
        ids = tokenizer(
            text,
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return text_encoder(ids.to(dev))[0]

    with torch.no_grad():
        embeds = {label: encode(s["instance_prompt"].format(label=label)) for label in labels}
        uncond = encode("")
    return Models(unet, vae, noise_scheduler, embeds, uncond, params, attention)


def apply_speed_options(unet, s: dict, device: str) -> str:
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


def flat_params(s: dict, params: list) -> FlatParams:
    """The LoRA re-homed into flat buffers, laid out so 8-bit AdamW updates exactly as per tensor."""
    if s["optimizer"] == "adamw8bit":
        return FlatParams(params, split_at=BNB_MIN_8BIT_SIZE, align=BNB_BLOCK)
    return FlatParams(params)


def optimizer(s: dict, flat: FlatParams, device: str = "cpu"):
    """The ``optimizer`` of the settings over the flat buffers (torch AdamW where bitsandbytes is missing)."""
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


def lr_scheduler(s: dict, optimizer, total_steps: int, num_processes: int):
    from diffusers.optimization import get_polynomial_decay_schedule_with_warmup, get_scheduler

    warmup = int(s["lr_warmup_steps"]) * num_processes
    total = total_steps * num_processes
    if s["lr_scheduler"] == "polynomial":
        # the one schedule with a floor: lr_min is its end value
        return get_polynomial_decay_schedule_with_warmup(optimizer, warmup, total, lr_end=float(s["lr_min"]))
    return get_scheduler(s["lr_scheduler"], optimizer, num_warmup_steps=warmup, num_training_steps=total)
