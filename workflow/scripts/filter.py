"""Rule filter: drop artifacts and near copies of fine-tune images, record why, write the report fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.filter import filter_stage

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("filter"):
    out = snakemake.output
    filter_stage(
        manifests=list(snakemake.input.manifests),
        finetune=snakemake.input.finetune,
        kept_path=out.kept,
        rejected_path=out.rejected,
        nearest_path=out.nearest,
        section_md=out.section,
        hist_png=out.hist,
        pairs_png=out.pairs,
        sheets=list(out.sheets),
        cfg=snakemake.params.cfg,
        threads=snakemake.threads,
        semantic_path=out.semantic,
        calibration_path=out.calibration,
        semantic_png=out.semantic_pairs,
        quality_cfg=snakemake.params.quality,
        feature_model=snakemake.params.feature_model,
    )
