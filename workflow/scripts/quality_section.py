"""Rule quality_section: the quality table and its report fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.quality import section_quality

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("quality_section"):
    section_quality(
        snakemake.input.reference,
        list(snakemake.input.jobs),
        snakemake.output.table,
        snakemake.output.section,
        snakemake.params.cfg,
    )
