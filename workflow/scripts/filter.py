"""Rule filter: drop degenerate synthetic images, record why."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.quality import filter_synthetic

logs.setup(snakemake.log[0])
with logs.stage("filter"):
    filter_synthetic(
        list(snakemake.input), snakemake.output.kept, snakemake.output.rejected, snakemake.params.cfg
    )
