"""Rule resize: square images at one size."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.imaging import resize_dataset

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("resize"):
    resize_dataset(
        snakemake.input[0],
        Path(snakemake.output[0]).parent,
        snakemake.output[0],
        int(snakemake.wildcards.size),
        threads=snakemake.threads,
        policy=snakemake.params.policy,
    )
