rule datasheet:
    """The synthetic set as others receive it: a datasheet and an imagefolder metadata.jsonl."""
    input:
        manifests=generation_manifests(),
        kept="results/synthetic/{run}/filtered.csv",
        rejected="results/synthetic/{run}/rejected.csv",
        nearest="results/synthetic/{run}/nearest.csv",
        finetune="results/splits/finetune.csv",
    output:
        datasheet="results/synthetic/{run}/DATASHEET.md",
        metadata="results/synthetic/{run}/metadata.jsonl",
    log:
        "results/logs/datasheet/{run}.log",
    conda:
        "../envs/report.yaml"
    params:
        # only what the datasheet reads: a classifier setting must not rerun it
        cfg={k: config[k] for k in ("classes", "generate", "filter")},
        code=code_of("datasheet.py"),
    script:
        "../workflow/scripts/datasheet.py"
