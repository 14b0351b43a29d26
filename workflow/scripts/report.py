"""Rule report: Table IV, figures and the Markdown summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # dermsynth importable in any env (conda too)

from dermsynth import logs
from dermsynth.report import build_from_workflow

logs.setup(snakemake.log[0], snakemake.config)
with logs.stage("report"):
    build_from_workflow(
        eval_jsons=list(snakemake.input.evals),
        history_paths=list(snakemake.input.histories),
        out_dir=Path(snakemake.output.summary).parent,
        paper_table=snakemake.params.paper_table,
        samples=snakemake.input.samples,
        leakage=snakemake.input.leakage,
        finetune_summary=snakemake.input.finetune,
        config=snakemake.params.config,
        sections=list(snakemake.input.sections),
        realism=list(snakemake.input.realism),
        sweep=snakemake.params.sweep,
        benchmarks_dir=snakemake.params.benchmarks,
        config_snapshot=snakemake.output.config,
        wall_times_csv=snakemake.output.wall_times,
        hybrid_sets=list(snakemake.input.hybrid),
    )
