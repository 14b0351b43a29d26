rule filter:
    """Artifact filter and memorization audit: rejected images go to rejected.csv with a reason."""
    input:
        manifests=generation_manifests(),
        finetune="results/splits/finetune.csv",
    output:
        kept="results/synthetic/{run}/filtered.csv",
        rejected="results/synthetic/{run}/rejected.csv",
        nearest="results/synthetic/{run}/nearest.csv",
        section="results/report/sections/filter_{run}.md",
        hist=report(
            "results/report/sections/filter_{run}_nn_hist.png",
            caption="../workflow/report/filter_nn.rst",
            category="Synthetic images",
            labels=synthetic_labels(
                "memorization: nearest fine-tune image", run="{run}"
            ),
        ),
        pairs=report(
            "results/report/sections/filter_{run}_pairs.png",
            caption="../workflow/report/filter_pairs.rst",
            category="Synthetic images",
            labels=synthetic_labels("memorization: closest pairs", run="{run}"),
        ),
        sheets=filter_sheets(),
    log:
        "results/logs/filter/{run}.log",
    benchmark:
        "results/benchmarks/filter/{run}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2
    params:
        cfg=config["filter"],
        code=code_of("filter.py"),
    script:
        "../workflow/scripts/filter.py"
