"""The Methods paragraph of summary.md, rendered from the validated config.

The wording lives in one template, ``PARAGRAPH``; ``methods_paragraph`` only turns the config's lists
and switches into phrases for it. The config is the one the workflow validated against the schema, so
every key it reads is there.
"""

from __future__ import annotations

import math

import pandas as pd

from .names import MODEL_NAMES, nice

PARAGRAPH = (
    "Images of the classes {classes} came from {sources}. "
    "{hair} "
    "Images were resized to {resize[diffusion]} px for diffusion and {resize[classifier]} px for the "
    "classifiers. "
    "Stable Diffusion ({sd}) was fine-tuned with DreamBooth and LoRA (rank {ft[rank]}, alpha {ft[alpha]}, "
    "modules {modules}, {ft[resolution]} px, {length}, batch size {ft[train_batch_size]}, "
    "LoRA learning rate {ft[lora_learning_rate]}, {ft[lr_scheduler]} schedule, "
    "optimizer {ft[optimizer]}, mixed precision {ft[mixed_precision]}{prompt}). "
    "{gen[images_per_class]} images per class passing the per-image artifact checks were generated "
    "({grid}, {gen[resolution]} px, "
    "LoRA scale {gen[lora_scale]}). "
    "Generated images were dropped when unreadable, altered after generation (sha256), "
    "pixel-identical to another, or more than {flt[max_black_fraction]} black / "
    "more than {flt[max_white_fraction]} white / flat (gray std < {flt[min_std]}). "
    "{hybrid} "
    "Classifiers {models} were fine-tuned end to end ({cl[image_size]} px, up to {cl[epochs]} epochs, "
    "batch {cl[batch_size]}, AdamW lr {cl[learning_rate]}, weight decay {cl[weight_decay]}, "
    "warmup ratio {cl[warmup_ratio]}, class balance {cl[class_balance]}, augmentation {augment}, "
    "early stopping patience {cl[early_stopping_patience]}, seeds {seeds}). "
    "Confidence intervals are {ci} % percentile bootstrap intervals over test images "
    "({ev[bootstrap]} resamples); hybrid and real models are compared with a paired bootstrap on the "
    "same test images."
)
HAIR_ON = (
    "Hair was removed with DullRazor (black-hat kernel {kernel_size} px, threshold {threshold}, "
    "{method} inpainting, radius {inpaint_radius})."
)
HAIR_OFF = "Hair removal was switched off."
HYBRID_CONFIGURED = "Hybrid training sets were configured to hold {configured:.0f} % synthetic images."
HYBRID_ACTUAL = (
    "The hybrid training set held {fraction:.1f} % synthetic images ({n_synthetic} synthetic and "
    "{n_real} real{per_class}), against {configured:.0f} % configured."
)


def methods_paragraph(cfg: dict, composition: pd.DataFrame | None = None) -> str:
    """The Methods paragraph of the validated config ``cfg``; '' for an empty one (a report built
    without a config has no Methods).

    ``composition`` (stats.hybrid_composition) gives the hybrid set's actual synthetic share; without
    it the sentence says the share was configured, not reached.
    """
    if not cfg:
        return ""
    dr, ft, gen, cl = cfg["preprocess"]["dullrazor"], cfg["finetune"], cfg["generate"], cfg["classify"]
    aug = cl["augment"]
    flips = [k for k in ("hflip", "vflip", "rotate90") if aug[k]]
    jitter = [f"colour jitter {aug['color_jitter']}"] if aug["color_jitter"] else []
    return PARAGRAPH.format(
        classes=" and ".join(cfg["classes"]),
        sources=", ".join(f"{name} ({spec['source']} source)" for name, spec in cfg["datasets"].items()),
        hair=HAIR_ON.format(**dr) if dr["activate"] else HAIR_OFF,
        resize=cfg["preprocess"]["resize"],
        sd=cfg["models"]["sd"],
        ft=ft,
        modules=", ".join(ft["target_modules"]),
        # max_train_steps, when set, overrides the epochs
        length=(
            f"{ft['max_train_steps']} steps"
            if ft["max_train_steps"] is not None
            else f"{ft['num_train_epochs']} epochs"
        ),
        prompt=f', instance prompt "{ft["instance_prompt"]}"' if ft["instance_prompt"] else "",
        gen=gen,
        grid=_grid_text(gen),
        flt=cfg["filter"],
        hybrid=_hybrid_sentence(cfg["hybrid"]["synthetic_fraction"], composition),
        models=", ".join(f"{nice(k, MODEL_NAMES)} ({cfg['models'][k]})" for k in cl["models"]),
        cl=cl,
        augment=", ".join(flips + jitter) or "none",
        seeds=", ".join(str(s) for s in cl["seeds"]),
        ci=int(round(100 * float(cfg["evaluate"]["ci"]))),
        ev=cfg["evaluate"],
    )


def _grid_text(gen: dict) -> str:
    """The configured samplers and CFG, or where the web-UI PNGs that replaced them lie."""
    if gen.get("from_pngs"):
        return (
            "prompts, negative prompts, samplers, steps and guidance scales of the web-UI PNGs in "
            f"`{gen['from_pngs']}`, images split equally over a class's PNGs"
        )
    samplers = ", ".join(f"{k} {_steps_text(v['steps'])} steps" for k, v in gen["samplers"].items())
    return f"samplers {samplers}, guidance scale {gen['guidance_scale']}"


def _steps_text(steps) -> str:
    """A sampler's steps: 20, or a [min, max] range drawn per image as "22-26"."""
    return "-".join(str(s) for s in steps) if isinstance(steps, (list, tuple)) else str(steps)


def _hybrid_sentence(configured: float, comp: pd.DataFrame | None) -> str:
    """The hybrid set's actual synthetic share when its training list was read, else the configured one."""
    sel = comp[comp["regime"] == "hybrid"] if comp is not None and len(comp) else pd.DataFrame()
    if not len(sel):
        return HYBRID_CONFIGURED.format(configured=100 * float(configured))
    tot = sel[sel["label"] == "all"].iloc[0]
    per = ", ".join(
        f"{r['label']} {100 * r['fraction']:.1f} % ({r['n_synthetic']} of {r['n_synthetic'] + r['n_real']})"
        for _, r in sel[sel["label"] != "all"].iterrows()
        if math.isfinite(r["fraction"])
    )
    return HYBRID_ACTUAL.format(
        fraction=100 * tot["fraction"],
        n_synthetic=tot["n_synthetic"],
        n_real=tot["n_real"],
        per_class=f"; per class {per}" if per else "",
        configured=100 * float(configured),
    )
