"""Rule quality_reference: real-vs-real rows (train halves, and the two real datasets)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.quality import reference_job

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("quality_reference"):
    reference_job(
        list(snakemake.input.real),
        dict(zip(snakemake.params.datasets, snakemake.input.datasets, strict=True)),
        snakemake.params.classes,
        snakemake.output[0],
        snakemake.params.cfg,
        model_dir=snakemake.params.model_dir,
        feature_models=snakemake.params.feature_models,
        gap_datasets=snakemake.params.cfg["gap_datasets"],
        threads=snakemake.threads,
    )
