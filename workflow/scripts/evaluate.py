"""Rule evaluate: one classifier on one test set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.evaluation import evaluate
from dermsynth.io import read_csv

logs.setup(snakemake.log[0], snakemake.config)
w = snakemake.wildcards
with logs.stage("evaluate"):
    evaluate(
        snakemake.input.model,
        read_csv(snakemake.input.test),
        snakemake.params.classes,
        snakemake.output.metrics,
        snakemake.output.predictions,
        n_boot=snakemake.params.cfg["bootstrap"],
        ci=snakemake.params.cfg["ci"],
        seed=int(w.seed),
        meta={"model": w.model, "regime": w.regime, "seed": int(w.seed), "testset": w.testset},
        threads=snakemake.threads,
        mixed_precision=snakemake.params.mixed_precision,
        specificity_targets=snakemake.params.cfg["specificity_targets"],
        calibration_bins=snakemake.params.cfg["calibration_bins"],
    )
