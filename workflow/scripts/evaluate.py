"""Rule evaluate: one classifier on one test set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.evaluation import evaluate
from dermsynth.io import read_csv
from dermsynth.subgroups import strata

logs.setup(snakemake.log[0], snakemake.config)
w = snakemake.wildcards
cfg = snakemake.params.cfg
with logs.stage("evaluate"):
    test = read_csv(snakemake.input.test)
    evaluate(
        snakemake.input.model,
        test,
        snakemake.params.classes,
        snakemake.output.metrics,
        snakemake.output.predictions,
        n_boot=cfg["bootstrap"],
        ci=cfg["ci"],
        seed=int(w.seed),
        meta={"model": w.model, "regime": w.regime, "seed": int(w.seed), "testset": w.testset},
        threads=snakemake.threads,
        mixed_precision=snakemake.params.mixed_precision,
        specificity_targets=cfg["specificity_targets"],
        calibration_bins=cfg["calibration_bins"],
        strata=strata(test, read_csv(snakemake.input.skin_tone), cfg["age_bands"]),
        min_group_size=cfg["min_group_size"],
    )
