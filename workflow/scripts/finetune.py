"""Rule finetune: DreamBooth-LoRA training (resumes from results/lora/<run>.ckpt/)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.diffusion.finetune import run_finetune

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("finetune"):
    run_finetune(
        snakemake.params.pretrained,
        snakemake.input.images,
        Path(snakemake.output.summary).parent,  # per_class: one LoRA per class below it
        snakemake.params.cfg,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        threads=snakemake.threads,
        gpus=snakemake.params.gpus,
    )
