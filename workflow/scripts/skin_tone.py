"""Rule skin_tone: the ITA skin-tone group of every image of one test set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import io, logs
from dermsynth.skin_groups import skin_tone_table

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("skin_tone"):
    table = skin_tone_table(
        io.read_csv(snakemake.input.test)["path"],
        side=snakemake.params.side,
        segment_cfg=snakemake.params.segment,
        threads=snakemake.threads,
    )
    io.write_csv(snakemake.output.table, table)
