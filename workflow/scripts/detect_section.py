"""Rule detect_section: the detection check's table beside the paper's figure, and a box sheet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.detect import section_detect

logs.setup(snakemake.log[0], snakemake.config)
p = snakemake.params
with logs.stage("detect_section"):
    section_detect(
        snakemake.input.predictions,
        snakemake.input.val_predictions,
        snakemake.input.history,
        snakemake.output.section,
        snakemake.output.sheet,
        snakemake.output.table,
        cfg=p.cfg,
        paper_accuracy=p.paper_accuracy,
        detector=p.detector,
        n_boot=p.bootstrap,
        ci=p.ci,
    )
