"""The fine-tune's loop: set up, train the steps, write the LoRA and its summary.

Differences from diffusers' train_dreambooth_lora.py, and why:

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

import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from ... import io
from ...device import resolve_device
from ...errors import TrainingError
from ..pipeline import KOHYA_SUFFIX, LORA_WEIGHT_NAME
from . import card, checkpoints, model, settings
from .compiled_step import CompiledStep
from .data import Batches, LatentCache, Stream
from .objective import Objective
from .progress import LossLog, MemoryPeaks, plot_loss, tensorboard
from .validation import Validation, stack_images, validation_grid

log = logging.getLogger("dermsynth")


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
    s = settings.resolve(cfg)
    if len(images) == 0:
        raise TrainingError("no training images: the fine-tune split is empty, check the split stage")
    out, ckpt = Path(output_dir), Path(checkpoint_dir)
    if s["lora_mode"] == "shared":
        return train_one(pretrained, images, out, s, ckpt, threads, device, on_step, out.name)
    runs = {}
    for label in sorted(images["label"].astype(str).unique()):
        part = images[images["label"].astype(str) == label].reset_index(drop=True)
        runs[label] = train_one(
            pretrained, part, out / label, s, ckpt / label, threads, device, on_step, f"{out.name}_{label}"
        )
    hist = pd.concat([pd.read_csv(out / lb / "loss.csv").assign(lora=lb) for lb in runs], ignore_index=True)
    io.write_csv(out / "loss.csv", hist)
    plot_loss(hist, out / "loss.png")
    stack_images([out / lb / "validation_grid.png" for lb in runs], out / "validation_grid.png")
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


def train_one(
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
    from accelerate.utils import set_seed

    # -- set-up: models, data, optimizer, compiled step, and the checkpoint to resume from
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    mp = settings.effective_precision(s["mixed_precision"], device)
    accum = int(s["gradient_accumulation_steps"])
    accelerator = model.new_accelerator(mp, accum, device)
    dev, is_main = accelerator.device, accelerator.is_main_process
    set_seed(int(s["seed"]))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    data = Batches(images, s)
    stream = Stream(data, accum, accelerator.num_processes, accelerator.process_index)
    total_steps = stream.total_steps(s)
    dtype = model.weight_dtype(mp, device)
    models = model.load_models(str(pretrained), s, sorted(set(data.labels)), dev, device, dtype)
    cache = _latent_cache(models.vae, data, s, dev, dtype)
    if cuda:
        torch.cuda.empty_cache()
    # DDP's start-up broadcast gives the parameters new storage: re-home them after it
    models.unet = accelerator.prepare(models.unet)
    # 256 matrices (SD1.5, rank 4) as views of two buffers: optimizer, clip, unscale and zeroing
    # then cost a call per buffer, not per matrix
    flat = model.flat_params(s, list(models.params.values()))
    optimizer = model.optimizer(s, flat, device)
    lr_scheduler = model.lr_scheduler(s, optimizer, total_steps, stream.n_proc)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    compiled = CompiledStep(accelerator, models.unet, flat, s, device, dev)
    fingerprint = checkpoints.fingerprint(pretrained, images, s, stream.n_proc)
    start, history = _resume(
        ckpt_dir, fingerprint, models.params, optimizer, lr_scheduler, accelerator, out, total_steps
    )
    resumed_from = start or None  # a checkpoint is made after a step, never at step 0
    _log_start(s, data, models, stream, total_steps, device, mp, cache is not None, compiled.compiled)
    objective = Objective(models, data, cache, s, dev, dtype)
    writer = tensorboard(s, out / "tensorboard", is_main)
    losses = LossLog(accelerator, history, s, mp, writer, total_steps, start)
    peaks = MemoryPeaks(device)
    validate = Validation(accelerator, models, s, out, compiled, peaks, writer)

    # -- the steps
    flat.verify()
    t_loop = time.perf_counter()
    models.unet.train()
    compiled.begin(start)
    try:
        for step in range(start, total_steps):
            loss = _optimizer_step(
                step, stream, accelerator, objective, compiled, flat, optimizer, lr_scheduler, s
            )
            done = step + 1
            losses.add(done, stream.epoch_of_step(step), lr_scheduler.get_last_lr()[0], loss)
            ckpt_now, val_now = _due(s, stream, done, total_steps)
            if done % int(s["logging_steps"]) == 0 or ckpt_now or val_now or done == total_steps or not cuda:
                losses.flush()  # on CPU a sync costs nothing; on CUDA only every logging_steps
            if ckpt_now:
                if is_main:
                    d = checkpoints.save_checkpoint(
                        ckpt_dir,
                        done,
                        models.params,
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
                validate(done, stream.epochs_after(done))
            if on_step is not None:
                on_step(done, losses.loss_at(done))
    finally:
        compiled.close()
        losses.close()
        objective.close()
    if cuda:
        torch.cuda.synchronize()
    peaks.note("train")
    compiled.finish()
    loop_s = time.perf_counter() - t_loop - validate.seconds  # it/s of training, not of validation

    # -- outputs (main process only; every process passes the same barriers)
    flat.verify()
    flat.release()
    epochs = stream.epochs_after(total_steps)
    validate(total_steps, epochs)
    if not is_main:
        accelerator.wait_for_everyone()
        return {}
    out.mkdir(parents=True, exist_ok=True)
    validation_grid(out, out / "validation_grid.png")
    kohya = f"{name}{KOHYA_SUFFIX}" if "kohya" in s["export"] else None
    lora_path = checkpoints.save_lora(accelerator.unwrap_model(models.unet), out, kohya)
    hist = losses.frame()
    io.write_csv(out / "loss.csv", hist)
    plot_loss(hist, out / "loss.png")
    ran = total_steps - start
    summary = {
        "steps": total_steps,
        "epochs": epochs,
        "steps_this_run": ran,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "it_s": round(ran / loop_s, 3) if loop_s > 0 else None,
        **peaks.figures(),
        **_run_facts(s, device, stream.n_proc, mp, cache is not None),
        **compiled.summary(),
        "n_images": data.n,
        "labels": sorted(models.embeds),
        "resumed_from": resumed_from,
        "final_loss": float(hist["loss"].tail(max(1, len(hist) // 10)).mean()),
        "trainable_params": sum(p.numel() for p in models.params.values()),
        "optimizer": type(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).__name__,
        "seed": int(s["seed"]),
        "threads": threads,
        "pretrained": str(pretrained),
        "lora_sha256": io.sha256_file(lora_path),
    }
    io.write_json(out / "train_summary.json", summary)
    card.write(s, summary, images, out, name)
    if writer is not None:
        writer.close()
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    _log_end(lora_path, summary)
    return summary


def _resume(
    ckpt_dir: Path, fingerprint: str, params, optimizer, lr_scheduler, accelerator, out: Path, total: int
):
    """(first step, loss history) from the newest checkpoint of this job, else (0, [])."""
    resume = checkpoints.find_resume(ckpt_dir, fingerprint)
    if resume is None:
        if accelerator.is_main_process:
            shutil.rmtree(out / "validation", ignore_errors=True)  # images of an earlier, different run
        return 0, []
    start, history = checkpoints.load_checkpoint(resume, params, optimizer, lr_scheduler, accelerator.scaler)
    log.info("resuming from %s (step %d of %d)", resume, start, total)
    return start, history


def _optimizer_step(step, stream, accelerator, objective, compiled, flat, optimizer, lr_scheduler, s):
    """Optimizer step ``step`` over this process's micro-batches; returns their mean loss (on the device)."""
    loss = None
    for a in range(stream.accum):
        compiled.mark_step_begin()
        with accelerator.accumulate(objective.models.unet):
            inputs = objective.inputs(stream.micro_batch(step, a))
            micro_loss = compiled.backward(step, a == 0, objective.loss, inputs)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(flat.flat, float(s["max_grad_norm"]))
            optimizer.step()
            lr_scheduler.step()
            if accelerator.sync_gradients:
                flat.zero_grad()  # in place: autograd accumulates into the flat buffers
        micro_loss = micro_loss.detach() / stream.accum
        loss = micro_loss if loss is None else loss + micro_loss
    return loss


