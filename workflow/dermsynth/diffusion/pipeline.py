"""Loading a Stable Diffusion pipeline (base + optional DreamBooth LoRA) and choosing its sampler."""

from __future__ import annotations

import logging
from pathlib import Path

from ..device import resolve_device
from ..errors import ConfigError, ModelNotFoundError, one_line
from ..hub import load_pretrained

log = logging.getLogger("dermsynth")

#: LoRA adapter name; not "train", which clashes with ``nn.Module.train``.
ADAPTER = "derm"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: the kohya/web-UI export of a LoRA is ``<run>[_<label>]_kohya.safetensors`` beside it
KOHYA_SUFFIX = "_kohya.safetensors"

#: sampler name -> (diffusers scheduler class name, extra config, A1111 display name).
#: ``dpmpp_2s_a``: diffusers has no ancestral DPM++ 2S; its closest equivalent is the second-order
#: singlestep solver with SDE noise (``DPMSolverSinglestepScheduler``, ``sde-dpmsolver++``).
SAMPLERS: dict[str, tuple[str, dict, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M SDE Karras",
    ),
    "dpmpp_2s_a": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
        "DPM++ 2S a",
    ),
}


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ConfigError(f"sampler '{name}' is unknown: use one of {', '.join(SAMPLERS)}")
    return name


def display_name(name: str) -> str:
    """The sampler's name as the Stable Diffusion web UI writes it in PNG ``parameters``."""
    return SAMPLERS[check_sampler(name)][2]


def make_scheduler(name: str, base_config):
    """A fresh scheduler of kind ``name`` built from the model's own scheduler config (betas etc.)."""
    import diffusers

    cls_name, extra, _ = SAMPLERS[check_sampler(name)]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def set_sampler(pipe, name: str):
    """Swap the pipeline's scheduler for sampler ``name``; returns the pipeline.

    Always built from the model's *own* scheduler config (kept on the first swap): building from
    the current scheduler's config would carry one sampler's options into the next (e.g. DPM++
    Karras sigmas into Euler, which accepts ``use_karras_sigmas`` too).
    """
    if not hasattr(pipe, "_dermsynth_base_scheduler_config"):
        pipe._dermsynth_base_scheduler_config = pipe.scheduler.config
    pipe.scheduler = make_scheduler(name, pipe._dermsynth_base_scheduler_config)
    return pipe


def compile_unavailable(device) -> str | None:
    """None when torch.compile builds and runs a kernel on ``device``; else why not, in one line.

    Inductor's GPU kernels need Triton and, at their first launch, a C compiler with Python's
    headers: a cluster node without them fails at the first training or sampling step, after the
    models are loaded. A two-op probe finds that out in seconds, so the caller can run eager instead.
    """
    import torch

    def f(x):
        return torch.nn.functional.silu(x) * 2 + 1

    try:
        x = torch.linspace(-2, 2, 16, device=device)
        if not torch.allclose(torch.compile(f, fullgraph=True)(x), f(x), atol=1e-5):
            return "a compiled probe gave a wrong result"
    except Exception as e:  # any failure of the toolchain: the caller runs eager
        return one_line(e)
    return None


def default_dtype(device: str):
    import torch

    # fp16 only on CUDA: on CPU it is 5-11x slower than fp32 (ENVIRONMENT.md)
    return torch.float16 if device.startswith("cuda") else torch.float32


def lora_file(lora_path) -> Path:
    """The safetensors file of a LoRA given as that file or as its directory."""
    p = Path(lora_path)
    f = p / LORA_WEIGHT_NAME if p.is_dir() else p
    if not f.is_file():
        raise ModelNotFoundError(f"LoRA weights '{f}' not found: run the finetune stage or fix the LoRA path")
    return f


def load_pipeline(
    pretrained: str,
    lora_path: str | None = None,
    sampler: str | None = None,
    device: str = "auto",
    dtype=None,
    lora_scale: float = 1.0,
    checkpoint: str | None = None,
):
    """A StableDiffusionPipeline on ``device`` with an optional LoRA (adapter ``derm`` at ``lora_scale``).

    ``checkpoint``: a merged full checkpoint in one ``.safetensors`` file (web-UI / original SD layout),
    loaded with ``from_single_file``; ``pretrained`` (a local diffusers directory or a cached hub id)
    then supplies the component configs and tokenizer, so nothing is fetched from the hub.
    LoRA files in diffusers' (ours, the DreamBooth script's) and kohya/web-UI key formats all load
    through ``load_lora_weights``, which converts the latter.
    """
    from diffusers import StableDiffusionPipeline

    if sampler is not None:
        check_sampler(sampler)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    lora = lora_file(lora_path) if lora_path is not None else None  # fail before the slow model load
    if checkpoint:
        pipe = load_single_file(checkpoint, pretrained, dtype)
    else:
        pipe = load_pretrained(
            StableDiffusionPipeline,
            str(pretrained),
            dtype=dtype,
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    if lora is not None:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name=ADAPTER)
        pipe.set_adapters([ADAPTER], adapter_weights=[float(lora_scale)])
        log.info("loaded LoRA %s at scale %g", lora, lora_scale)
    if sampler is not None:
        set_sampler(pipe, sampler)
    pipe.set_progress_bar_config(disable=True)  # callers show one bar over images, not one per batch
    return pipe.to(device)


def load_single_file(checkpoint: str, config: str, dtype):
    """``StableDiffusionPipeline.from_single_file`` offline: configs and tokenizer come from ``config``."""
    from diffusers import StableDiffusionPipeline

    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        raise ConfigError(f"checkpoint '{checkpoint}': only .safetensors files are loaded (no pickles)")
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint '{checkpoint}' not found: fix generate.checkpoint")
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config),
            torch_dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"checkpoint '{checkpoint}' did not load with the configs of '{config}' "
            f"(models.sd must be that model's diffusers directory): {first}"
        ) from None
    log.info("loaded merged checkpoint %s (configs from %s)", checkpoint, config)
    return pipe


def speed_up(pipe, channels_last: bool = True, compile: bool = False, compile_mode: str = "default"):
    """GPU throughput settings that leave the images unchanged (within fp rounding); no-ops on CPU.

    SDPA attention is diffusers' default with torch 2 (flash / memory-efficient kernels on CUDA);
    channels-last suits the UNet's and VAE's convolutions on tensor cores; ``torch.compile`` fuses
    the UNet's kernels (a one-off compile per batch shape, worth it for thousands of images);
    ``compile_mode`` reduce-overhead also records each UNet call as a CUDA graph, replayed at every
    denoising step (the pipeline uses each output before the next call overwrites it).
    """
    import torch

    if pipe.device.type != "cuda" or getattr(pipe, "_dermsynth_fast", False):
        return pipe
    # every batch has the same shapes: let cuDNN pick its fastest convolution algorithms once
    torch.backends.cudnn.benchmark = True
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        why = compile_unavailable(pipe.device)
        if why is None:
            pipe.unet = torch.compile(pipe.unet, fullgraph=False, mode=compile_mode)
        else:
            log.warning("torch.compile cannot build kernels here (%s): sampling eager", why)
    pipe._dermsynth_fast = True
    return pipe
