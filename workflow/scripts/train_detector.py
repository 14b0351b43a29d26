"""Rule train_detector: the detection check's YOLOS, trained on real images with boxes from their masks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.detect import train_stage

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("train_detector"):
    train_stage(
        list(snakemake.input.sd_manifests),
        snakemake.input.splits,
        list(snakemake.input.masks),
        snakemake.params.pretrained,
        snakemake.params.classes,
        snakemake.output.model,
        snakemake.output.history,
        snakemake.output.val_predictions,
        cfg=snakemake.params.cfg,
        threads=snakemake.threads,
    )