def _due(s: dict, stream: Stream, done: int, total_steps: int) -> tuple[bool, bool]:
    """(checkpoint now, validate now) after ``done`` steps; neither after the last one."""
    ckpt_now = done % int(s["checkpointing_steps"]) == 0 and done < total_steps
    every = int(s["validation_epochs"])
    val_now = (
        every > 0
        and stream.ends_epoch(done)
        and stream.epochs_after(done) % every == 0
        and done < total_steps
    )
    return ckpt_now, val_now


def _latent_cache(vae, data: Batches, s: dict, dev, dtype) -> LatentCache | None:
    if not s["cache_latents"]:
        return None
    # encoded a training batch at a time: a larger VAE batch would set the job's peak memory
    cache = LatentCache(vae, data, dev, dtype, batch=data.bs)
    log.info(
        "cached VAE latents of %d images%s (%.1f MB)",
        data.n,
        " and their mirrors" if data.random_flip else "",
        cache.nbytes / 1e6,
    )
    return cache


def _run_facts(s: dict, device: str, n_proc: int, mp: str, cached: bool) -> dict:
    """The summary's account of how the job ran, besides compiling."""
    return {
        "device": device,
        "num_processes": n_proc,
        "mixed_precision": mp,
        "mixed_precision_requested": s["mixed_precision"],
        "attention": s["attention"],
        "fuse_qkv_lora": bool(s["fuse_qkv_lora"]),
        "gradient_checkpointing": bool(s["gradient_checkpointing"]),
        "cache_latents": cached,
        # applied on CUDA only (model.apply_speed_options)
        "channels_last": bool(s["channels_last"]) and device.startswith("cuda"),
    }


def _log_start(s, data, models, stream, total_steps, device, mp, cached, compiled) -> None:
    log.info(
        "training LoRA r=%s alpha=%s on %d images (%d labels), %d steps, batch %d x accum %d x %d "
        "process(es), %s, mixed precision %s, attention %s, gradient checkpointing %s, cached latents %s, "
        "channels-last %s, compiled %s (mode %s), snr_gamma %s, noise_offset %s, %d trainable params",
        s["rank"],
        s["alpha"],
        data.n,
        len(models.embeds),
        total_steps,
        data.bs,
        stream.accum,
        stream.n_proc,
        device,
        mp,
        models.attention,
        s["gradient_checkpointing"],
        cached,
        bool(s["channels_last"]) and device.startswith("cuda"),
        compiled,
        s["compile_mode"],
        s["snr_gamma"],
        s["noise_offset"],
        sum(p.numel() for p in models.params.values()),
    )


def _log_end(lora_path: Path, summary: dict) -> None:
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
        summary["steps"],
        summary["it_s"] or 0.0,
        summary["peak_mem_gb"],
        summary["peak_mem_with_validation_gb"],
        reserved,
        summary["wall_s"],
    )
