"""Rule dullrazor: hair removal for one dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.hair import remove_hair_dataset

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("dullrazor"):
    remove_hair_dataset(
        snakemake.input[0],
        Path(snakemake.output[0]).parent,
        snakemake.output[0],
        snakemake.params.cfg,
        threads=snakemake.threads,
    )
