"""The fine-tune's per-step bookkeeping over SD1.5's LoRA: flat buffers against one tensor per matrix.

Times, per optimizer step, what happens to the LoRA outside the UNet: the gradients arriving (autograd
steals a fresh tensor per matrix in diffusers' script; it adds in place into the flat gradient
buffer in ours), the gradient clip, the 8-bit AdamW step and zeroing. The peer is what diffusers'
train_dreambooth_lora.py runs: bitsandbytes' AdamW8bit over the 256 matrices (SD1.5, rank 4), with
``clip_grad_norm_`` and ``zero_grad(set_to_none=True)``. Ours is dermsynth's: the same matrices as
views of two flat buffers (dermsynth.diffusion.flat_params) and AdamW8bit without bitsandbytes'
per-tensor synchronize. Both start from the same weights and get the same gradients, so the
benchmark also checks that they end at bit-identical weights.

    python benchmarks/lora_optimizer.py --quick      # CPU, < 1 min
    python benchmarks/lora_optimizer.py --device cuda

The last line printed is one JSON object: ours_ms_per_step, peer_ms_per_step, speed_ratio,
bit_identical, n_tensors, n_params, rank, device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))


def sd15_lora_shapes(rank: int, target_modules: list[str]) -> list[tuple[int, ...]]:
    """Shapes of the LoRA matrices peft adds to SD1.5's UNet (built on the meta device: no memory)."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from dermsynth.tiny import sd_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_unet_config("sd15", 512))
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=target_modules))
    return [tuple(p.shape) for p in unet.parameters() if p.requires_grad]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(device: str, rank: int, steps: int, warmup: int) -> dict:
    import bitsandbytes as bnb
    import torch

    from dermsynth.diffusion.finetune import model, settings

    targets = list(settings.resolve({})["target_modules"])
    shapes = sd15_lora_shapes(rank, targets)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).mul_(0.01) for s in shapes]
    # a total norm of about 0.45: the clip (max 1) scales by 1, so the shared tensors stay as they are
    grads = [[torch.randn(s, generator=gen).mul_(5e-4).to(device) for s in shapes] for _ in range(4)]
    kw = dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    s = settings.resolve(
        {"optimizer": "adamw8bit", "lora_learning_rate": kw["lr"], "adam_weight_decay": kw["weight_decay"]}
    )

    peer_params = [torch.nn.Parameter(t.clone().to(device)) for t in init]
    peer_opt = bnb.optim.AdamW8bit(peer_params, **kw)
    ours_params = [torch.nn.Parameter(t.clone().to(device)) for t in init]
    flat = model.flat_params(s, ours_params)
    ours_opt = model.optimizer(s, flat, device)

    def peer_step(i):
        for p, g in zip(peer_params, grads[i % len(grads)], strict=True):
            p.grad = g  # autograd hands over the tensor its matmul made, one per matrix
        torch.nn.utils.clip_grad_norm_(peer_params, 1.0)
        peer_opt.step()
        peer_opt.zero_grad(set_to_none=True)

    def ours_step(i):
        for p, g in zip(ours_params, grads[i % len(grads)], strict=True):
            p.grad.add_(g)  # autograd adds into the flat gradient buffer's view
        torch.nn.utils.clip_grad_norm_(flat.flat, 1.0)
        ours_opt.step()
        flat.zero_grad()

    # same weights, same gradients: the same weights after every step, bit for bit
    for i in range(len(grads)):
        peer_step(i)
        ours_step(i)
    identical = all(torch.equal(p, q) for p, q in zip(peer_params, ours_params, strict=True))

    def timed(fn) -> float:
        for i in range(warmup):
            fn(i)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            fn(i)
        _sync(device)
        return (time.perf_counter() - t0) / steps * 1e3

    # alternated, so drift on a noisy machine hits both
    peer_ms, ours_ms = [], []
    for _ in range(3):
        peer_ms.append(timed(peer_step))
        ours_ms.append(timed(ours_step))
    peer, ours = sorted(peer_ms)[1], sorted(ours_ms)[1]
    return {
        "ours_ms_per_step": round(ours, 3),
        "peer_ms_per_step": round(peer, 3),
        "speed_ratio": round(peer / ours, 3),
        "bit_identical": identical,
        "n_tensors": len(shapes),
        "n_params": sum(int(torch.Size(s).numel()) for s in shapes),
        "n_flat_buffers": len(flat.flat),
        "rank": rank,
        "target_modules": targets,
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU, fewer steps (< 1 min)")
    p.add_argument("--device", default="auto")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    steps = a.steps or (20 if a.quick else 200)
    print(json.dumps(run(a.device, a.rank, steps, a.warmup)))


if __name__ == "__main__":
    main()
