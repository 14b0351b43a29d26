"""Rule realism: the real-only classifier on the kept synthetic images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.evaluation import realism_check

logs.setup(snakemake.log[0], snakemake.config)
w = snakemake.wildcards
with logs.stage("realism"):
    realism_check(
        snakemake.input.model,
        snakemake.input.synthetic,
        snakemake.params.classes,
        snakemake.output.metrics,
        snakemake.output.predictions,
        n_boot=snakemake.params.cfg["bootstrap"],
        ci=snakemake.params.cfg["ci"],
        seed=int(w.seed),
        meta={"model": w.model, "regime": "real", "seed": int(w.seed)},
        threads=snakemake.threads,
        mixed_precision=snakemake.params.mixed_precision,
    )
