rule report:
    """Table IV beside the paper's numbers, figures, and a Markdown summary."""
    input:
        evals=eval_jsons(),
        histories=histories(),
        realism=realism_jsons(),
        hybrid=hybrid_train_sets(),
        samples=f"results/synthetic/{RUN}/filtered.csv",
        leakage="results/splits/leakage.csv",
        finetune=f"results/lora/{RUN}/train_summary.json",
        sections=REPORT_SECTIONS,
    output:
        **sweep_outputs(),
        **realism_outputs(),
        summary="results/report/summary.md",
        summary_html=report(
            "results/report/summary.html",
            caption="../workflow/report/summary.rst",
            category="Table IV",
            labels={"figure": "summary: every table and figure of every stage"},
        ),
        table=report(
            "results/report/table4.csv",
            caption="../workflow/report/table4.rst",
            category="Table IV",
            labels=classifier_labels("Table IV: accuracy, ours vs paper"),
        ),
        table_md="results/report/table4.md",
        paired=report(
            "results/report/paired.csv",
            caption="../workflow/report/paired.rst",
            category="Table IV",
            labels=classifier_labels("paired bootstrap test", regime="hybrid vs real"),
        ),
        accuracy=report(
            "results/report/accuracy.png",
            caption="../workflow/report/accuracy.rst",
            category="Table IV",
            labels=classifier_labels("accuracy vs paper"),
        ),
        curves=report(
            "results/report/curves.png",
            caption="../workflow/report/curves.rst",
            category="Classifiers",
            labels=classifier_labels("validation curves", test_set="validation split"),
        ),
        confusion=report(
            "results/report/confusion.png",
            caption="../workflow/report/confusion.rst",
            category="Classifiers",
            labels=classifier_labels("confusion matrices"),
        ),
        roc=report(
            "results/report/roc.png",
            caption="../workflow/report/roc.rst",
            category="Classifiers",
            labels=classifier_labels("ROC curves"),
        ),
        reliability=report(
            "results/report/reliability.png",
            caption="../workflow/report/reliability.rst",
            category="Classifiers",
            labels=classifier_labels("reliability diagrams"),
        ),
        samples=report(
            "results/report/samples.png",
            caption="../workflow/report/samples.rst",
            category="Synthetic images",
            labels=synthetic_labels("kept by the filter"),
        ),
        config=report(
            "results/report/config.yaml",
            caption="../workflow/report/config.rst",
            category="Provenance",
            labels={"figure": "config as run", "run": RUN},
        ),
        wall_times=report(
            "results/report/wall_times.csv",
            caption="../workflow/report/wall_times.rst",
            category="Provenance",
            labels={"figure": "wall time per job", "run": RUN},
        ),
    log:
        "results/logs/report/report.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    params:
        paper_table=config["report"]["paper_table"],
        config=config,
        sweep=SWEEP,
        # Read at run time, not declared as inputs: the report already depends on the outputs of every
        # benchmarked job, so their timings are fresh whenever it runs, and deleting a timing file must
        # not force a GPU job (fine-tuning, training) to run again.
        benchmarks="results/benchmarks",
        code=code_of("report.py"),
    script:
        "../workflow/scripts/report.py"
