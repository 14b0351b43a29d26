rule generate:
    """One class with one sampler: seeded, batched Stable Diffusion + LoRA generation."""
    input:
        lora="results/lora/{run}/pytorch_lora_weights.safetensors",
        model=model_input("sd"),
    output:
        "results/synthetic/{run}/{label}/{sampler}/manifest.csv",
    log:
        "results/logs/generate/{run}/{label}_{sampler}.log",
    benchmark:
        "results/benchmarks/generate/{run}/{label}_{sampler}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        pretrained=model_ref("sd"),
        cfg=generation_params,
        n_images=generation_count,
    script:
        "../workflow/scripts/generate.py"


rule generate_all:
    input:
        generation_manifests(),
