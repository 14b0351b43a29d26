rule train_classifier:
    """Fine-tune one classifier (ViT-B/16 or MobileNetV2) on one regime with one seed."""
    input:
        train="results/hybrid/{regime}/train.csv",
        val=expand(
            "results/splits/{dataset}/val.csv",
            dataset=config["split"]["train_datasets"],
        ),
        model=classifier_model_input,
    output:
        model=directory("results/classifiers/{model}/{regime}/{seed}/model"),
        history="results/classifiers/{model}/{regime}/{seed}/history.csv",
        summary="results/classifiers/{model}/{regime}/{seed}/train_summary.json",
        val_predictions="results/classifiers/{model}/{regime}/{seed}/val_predictions.csv",
    log:
        "results/logs/train_classifier/{model}_{regime}_{seed}.log",
    benchmark:
        "results/benchmarks/train_classifier/{model}_{regime}_{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        pretrained=classifier_model_ref,
        cfg=classifier_params(),
        classes=CLASSES,
        code=code_of("train_classifier.py"),
    script:
        "../workflow/scripts/train_classifier.py"


rule classify_all:
    input:
        histories(),
