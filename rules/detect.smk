rule train_detector:
    """The detection check's YOLOS, trained on the real train split with boxes from lesion masks."""
    input:
        sd_manifests=detect_sd_manifests(),
        masks=detect_mask_tables(),
        splits="results/splits/splits.csv",
        model=model_input("detector"),
    output:
        model=directory("results/detect/model"),
        history="results/detect/history.csv",
        val_predictions="results/detect/val_predictions.csv",
    log:
        "results/logs/detect/train.log",
    benchmark:
        "results/benchmarks/detect/train.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        pretrained=detector_model_ref,
        cfg=detect_params("sheet_images", "max_images"),
        classes=CLASSES,
        code=code_of("train_detector.py"),
    script:
        "../workflow/scripts/train_detector.py"


rule detect_synthetic:
    """The real-trained detector on the kept synthetic images: top box, score and class per image."""
    input:
        model="results/detect/model",
        synthetic="results/synthetic/{run}/filtered.csv",
    output:
        predictions="results/detect/{run}/predictions.csv",
    log:
        "results/logs/detect/{run}_synthetic.log",
    benchmark:
        "results/benchmarks/detect/{run}_synthetic.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        cfg=detect_params("sheet_images"),
        code=code_of("detect_synthetic.py"),
    script:
        "../workflow/scripts/detect_synthetic.py"


rule detect_section:
    """Detection rate and accuracy per sampler beside the paper's 72 %, and a box sheet: a fragment."""
    input:
        predictions="results/detect/{run}/predictions.csv",
        val_predictions="results/detect/val_predictions.csv",
        history="results/detect/history.csv",
    output:
        section="results/report/sections/detect_{run}.md",
        sheet=report(
            "results/report/sections/detect_{run}_boxes.png",
            caption="../workflow/report/detect_boxes.rst",
            category="Synthetic images",
            labels=synthetic_labels("detection check: boxes", run="{run}"),
        ),
        table="results/detect/{run}/table.csv",
    log:
        "results/logs/detect/{run}_section.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["detect"],
        paper_accuracy=config["report"]["paper_detection_accuracy"],
        detector=model_ref("detector"),
        bootstrap=config["evaluate"]["bootstrap"],
        ci=config["evaluate"]["ci"],
        code=code_of("detect_section.py"),
    script:
        "../workflow/scripts/detect_section.py"


rule detect_all:
    input:
        f"results/detect/{RUN}/table.csv",
