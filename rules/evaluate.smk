rule evaluate:
    """One classifier on one test set: metrics with bootstrap confidence intervals."""
    input:
        model="results/classifiers/{model}/{regime}/{seed}/model",
        val_predictions="results/classifiers/{model}/{regime}/{seed}/val_predictions.csv",
        test="results/splits/{testset}/test.csv",
    output:
        metrics="results/eval/{model}/{regime}/{seed}/{testset}.json",
        predictions="results/eval/{model}/{regime}/{seed}/{testset}_predictions.csv",
    log:
        "results/logs/evaluate/{model}_{regime}_{seed}_{testset}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["evaluate"],
        classes=CLASSES,
        mixed_precision=config["classify"]["mixed_precision"],
        code=code_of("evaluate.py"),
    script:
        "../workflow/scripts/evaluate.py"


rule realism:
    """The paper's realism check: the real-only classifier's accuracy on the kept synthetic images."""
    input:
        model="results/classifiers/{model}/real/{seed}/model",
        synthetic=f"results/synthetic/{RUN}/filtered.csv",
    output:
        metrics="results/realism/{model}/{seed}.json",
        predictions="results/realism/{model}/{seed}_predictions.csv",
    log:
        "results/logs/realism/{model}_{seed}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["evaluate"],
        classes=CLASSES,
        mixed_precision=config["classify"]["mixed_precision"],
        code=code_of("realism.py"),
    script:
        "../workflow/scripts/realism.py"
