"""Rule download: acquire one dataset as PNGs plus manifest.csv and rejected.csv."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.data import acquire

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("download"):
    out = Path(snakemake.output.manifest).parent
    acquire(
        snakemake.wildcards.dataset,
        snakemake.params.spec,
        out,
        snakemake.output.manifest,
        snakemake.output.rejected,
        seed=snakemake.params.seed,
        classes=snakemake.params.classes,
    )
