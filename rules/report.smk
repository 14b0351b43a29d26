rule report:
    """Table IV beside the paper's numbers, figures, and a Markdown summary."""
    input:
        evals=eval_jsons(),
        histories=histories(),
        rejected=f"results/synthetic/{RUN}/rejected.csv",
        samples=f"results/synthetic/{RUN}/filtered.csv",
        dullrazor=expand("results/data/{dataset}/clean/manifest.csv", dataset=DATASETS),
        leakage="results/splits/leakage.csv",
        finetune=f"results/lora/{RUN}/train_summary.json",
    output:
        summary="results/report/summary.md",
        table=report(
            "results/report/table4.csv",
            caption="../workflow/report/table4.rst",
            category="Table IV",
        ),
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.png"],
            caption="../workflow/report/figures.rst",
            category="Figures",
        ),
    log:
        "results/logs/report/report.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    params:
        paper_table=config["report"]["paper_table"],
        config=config,
    script:
        "../workflow/scripts/report.py"
