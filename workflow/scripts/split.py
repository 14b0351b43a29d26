"""Rule split: lesion-grouped, de-duplicated splits; per-dataset split manifests; the fine-tune set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.splits import write_split_manifests

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("split"):
    write_split_manifests(
        cls_manifests=dict(zip(snakemake.params.datasets, snakemake.input.manifests, strict=True)),
        sd_manifests=dict(zip(snakemake.params.datasets, snakemake.input.sd_manifests, strict=True)),
        fractions=snakemake.params.fractions,
        seed=snakemake.params.seed,
        phash_threshold=snakemake.params.phash_threshold,
        min_corr=snakemake.params.min_corr,
        patient_groups=snakemake.params.patient_groups,
        embedding=snakemake.params.embedding,
        finetune_datasets=snakemake.params.finetune_datasets,
        splits_path=snakemake.output.splits,
        leakage_path=snakemake.output.leakage,
        finetune_path=snakemake.output.finetune,
        out_dir=Path(snakemake.output.splits).parent,
        threads=snakemake.threads,
    )
