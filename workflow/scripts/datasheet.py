"""Rule datasheet: DATASHEET.md and the imagefolder metadata.jsonl of the synthetic set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import datasheet, logs

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("datasheet"):
    datasheet.write(
        manifests=list(snakemake.input.manifests),
        kept_csv=snakemake.input.kept,
        rejected_csv=snakemake.input.rejected,
        nearest_csv=snakemake.input.nearest,
        finetune_csv=snakemake.input.finetune,
        cfg=snakemake.params.cfg,
        run=snakemake.wildcards.run,
        datasheet_md=snakemake.output.datasheet,
        metadata_jsonl=snakemake.output.metadata,
    )
