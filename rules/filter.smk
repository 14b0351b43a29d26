rule filter:
    """Artifact filter, pixel and semantic memorization audits: rejected images go to rejected.csv with a reason."""
    input:
        manifests=generation_manifests(),
        finetune="results/splits/finetune.csv",
        feature_model=semantic_feature_model_input,
    output:
        kept="results/synthetic/{run}/filtered.csv",
        rejected="results/synthetic/{run}/rejected.csv",
        nearest="results/synthetic/{run}/nearest.csv",
        semantic="results/synthetic/{run}/nearest_semantic.csv",
        calibration="results/synthetic/{run}/semantic_calibration.json",
        section="results/report/sections/filter_{run}.md",
        hist=report(
            "results/report/sections/filter_{run}_nn_hist.png",
            caption="../workflow/report/filter_nn.rst",
            category="Synthetic images",
            labels=synthetic_labels(
                "memorization: nearest fine-tune image", run="{run}"
            ),
        ),
        pairs=report(
            "results/report/sections/filter_{run}_pairs.png",
            caption="../workflow/report/filter_pairs.rst",
            category="Synthetic images",
            labels=synthetic_labels("memorization: closest pairs", run="{run}"),
        ),
        semantic_pairs=report(
            "results/report/sections/filter_{run}_semantic_pairs.png",
            caption="../workflow/report/filter_semantic_pairs.rst",
            category="Synthetic images",
            labels=synthetic_labels(
                "memorization: semantic closest pairs", run="{run}"
            ),
        ),
        sheets=filter_sheets(),
    log:
        "results/logs/filter/{run}.log",
    benchmark:
        "results/benchmarks/filter/{run}.tsv"
    # torch env: the semantic audit's dinov2 / clip / tiny embeddings
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        # a hub model embeds the images for the semantic audit: on the GPU
        gpu=(
            1
            if config["filter"]["memorization"]["semantic"]["features"]
            in ("dinov2", "clip")
            else 0
        ),
    params:
        cfg=config["filter"],
        quality=config["quality"],
        feature_model=semantic_feature_model(),
        code=code_of("filter.py"),
    script:
        "../workflow/scripts/filter.py"
