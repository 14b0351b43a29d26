"""Rule generate: one class x one sampler of synthetic images plus their manifest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.diffusion.sample import generate

logs.setup(snakemake.log[0])
with logs.stage("generate"):
    generate(
        snakemake.params.pretrained,
        snakemake.input.lora,
        snakemake.wildcards.label,
        snakemake.wildcards.sampler,
        snakemake.params.n_images,
        snakemake.params.cfg,
        Path(snakemake.output[0]).parent,
        snakemake.output[0],
        threads=snakemake.threads,
    )
