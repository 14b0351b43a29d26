rule dullrazor:
    """DullRazor hair removal: black-hat, threshold, inpaint; masks kept for audit."""
    input:
        "results/data/{dataset}/raw/manifest.csv",
    output:
        "results/data/{dataset}/clean/manifest.csv",
    log:
        "results/logs/dullrazor/{dataset}.log",
    benchmark:
        "results/benchmarks/dullrazor/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    params:
        cfg=config["preprocess"]["dullrazor"],
        code=code_of("dullrazor.py"),
    script:
        "../workflow/scripts/dullrazor.py"


rule resize:
    """Square images at the diffusion and the classifier resolution."""
    input:
        "results/data/{dataset}/clean/manifest.csv",
    output:
        "results/data/{dataset}/{purpose}{size}/manifest.csv",
    log:
        "results/logs/resize/{dataset}_{purpose}{size}.log",
    wildcard_constraints:
        purpose="sd|cls",
        size=r"\d+",
    conda:
        "../envs/data.yaml"
    threads: 1
    params:
        policy=config["preprocess"]["resize"]["policy"],
        code=code_of("resize.py"),
    script:
        "../workflow/scripts/resize.py"


rule dullrazor_section:
    """Report fragment: the run's largest hair masks, before / mask / after."""
    input:
        raw=expand("results/data/{dataset}/raw/manifest.csv", dataset=DATASETS),
        clean=expand("results/data/{dataset}/clean/manifest.csv", dataset=DATASETS),
    output:
        section="results/report/sections/dullrazor.md",
        sheet=report(
            "results/report/sections/dullrazor_largest.png",
            caption="../workflow/report/dullrazor_largest.rst",
            category="Data",
            labels=data_labels("largest hair masks"),
        ),
    log:
        "results/logs/dullrazor/section.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    params:
        n=config["report"]["hair_examples"],
        code=code_of("dullrazor_section.py"),
    script:
        "../workflow/scripts/dullrazor_section.py"
