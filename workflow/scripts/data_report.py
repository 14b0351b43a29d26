"""Rule data_report: the data section of the report (counts, rejected, DullRazor sheet, splits, leakage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.data.summary import section_data

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("data_report"):
    names = snakemake.params.datasets
    section_data(
        raw=dict(zip(names, snakemake.input.raw, strict=True)),
        rejected=dict(zip(names, snakemake.input.rejected, strict=True)),
        clean=dict(zip(names, snakemake.input.clean, strict=True)),
        splits=snakemake.input.splits,
        leakage=snakemake.input.leakage,
        out_md=snakemake.output.section,
        sheet_png=snakemake.output.sheet,
    )
