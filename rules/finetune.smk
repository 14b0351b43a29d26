rule finetune:
    """DreamBooth-LoRA fine-tuning of Stable Diffusion on the fine-tune split (resumable)."""
    input:
        images="results/splits/finetune.csv",
        model=model_input("sd"),
    output:
        lora="results/lora/{run}/pytorch_lora_weights.safetensors",
        loss=report(
            "results/lora/{run}/loss.png",
            caption="../workflow/report/loss.rst",
            category="Fine-tune",
        ),
        loss_csv="results/lora/{run}/loss.csv",
        summary="results/lora/{run}/train_summary.json",
    log:
        "results/logs/finetune/{run}.log",
    benchmark:
        "results/benchmarks/finetune/{run}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        pretrained=model_ref("sd"),
        cfg=config["finetune"],
        # undeclared on purpose: Snakemake deletes a failed job's outputs, not this folder
        checkpoint_dir="results/lora/{run}.ckpt",
    script:
        "../workflow/scripts/finetune.py"


rule finetune_all:
    input:
        f"results/lora/{RUN}/pytorch_lora_weights.safetensors",
