"""Rule train_classifier: one model x regime x seed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.classify import train_from_manifests

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("train_classifier"):
    train_from_manifests(
        arch=snakemake.wildcards.model,
        pretrained=snakemake.params.pretrained,
        train_manifest=snakemake.input.train,
        val_manifests=list(snakemake.input.val),
        out_dir=Path(snakemake.output.history).parent,
        cfg=snakemake.params.cfg,
        seed=int(snakemake.wildcards.seed),
        classes=snakemake.params.classes,
        threads=snakemake.threads,
    )
