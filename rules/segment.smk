rule segment_real:
    """Lesion masks of one real dataset (classical baseline or SAM) with shape statistics."""
    input:
        manifest=segment_real_manifest,
        model=segment_model_input,
    output:
        table="results/masks/{method}/real/{dataset}/masks.csv",
        rejected="results/masks/{method}/real/{dataset}/rejected.csv",
    log:
        "results/logs/segment/{method}/real_{dataset}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        gpu=segment_gpu,
    params:
        cfg=segment_params,
        code=code_of("segment.py"),
    script:
        "../workflow/scripts/segment.py"


rule segment_synthetic:
    """Lesion masks of one class x sampler of kept synthetic images, with shape statistics."""
    input:
        manifest="results/synthetic/{run}/filtered.csv",
        model=segment_model_input,
    output:
        table="results/masks/{method}/{run}/{label}/{sampler}/masks.csv",
        rejected="results/masks/{method}/{run}/{label}/{sampler}/rejected.csv",
    log:
        "results/logs/segment/{method}/{run}_{label}_{sampler}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        gpu=segment_gpu,
    params:
        cfg=segment_params,
        code=code_of("segment.py"),
    script:
        "../workflow/scripts/segment.py"


rule segment_section:
    """Mask overlays per class x sampler, shape-statistic histograms and distances: a report fragment."""
    input:
        segment_tables(),
    output:
        section="results/report/sections/segment.md",
        overlays=report(
            "results/report/sections/segment_overlays.png",
            caption="../workflow/report/segment_overlays.rst",
            category="Synthetic data quality",
            labels=segment_labels("lesion-mask outlines"),
        ),
        shapes=report(
            "results/report/sections/segment_shapes.png",
            caption="../workflow/report/segment_shapes.rst",
            category="Synthetic data quality",
            labels=segment_labels("lesion-shape statistics"),
        ),
        distances="results/masks/shape_distances.csv",
    log:
        "results/logs/segment/section.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["segment"],
        code=code_of("segment_section.py"),
    script:
        "../workflow/scripts/segment_section.py"


rule transformations_section:
    """Smart transformations, measured: does each prompt modifier change skin ITA, lesion size, count?"""
    input:
        tables=transformation_tables(),
        manifest=f"results/synthetic/{RUN}/filtered.csv",
    output:
        section="results/report/sections/transformations.md",
        ita=report(
            "results/report/sections/transformations_ita.png",
            caption="../workflow/report/transformations_ita.rst",
            category="Synthetic data quality",
            labels=segment_labels("skin ITA by skin-tone modifier"),
        ),
        table="results/masks/transformations.csv",
    log:
        "results/logs/segment/transformations.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["segment"],
        modifiers=config["generate"]["modifiers"],
        sd_model=sd_model_ref,
        bootstrap=config["evaluate"]["bootstrap"],
        ci=config["evaluate"]["ci"],
        code=code_of("transformations_section.py"),
    script:
        "../workflow/scripts/transformations_section.py"


rule segment_all:
    input:
        segment_tables(),
