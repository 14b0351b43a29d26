"""Rule segment_real / segment_synthetic: lesion masks and shape statistics for one image set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.segment import segment_manifest

logs.setup(snakemake.log[0], snakemake.config)
w = snakemake.wildcards
with logs.stage("segment"):
    segment_manifest(
        snakemake.input.manifest,
        snakemake.output.table,
        snakemake.output.rejected,
        method=w.method,
        dataset=w.get("dataset"),
        label=w.get("label"),
        sampler=w.get("sampler"),
        cfg=snakemake.params.cfg,
        threads=snakemake.threads,
    )
