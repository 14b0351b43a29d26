# Generation in shards: one GPU job per class x sampler x shard of generate.shard_size images, so a
# cluster runs many at once, a killed job loses one shard at most, and a rerun makes only missing ones.
# Each shard applies the filter's per-image checks and replaces rejected images with new seeds (up to
# generate.max_rounds rounds), so images_per_class counts images that pass them.


localrules:
    generate_merge,
    generate_report,


rule generate:
    """One shard of one class with one sampler: seeded, batched Stable Diffusion + LoRA generation,
    topped up until its images pass the filter's per-image checks."""
    input:
        unpack(generation_model),
    output:
        "results/synthetic/{run}/{label}/{sampler}/{shard}/manifest.csv",
    log:
        "results/logs/generate/{run}/{label}_{sampler}_{shard}.log",
    benchmark:
        "results/benchmarks/generate/{run}/{label}_{sampler}_{shard}.tsv"
    wildcard_constraints:
        run=r"[^/]+",
        shard=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        pretrained=sd_model_ref,
        cfg=generation_params,
        grid=generation_grid,
        shard=generation_count,
        checks=generation_checks,
        code=code_of("generate.py"),
    script:
        "../workflow/scripts/generate.py"


rule generate_merge:
    """One manifest per class x sampler from its shards (checks every image index and round is there once)."""
    input:
        generation_shard_manifests,
    output:
        "results/synthetic/{run}/{label}/{sampler}/manifest.csv",
    log:
        "results/logs/generate/{run}/{label}_{sampler}_merge.log",
    wildcard_constraints:
        run=r"[^/]+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        block_size=generation_block_size,
        code=code_of("generate_merge.py"),
    script:
        "../workflow/scripts/generate_merge.py"


rule generate_report:
    """The split (class x sampler x modifier counts) and contact sheets for the report (Figs. 5-6)."""
    input:
        generation_manifests(),
    output:
        **generation_sheet_outputs(),
        md="results/report/sections/generate.md",
        split=f"results/synthetic/{RUN}/split.csv",
    log:
        "results/logs/generate/report.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        sheets=generation_sheets(),
        code=code_of("generate_report.py"),
    script:
        "../workflow/scripts/generate_report.py"


rule generate_all:
    input:
        generation_manifests(),
