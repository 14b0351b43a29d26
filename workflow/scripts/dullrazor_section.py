"""Rule dullrazor_section: the run's largest hair masks (before / mask / after) as a report fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.hair import section_dullrazor

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("dullrazor_section"):
    section_dullrazor(
        list(snakemake.input.raw),
        list(snakemake.input.clean),
        snakemake.output.section,
        snakemake.output.sheet,
        n=snakemake.params.n,
    )
