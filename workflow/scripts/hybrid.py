"""Rule hybrid: the training list of one regime."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.regimes import base_regime
from dermsynth.splits import write_regime

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("hybrid"):
    write_regime(
        list(snakemake.input.real),
        snakemake.input.synthetic[0] if snakemake.input.synthetic else None,
        base_regime(snakemake.wildcards.regime),  # a sweep point is a hybrid set at its own fraction
        snakemake.params.synthetic_fraction,
        snakemake.params.seed,
        snakemake.params.classes,
        snakemake.output[0],
    )
