"""The LoRA's model card: ``README.md`` beside ``pytorch_lora_weights.safetensors``.

Hugging Face's model-card format (YAML front matter, then Markdown), so ``hf upload`` of the folder
publishes the LoRA with its base model, licence, tags, prompts, training settings, loss curve and
validation grid as they were in this run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from ... import io
from ..pipeline import KOHYA_SUFFIX, LORA_WEIGHT_NAME

TAGS = [
    "text-to-image",
    "stable-diffusion",
    "diffusers",
    "lora",
    "dreambooth",
    "dermoscopy",
    "medical-imaging",
    "synthetic-data",
    "dermsynth",
]
#: Where the source images' licences come from, as the datasets publish them.
DATA_LICENCES = (
    "ISIC Archive images carry per-image licences (CC-0, CC-BY or CC-BY-NC; see each image's record); "
    "HAM10000 is CC BY-NC 4.0. A LoRA trained on CC-BY-NC images is for non-commercial use."
)
SETTINGS = [
    ("rank", "LoRA rank"),
    ("alpha", "LoRA alpha"),
    ("target_modules", "target modules"),
    ("resolution", "resolution (px)"),
    ("train_batch_size", "batch size"),
    ("gradient_accumulation_steps", "gradient accumulation"),
    ("lora_learning_rate", "LoRA learning rate"),
    ("lr_scheduler", "learning-rate schedule"),
    ("lr_warmup_steps", "warm-up steps"),
    ("optimizer", "optimizer"),
    ("mixed_precision", "mixed precision"),
    ("center_crop", "centre crop"),
    ("random_flip", "random flip"),
    ("snr_gamma", "SNR gamma"),
    ("noise_offset", "noise offset"),
    ("seed", "seed"),
]


def prompts(s: dict, labels: list[str]) -> dict[str, str]:
    return {label: s["instance_prompt"].format(label=label) for label in labels}


def render(s: dict, summary: dict, images: pd.DataFrame, out_dir: Path, name: str) -> str:
    """The card's text for the LoRA trained with settings ``s`` on ``images``, as ``summary`` says."""
    labels = list(summary["labels"])
    per_class = prompts(s, labels)
    front = {
        "base_model": summary["pretrained"],
        "library_name": "diffusers",
        "license": s["card_license"],
        "tags": TAGS,
        "instance_prompt": per_class[labels[0]] if len(labels) == 1 else list(per_class.values()),
        "pipeline_tag": "text-to-image",
    }
    counts = (
        images.groupby(["dataset", "label"]).size() if "dataset" in images else images.groupby("label").size()
    )
    data_rows = "\n".join(
        f"| {' | '.join(map(str, k if isinstance(k, tuple) else (k,)))} | {n} |" for k, n in counts.items()
    )
    data_head = (
        "| dataset | label | images |\n|---|---|---|"
        if "dataset" in images
        else "| label | images |\n|---|---|"
    )
    setting_rows = "\n".join(f"| {title} | {_value(s[key])} |" for key, title in SETTINGS)
    run_rows = "\n".join(
        f"| {title} | {_value(summary.get(key))} |"
        for key, title in (
            ("steps", "optimizer steps"),
            ("epochs", "epochs"),
            ("n_images", "training images"),
            ("final_loss", "final loss (mean of the last tenth)"),
            ("device", "device"),
            ("it_s", "speed (it/s)"),
            ("wall_s", "wall time (s)"),
        )
    )
    kohya = f"{name}{KOHYA_SUFFIX}"
    files = [(LORA_WEIGHT_NAME, "diffusers / peft")]
    if (out_dir / kohya).is_file():
        files.append((kohya, "kohya / AUTOMATIC1111 web UI"))
    file_rows = "\n".join(f"| `{f}` | {what} | `{io.sha256_file(out_dir / f)}` |" for f, what in files)
    prompt_rows = "\n".join(f"| {label} | `{p}` |" for label, p in per_class.items())
    body = f"""# {name}: DreamBooth-LoRA of {summary["pretrained"]} on dermoscopic images

A LoRA for Stable Diffusion that draws dermoscopic images of skin lesions, trained by the dermsynth
workflow (a reproduction of Derm-T2IM, Farooq et al., 2024).

**For research on synthetic training data for skin-lesion classifiers. Not for diagnosis**, and not
a source of medical truth: generated lesions are not real patients' lesions.

## Prompts

| class | instance prompt |
|---|---|
{prompt_rows}

## Training data

{data_head}
{data_rows}

{DATA_LICENCES}

## Training settings

| setting | value |
|---|---|
{setting_rows}

## This run

| figure | value |
|---|---|
{run_rows}

![training loss](loss.png)

![validation images](validation_grid.png)

## Use

```python
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{summary["pretrained"]}")
pipe.load_lora_weights("<this folder>", weight_name="{LORA_WEIGHT_NAME}")
image = pipe("{per_class[labels[-1]]}", num_inference_steps=25, guidance_scale=7).images[0]
```

In the AUTOMATIC1111 web UI, copy `{kohya}` into `models/Lora` and add `<lora:{name}_kohya:1>` to the
prompt.

## Files

| file | format | sha256 |
|---|---|---|
{file_rows}
"""
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def write(s: dict, summary: dict, images: pd.DataFrame, out_dir: Path, name: str) -> Path:
    path = Path(out_dir) / "README.md"
    io.write_text(path, render(s, summary, images, Path(out_dir), name))
    return path
