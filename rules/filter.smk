rule filter:
    """Artifact filter: unreadable, black, white, flat, duplicate images go to rejected.csv."""
    input:
        generation_manifests(),
    output:
        kept="results/synthetic/{run}/filtered.csv",
        rejected="results/synthetic/{run}/rejected.csv",
    log:
        "results/logs/filter/{run}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    params:
        cfg=config["filter"],
    script:
        "../workflow/scripts/filter.py"
