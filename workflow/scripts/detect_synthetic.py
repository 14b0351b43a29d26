"""Rule detect_synthetic: the real-trained detector on the kept synthetic images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.detect import detect_synthetic

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("detect_synthetic"):
    detect_synthetic(
        snakemake.input.model,
        snakemake.input.synthetic,
        snakemake.output.predictions,
        cfg=snakemake.params.cfg,
        threads=snakemake.threads,
    )
