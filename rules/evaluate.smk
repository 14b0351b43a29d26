rule evaluate:
    """One classifier on one test set: metrics with bootstrap confidence intervals."""
    input:
        model="results/classifiers/{model}/{regime}/{seed}/model",
        val_predictions="results/classifiers/{model}/{regime}/{seed}/val_predictions.csv",
        test="results/splits/{testset}/test.csv",
        skin_tone="results/eval/skin_tone/{testset}.csv",
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


rule skin_tone:
    """The skin tone (ITA group around the classical lesion mask) of each image of one test set."""
    input:
        test="results/splits/{testset}/test.csv",
    output:
        table="results/eval/skin_tone/{testset}.csv",
    log:
        "results/logs/skin_tone/{testset}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        side=config["evaluate"]["skin_tone_side"],
        segment=config["segment"],
        code=code_of("skin_tone.py"),
    script:
        "../workflow/scripts/skin_tone.py"


rule subgroups_section:
    """Report fragment: sensitivity and specificity per subgroup, and the equalized-odds gap."""
    input:
        evals=eval_jsons(),
    output:
        section="results/report/sections/subgroups.md",
        groups=report(
            "results/report/subgroups.csv",
            caption="../workflow/report/subgroups.rst",
            category="Classifiers",
            labels=classifier_labels("results by subgroup"),
        ),
        gaps=report(
            "results/report/subgroup_gaps.csv",
            caption="../workflow/report/subgroup_gaps.rst",
            category="Classifiers",
            labels=classifier_labels("equalized-odds gap by subgroup"),
        ),
    log:
        "results/logs/report/subgroups.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    params:
        cfg=config["evaluate"],
        code=code_of("subgroups_section.py"),
    script:
        "../workflow/scripts/subgroups_section.py"


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
