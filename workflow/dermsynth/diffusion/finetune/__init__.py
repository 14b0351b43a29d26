"""DreamBooth-LoRA fine-tuning of a Stable Diffusion UNet (the loop of diffusers' train_dreambooth_lora.py).

One LoRA is trained on all classes, each image captioned with its class prompt (the paper's setup,
``lora_mode: shared``), or one LoRA per class (``lora_mode: per_class``). The modules, in the order a
job meets them:

* ``settings``: the schema's ``finetune`` section, and which keys a resume may change;
* ``data``: the images as deterministic batches, the micro-batch stream, the VAE latent cache;
* ``model``: the frozen SD parts, the LoRA in flat buffers, its optimizer and learning-rate schedule;
* ``objective``: a micro-batch's noisy latents and target, and its loss;
* ``compiled_step``: torch.compile of the step, its CUDA graphs, its check against eager, its fallbacks;
* ``checkpoints``: resumable checkpoints and the final LoRA files (diffusers, kohya);
* ``progress`` and ``validation``: the loss history, memory peaks, validation images and grid;
* ``loop``: ``train_lora``, which reads set-up -> steps -> summary;
* ``launch``: ``run_finetune`` (the stage, on one GPU or through ``accelerate launch``) and ``main``.
"""

from .launch import main, run_finetune
from .loop import train_lora

__all__ = ["main", "run_finetune", "train_lora"]
