rule quality:
    """One class x sampler vs real: FID/KID, PRDC, MS-SSIM diversity; DINOv2 FD/PRDC, CLIP CMMD, C2ST."""
    input:
        real=quality_real_train(),
        synthetic="results/synthetic/{run}/filtered.csv",
        model=quality_feature_model(),
    output:
        "results/quality/{run}/{label}/{sampler}.json",
    log:
        "results/logs/quality/{run}/{label}_{sampler}.log",
    benchmark:
        "results/benchmarks/quality/{run}/{label}_{sampler}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["quality"],
        model_dir=quality_feature_model_dir(),
        feature_models=quality_embedding_models(),
        classes=CLASSES,
        code=code_of("quality.py"),
    script:
        "../workflow/scripts/quality.py"


rule quality_reference:
    """The scale for every quality row: real train halves (floor) and the two real datasets (gap)."""
    input:
        real=quality_real_train(),
        datasets=expand(cls_manifest("{dataset}"), dataset=DATASETS),
        model=quality_feature_model(),
    output:
        "results/quality/{run}/reference.json",
    log:
        "results/logs/quality/{run}/reference.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["quality"],
        model_dir=quality_feature_model_dir(),
        feature_models=quality_embedding_models(),
        classes=CLASSES,
        datasets=DATASETS,
        code=code_of("quality_reference.py"),
    script:
        "../workflow/scripts/quality_reference.py"


rule quality_section:
    """The quality table (CSV) and the report fragment "Synthetic data quality"."""
    input:
        reference="results/quality/{run}/reference.json",
        jobs=quality_jsons,
    output:
        table="results/quality/{run}/table.csv",
        section="results/report/sections/quality_{run}.md",
    log:
        "results/logs/quality/{run}/section.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["quality"],
        code=code_of("quality_section.py"),
    script:
        "../workflow/scripts/quality_section.py"


rule quality_all:
    input:
        f"results/quality/{RUN}/table.csv",
