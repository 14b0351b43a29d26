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
        sections=REPORT_SECTIONS,
    output:
        summary="results/report/summary.md",
        table=report(
            "results/report/table4.csv",
            caption="../workflow/report/table4.rst",
            category="Table IV",
        ),
        table_md="results/report/table4.md",
        paired="results/report/paired.csv",
        accuracy=report(
            "results/report/accuracy.png",
            caption="../workflow/report/accuracy.rst",
            category="Table IV",
        ),
        curves=report(
            "results/report/curves.png",
            caption="../workflow/report/curves.rst",
            category="Classifiers",
        ),
        confusion=report(
            "results/report/confusion.png",
            caption="../workflow/report/confusion.rst",
            category="Classifiers",
        ),
        roc=report(
            "results/report/roc.png",
            caption="../workflow/report/roc.rst",
            category="Classifiers",
        ),
        samples=report(
            "results/report/samples.png",
            caption="../workflow/report/samples.rst",
            category="Synthetic images",
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
