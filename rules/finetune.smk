rule finetune:
    """DreamBooth-LoRA fine-tuning of Stable Diffusion on the fine-tune split (resumable)."""
    input:
        images="results/splits/finetune.csv",
        model=model_input("sd"),
    output:
        lora=lora_outputs(),
        kohya=kohya_outputs(),
        cards=card_outputs(),
        loss=report(
            "results/lora/{run}/loss.png",
            caption="../workflow/report/loss.rst",
            category="Fine-tune",
            labels={"figure": "training loss", "run": "{run}"},
        ),
        loss_csv="results/lora/{run}/loss.csv",
        summary="results/lora/{run}/train_summary.json",
        validation=report(
            "results/lora/{run}/validation_grid.png",
            caption="../workflow/report/validation.rst",
            category="Fine-tune",
            labels={"figure": "validation images", "run": "{run}"},
        ),
    log:
        "results/logs/finetune/{run}.log",
    benchmark:
        "results/benchmarks/finetune/{run}.tsv"
    wildcard_constraints:
        run=r"[^/]+",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        pretrained=sd_model_ref,
        cfg=config["finetune"],
        # undeclared on purpose: Snakemake deletes a failed job's outputs, not this folder
        checkpoint_dir="results/lora/{run}.ckpt",
        # more than one GPU: the script re-launches the training through `accelerate launch`
        gpus=finetune_gpus,
        code=code_of("finetune.py"),
    script:
        "../workflow/scripts/finetune.py"


rule finetune_all:
    input:
        lora_outputs(RUN),
        kohya_outputs(RUN),
        card_outputs(RUN),
