"""Rule tiny_model: build a tiny random-weight model with the real architecture."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.tiny import build

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("tiny_model"):
    build(
        snakemake.wildcards.kind,
        snakemake.output[0],
        seed=snakemake.params.seed,
        image_size=snakemake.params.image_size,
    )
