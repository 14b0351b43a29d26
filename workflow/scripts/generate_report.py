"""Rule generate_report: the generation split table and contact sheets as a report fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.diffusion.sample import section_generate

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("generate_report"):
    section_generate(
        list(snakemake.input), snakemake.output.md, snakemake.params.sheets, split_csv=snakemake.output.split
    )
