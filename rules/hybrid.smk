rule hybrid:
    """Training sets per regime: real only, or synthetic + real at the configured ratio (lists, not copies)."""
    input:
        real=expand(
            "results/splits/{dataset}/train.csv",
            dataset=config["split"]["train_datasets"],
        ),
        synthetic=regime_synthetic_input,
    output:
        "results/hybrid/{regime}/train.csv",
    log:
        "results/logs/hybrid/{regime}.log",
    # torch env: the regimes come from dermsynth.splits, whose lesion matching may need torch
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        synthetic_fraction=regime_fraction_param,
        seed=config["seed"],
        classes=CLASSES,
        code=code_of("hybrid.py"),
    script:
        "../workflow/scripts/hybrid.py"
