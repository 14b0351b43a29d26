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
    script:
        "../workflow/scripts/download.py"
