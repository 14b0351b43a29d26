rule split:
    """Lesion-grouped, de-duplicated train/val/test splits over all datasets."""
    input:
        manifests=expand(cls_manifest("{dataset}"), dataset=DATASETS),
        sd_manifests=expand(sd_manifest("{dataset}"), dataset=DATASETS),
    output:
        splits="results/splits/splits.csv",
        leakage="results/splits/leakage.csv",
        finetune="results/splits/finetune.csv",
        sets=expand(
            "results/splits/{dataset}/{split}.csv",
            dataset=DATASETS,
            split=["train", "val", "test"],
        ),
    log:
        "results/logs/split/split.log",
    # torch env: split.embedding may embed the images with DINOv2, CLIP or the tiny conv net
    conda:
        "../envs/torch.yaml"
    threads: 4
    params:
        datasets=DATASETS,
        fractions={name: spec["split"] for name, spec in config["datasets"].items()},
        seed=config["split"]["seed"],
        phash_threshold=config["split"]["phash_threshold"],
        min_corr=config["split"]["min_corr"],
        patient_groups=config["split"]["patient_groups"],
        embedding=config["split"]["embedding"],
        finetune_datasets=config["split"]["finetune_datasets"],
        code=code_of("split.py"),
    script:
        "../workflow/scripts/split.py"
