"""Rule generate: one shard of one class x sampler of synthetic images, topped up, and its manifest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.diffusion.sample import generate

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("generate"):
    generate(
        snakemake.params.pretrained,
        next(iter(snakemake.input.get("lora", [])), None),
        snakemake.wildcards.label,
        snakemake.wildcards.sampler,
        snakemake.params.shard["n_images"],
        {**snakemake.params.cfg, "checkpoint": next(iter(snakemake.input.get("merged", [])), None)},
        Path(snakemake.output[0]).parent,
        snakemake.output[0],
        threads=snakemake.threads,
        first_index=snakemake.params.shard["first_index"],
        block_size=snakemake.params.shard["block_size"],
        shard=snakemake.wildcards.shard,
        checks=snakemake.params.checks,
        grid=snakemake.params.grid,
    )
