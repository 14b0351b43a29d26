"""Rule generate_merge: one class x sampler manifest from its shard manifests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.diffusion.sample import merge_shards

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("generate_merge"):
    merge_shards(list(snakemake.input), snakemake.output[0], block_size=snakemake.params.block_size)
