rule evaluate:
    """One classifier on one test set: metrics with bootstrap confidence intervals."""
    input:
        model="results/classifiers/{model}/{regime}/{seed}/model",
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
    script:
        "../workflow/scripts/evaluate.py"
