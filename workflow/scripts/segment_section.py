"""Rule segment_section: mask overlays, shape histograms and distances as a report fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.segment import section_segment

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("segment_section"):
    section_segment(
        list(snakemake.input),
        snakemake.output.section,
        snakemake.output.overlays,
        snakemake.output.shapes,
        snakemake.output.distances,
        snakemake.params.cfg,
    )
