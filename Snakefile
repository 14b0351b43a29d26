# dermsynth: synthetic dermoscopy with DreamBooth-LoRA Stable Diffusion (Derm-T2IM), end to end.
#   snakemake --cores 8 --resources gpu=1                                   # the paper's setup
#   snakemake --cores 8 --resources gpu=1 --configfile config/demo.yaml     # offline tiny demo
from snakemake.utils import min_version

min_version("9.0")


# A --configfile replaces the paper config instead of being merged into it, so a demo or test
# config can drop samplers, datasets or models.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/split.smk"
include: "rules/finetune.smk"
include: "rules/generate.smk"
include: "rules/filter.smk"
include: "rules/datasheet.smk"
include: "rules/hybrid.smk"
include: "rules/classify.smk"
include: "rules/evaluate.smk"
include: "rules/quality.smk"
include: "rules/segment.smk"
include: "rules/detect.smk"
include: "rules/report.smk"


report: "workflow/report/workflow.rst"


onstart:
    preflight_check()


rule all:
    default_target: True
    input:
        final_targets(),
