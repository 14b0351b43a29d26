"""Rule subgroups_section: results by skin tone, diagnosis, sex, age band and site; a report fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.report.subgroups import write_section

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("subgroups_section"):
    write_section(
        list(snakemake.input.evals),
        snakemake.output.section,
        snakemake.output.groups,
        snakemake.output.gaps,
        snakemake.params.cfg,
    )
