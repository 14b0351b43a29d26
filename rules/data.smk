rule download:
    """Acquire a dataset (demo generator, local folder or isic-cli) as PNGs plus a manifest."""
    output:
        manifest="results/data/{dataset}/raw/manifest.csv",
        rejected="results/data/{dataset}/raw/rejected.csv",
    log:
        "results/logs/download/{dataset}.log",
    benchmark:
        "results/benchmarks/download/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    params:
        spec=dataset_spec,
        seed=config["seed"],
        classes=CLASSES,
        code=code_of("download.py"),
    script:
        "../workflow/scripts/download.py"


rule data_report:
    """Report section: data counts, rejected inputs, DullRazor before/after, splits, leakage."""
    input:
        raw=expand("results/data/{dataset}/raw/manifest.csv", dataset=DATASETS),
        rejected=expand("results/data/{dataset}/raw/rejected.csv", dataset=DATASETS),
        clean=expand("results/data/{dataset}/clean/manifest.csv", dataset=DATASETS),
        splits="results/splits/splits.csv",
        leakage="results/splits/leakage.csv",
    output:
        section="results/report/sections/data.md",
        sheet=report(
            "results/report/sections/data_dullrazor.png",
            caption="../workflow/report/data_dullrazor.rst",
            category="Data",
            labels=data_labels("hair removal: before / after"),
        ),
    log:
        "results/logs/data_report/data_report.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    params:
        datasets=DATASETS,
        code=code_of("data_report.py"),
    script:
        "../workflow/scripts/data_report.py"
