"""Rule transformations_section: do the prompt modifiers change skin ITA, lesion size and count?"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.transformations import section_transformations

logs.setup(snakemake.log[0], snakemake.config)
p = snakemake.params
with logs.stage("transformations_section"):
    section_transformations(
        list(snakemake.input.tables),
        snakemake.input.manifest,
        snakemake.output.section,
        snakemake.output.ita,
        snakemake.output.table,
        p.cfg,
        p.modifiers,
        sd_model=p.sd_model,
        n_boot=p.bootstrap,
        ci=p.ci,
    )
