rule tiny_model:
    """Tiny random-weight models with the real architectures, built offline from configs (demo)."""
    output:
        directory("results/models/tiny-{kind}"),
    log:
        "results/logs/tiny_model/{kind}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        seed=config["seed"],
        image_size=tiny_image_size,
        code=code_of("tiny_model.py"),
    script:
        "../workflow/scripts/tiny_model.py"
