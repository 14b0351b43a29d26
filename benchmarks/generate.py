"""Generation speed: our batched, seeded generation against a naive loop, same run, same model.

Ours is ``dermsynth.diffusion.sample.generate`` (the rule's code path): batches of ``--batch`` images,
fp16 on GPU, SDPA attention, channels-last UNet/VAE, optional ``torch.compile`` of the UNet, CFG and
VAE decode batched, per-image CPU generators, PNGs (with the web-UI ``parameters`` chunk) encoded on
writer threads, manifest written. The naive loop is what a user writes first: one default pipeline
call per image (fp32 on CPU, fp16 on GPU), then ``image.save``. Both use one loaded pipeline (the
naive loop runs first, before our speed settings touch it) and are timed after one warm-up call each
(model loading, compilation and cuDNN autotuning excluded on both sides); PNG writing is included
on both sides.

    python benchmarks/generate.py --quick               # CPU, tiny SD, 64 px, < 2 min
    python benchmarks/generate.py --device cuda         # SD1.5-size random weights, 512 px, 25 steps, CFG 7

The last line printed is one JSON object: ours_img_s, naive_img_s, speed_ratio, peak_mem_gb, device,
resolution, steps (and the settings, and minutes for the paper's 6,000 images at our speed).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

PROMPT = "a dermoscopic image of a {label} skin lesion"
PAPER_IMAGES = 6000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU, tiny SD at 64 px (< 2 min)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default=None, help="a diffusers SD directory (default: built, random weights)")
    p.add_argument("--resolution", type=int, default=None, help="default 512 (64 with --quick)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--batch", type=int, default=None, help="our batch size (default 32 on GPU, 8 on CPU)")
    p.add_argument(
        "--n-ours", type=int, default=None, help="timed images, ours (default: 4 batches GPU, 2 CPU)"
    )
    p.add_argument(
        "--n-naive", type=int, default=None, help="timed images, naive loop (default 6 GPU, 3 CPU)"
    )
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the UNet (auto: on for CUDA)",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="generate.compile_mode: reduce-overhead replays each denoising step as a CUDA graph",
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--writer-threads", type=int, default=4)
    return p.parse_args(argv)


def _peak_mem_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build_model(work: Path, quick: bool, resolution: int) -> Path:
    from dermsynth import tiny

    if quick:
        return tiny.build("sd", work / "tiny-sd", seed=0, image_size=resolution)
    # SD 1.5's UNet/VAE/CLIP-text architectures at full size, random weights: the real FLOPs and memory
    return tiny.build("sd15", work / "sd15", seed=0, image_size=resolution)


def naive(pipe, n: int, out: Path, a, device: str) -> float:
    """One default pipeline call per image, then image.save; returns images per second."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    prompt = PROMPT.format(label="benign")

    def one(i):
        g = torch.Generator(device).manual_seed(i)
        image = pipe(
            prompt,
            num_inference_steps=a.steps,
            guidance_scale=a.cfg,
            height=a.resolution,
            width=a.resolution,
            generator=g,
        ).images[0]
        image.save(out / f"naive_{i:04d}.png")

    one(10**6)  # warm-up: first kernels, allocator
    _sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        one(i)
    _sync(device)
    return n / (time.perf_counter() - t0)


def ours(pipe, pretrained: str, n: int, out: Path, a, device: str, compile_: bool) -> float:
    """The generate stage's function on one class x sampler block; returns images per second."""
    from dermsynth.diffusion.sample import generate

    cfg = {
        "prompt": PROMPT,
        "samplers": {a.sampler: {"steps": a.steps}},
        "guidance_scale": a.cfg,
        "resolution": a.resolution,
        "batch_size": a.batch,
        "seed": 0,
        "writer_threads": a.writer_threads,
        "channels_last": True,
        "compile": compile_,
        "compile_mode": a.compile_mode,
    }
    kw = {"threads": a.threads, "device": device, "pipe": pipe}
    # warm-up batch (its own indices and folder): compilation / autotuning for this batch shape
    generate(
        pretrained,
        None,
        "benign",
        a.sampler,
        a.batch,
        cfg,
        out / "warm",
        out / "warm.csv",
        first_index=n,
        block_size=n + a.batch,
        **kw,
    )
    _sync(device)
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    generate(pretrained, None, "benign", a.sampler, n, cfg, out / "ours", out / "ours.csv", **kw)
    _sync(device)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    import torch

    from dermsynth.device import resolve_device
    from dermsynth.diffusion.pipeline import load_pipeline

    a = parse_args(argv)
    device = "cpu" if a.quick else resolve_device(a.device)
    device = "cuda" if device.startswith("cuda") else device
    a.resolution = a.resolution or (64 if a.quick else 512)
    a.batch = a.batch or (32 if device == "cuda" else 8)
    a.n_ours = a.n_ours or (4 if device == "cuda" else 2) * a.batch
    a.n_naive = a.n_naive or (6 if device == "cuda" else 3)
    compile_ = a.compile == "on" or (a.compile == "auto" and device == "cuda")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        model = Path(a.model) if a.model else build_model(work, a.quick, a.resolution)
        print(f"model ready in {time.perf_counter() - t0:.0f} s: {model}", file=sys.stderr)
        pipe = load_pipeline(str(model), sampler=a.sampler, device=device)  # fp16 on CUDA, fp32 on CPU
        naive_img_s = naive(pipe, a.n_naive, work / "naive", a, device)
        print(f"naive: {naive_img_s:.3f} img/s", file=sys.stderr)
        compile_error = None
        try:
            ours_img_s = ours(pipe, str(model), a.n_ours, work, a, device, compile_)
        except Exception as e:  # a compiler failure must not cost the eager figure
            if not compile_:
                raise
            compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"torch.compile failed ({compile_error}); measuring eager", file=sys.stderr)
            compile_ = False
            pipe = load_pipeline(str(model), sampler=a.sampler, device=device)
            ours_img_s = ours(pipe, str(model), a.n_ours, work, a, device, False)
        print(f"ours: {ours_img_s:.3f} img/s", file=sys.stderr)
        peak = _peak_mem_gb(device)
    result = {
        "ours_img_s": round(ours_img_s, 3),
        "naive_img_s": round(naive_img_s, 3),
        "speed_ratio": round(ours_img_s / naive_img_s, 2),
        "peak_mem_gb": round(peak, 2),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "resolution": a.resolution,
        "steps": a.steps,
        "guidance_scale": a.cfg,
        "sampler": a.sampler,
        "batch": a.batch,
        "compile": compile_,
        "compile_mode": a.compile_mode if compile_ else None,
        "channels_last": device == "cuda",
        "dtype": "fp16" if device == "cuda" else "fp32",
        "n_ours": a.n_ours,
        "n_naive": a.n_naive,
        "model": "tiny-sd" if a.quick and not a.model else ("sd15-random" if not a.model else str(a.model)),
        "paper_6000_images_min": round(PAPER_IMAGES / ours_img_s / 60, 1),
    }
    if compile_error:
        result["compile_error"] = compile_error
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
