"""Rule quality: one class x sampler against the real training images of its class."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.quality import quality_job

logs.setup(snakemake.log[0], snakemake.config)
w = snakemake.wildcards
with logs.stage("quality"):
    quality_job(
        list(snakemake.input.real),
        snakemake.input.synthetic,
        w.label,
        w.sampler,
        snakemake.output[0],
        snakemake.params.cfg,
        model_dir=snakemake.params.model_dir,
        feature_models=snakemake.params.feature_models,
        classes=snakemake.params.classes,
        run=w.run,
        threads=snakemake.threads,
    )
