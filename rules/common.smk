# All Python of the workflow lives here: config validation, path helpers, input functions.
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from dermsynth.artifacts import REASONS as FILTER_REASONS  # noqa: E402
from dermsynth.codehash import code_hash  # noqa: E402
from dermsynth.config import TINY_PREFIX, sampler_counts, validate  # noqa: E402
from dermsynth.diffusion.pngs import grid_from_config, grid_samplers  # noqa: E402
from dermsynth.diffusion.plan import grid_size  # noqa: E402
from dermsynth.errors import ConfigError  # noqa: E402
from dermsynth import preflight  # noqa: E402
from dermsynth.regimes import regime_fraction, regime_names, sweep_points  # noqa: E402

try:
    validate(config, Path(workflow.basedir) / "config" / "schema.yaml")
    # generate.from_pngs: (class, sampler) -> the PNG rows generating that block; None: the config's grid
    PNG_GRID = grid_from_config(config)
except ConfigError as e:
    # one line, before any job: the key and the allowed values
    raise SystemExit(f"dermsynth config error: {e}")

CLASSES = config["classes"]
DATASETS = list(config["datasets"])
SAMPLERS = grid_samplers(PNG_GRID) if PNG_GRID else list(config["generate"]["samplers"])
# the generated (class, sampler) blocks: every pair, or the pairs the PNG grid has images for
BLOCKS = (
    list(PNG_GRID) if PNG_GRID else [(label, s) for label in CLASSES for s in SAMPLERS]
)
MODELS = config["classify"]["models"]
REGIMES = regime_names(config["hybrid"])  # hybrid.regimes + the ratio sweep
SEEDS = config["classify"]["seeds"]
TEST_SETS = config["split"]["test_datasets"]
RUN = config["finetune"]["run"]
SD_RES = config["preprocess"]["resize"]["diffusion"]
CLS_RES = config["preprocess"]["resize"]["classifier"]
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


@functools.cache
def code_of(script):
    """Hash of the dermsynth modules that workflow/scripts/<script> imports, transitively, as a param.

    Snakemake tracks a script, not the library it imports. With this param, editing a module reruns
    exactly the rules whose scripts reach it, and what follows them (see dermsynth.codehash).
    """
    return code_hash(SCRIPTS / script, SCRIPTS.parent)


wildcard_constraints:
    dataset="|".join(DATASETS),
    label="|".join(CLASSES),
    sampler="|".join(SAMPLERS),
    model="|".join(MODELS),
    regime="|".join(REGIMES),
    seed=r"\d+",
    testset="|".join(TEST_SETS),
    kind="sd|vit|mobilenet_v2|sam|dinov2|clip|yolos",


def preflight_check():
    """Before the first job of a real run (onstart: never for -n, nor inside a job): every model
    the jobs about to run load is found, or Snakemake stops with one line per missing one.
    """
    if workflow.touch or not preflight.enabled(config["preflight"]):
        return  # --touch only marks outputs as up to date: nothing is loaded
    jobs = [(job.rule.name, job.wildcards_dict) for job in workflow.dag.needrun_jobs()]
    # with conda, containers or modules the jobs' Python is not this one: check models only
    modules = not workflow.deployment_settings.deployment_method
    missing = preflight.check(config, jobs, tiny_prefix=TINY_PREFIX, modules=modules)
    if missing:
        raise SystemExit(preflight.report(missing))


def model_ref(name):
    return config["models"][name]


def sd_model_ref(wildcards):
    """The Stable Diffusion model (a hub id or a local folder) as a param: a function, so a local
    folder that is also the rule's input is not a hard-coded path prefix (snakemake --lint).
    """
    return model_ref("sd")


def model_input(name):
    """A tiny local model is built by a rule, so it is an input; a hub id is not."""
    ref = model_ref(name)
    return [ref] if ref.startswith(TINY_PREFIX) else []


def sd_manifest(dataset):
    return f"results/data/{dataset}/sd{SD_RES}/manifest.csv"


def cls_manifest(dataset):
    return f"results/data/{dataset}/cls{CLS_RES}/manifest.csv"


def block_paths(pattern, **wildcards):
    """``pattern`` for every generated (class, sampler) block, the other wildcards expanded as by
    expand (outermost first), the blocks innermost."""
    return [
        path.replace("{label}", label).replace("{sampler}", sampler)
        for path in expand(pattern, allow_missing=True, **wildcards)
        for label, sampler in BLOCKS
    ]


def generation_manifests(wildcards=None):
    """One manifest per class x sampler, each merged from that block's shards (rules/generate.smk)."""
    return block_paths(
        "results/synthetic/{run}/{label}/{sampler}/manifest.csv", run=RUN
    )


#: keys of the generate section the PNG grid replaces (and the folder's path: its rows are the param)
FROM_PNGS_KEYS = ("from_pngs", "from_pngs_seeds", "from_pngs_samplers")
PNG_REPLACED = FROM_PNGS_KEYS + (
    "samplers",
    "prompt",
    "class_prompts",
    "modifiers",
    "negative_prompt",
    "guidance_scale",
)


def generation_params(wildcards):
    """Only this sampler's settings (plus the shared ones): editing another sampler reruns nothing here."""
    # shard_size only shapes the job list (paths and generation_count), never an image
    skip = ("shard_size",) + (
        PNG_REPLACED if PNG_GRID else FROM_PNGS_KEYS + ("samplers",)
    )
    g = {k: v for k, v in config["generate"].items() if k not in skip}
    if not PNG_GRID:
        g["samplers"] = {
            wildcards.sampler: config["generate"]["samplers"][wildcards.sampler]
        }
    return g


def generation_grid(wildcards):
    """The PNG rows of this class x sampler block (generate.from_pngs), or None."""
    return PNG_GRID[(wildcards.label, wildcards.sampler)] if PNG_GRID else None


def generation_checks(wildcards):
    """The filter's per-image checks, applied by each shard to top up rejected images: the set-level
    ones (duplicates, memorization) stay the filter's, so editing them reruns no generation.
    """
    return {
        k: v
        for k, v in config["filter"].items()
        if k not in ("duplicates", "memorization")
    }


def block_size(label, sampler):
    """Images of one class x sampler that pass the per-image checks: the class's count split exactly
    across samplers, or over its PNGs (generate.from_pngs)."""
    if PNG_GRID:
        return grid_size(PNG_GRID[(label, sampler)])
    return sampler_counts(config["generate"]["images_per_class"], SAMPLERS)[sampler]


def generation_block_size(wildcards):
    return block_size(wildcards.label, wildcards.sampler)


def generation_count(wildcards):
    """This shard's images: indices first_index .. first_index + n_images - 1 of its block."""
    block = generation_block_size(wildcards)
    first = int(wildcards.shard) * config["generate"]["shard_size"]
    n = min(config["generate"]["shard_size"], block - first)
    return {"first_index": first, "n_images": n, "block_size": block}


def generation_shards(label, sampler):
    """Shard names ("000", "001", ...) of one class x sampler block."""
    size = config["generate"]["shard_size"]
    n = block_size(label, sampler)
    return [f"{k:03d}" for k in range(-(-n // size))]


def generation_shard_manifests(wildcards):
    return expand(
        "results/synthetic/{run}/{label}/{sampler}/{shard}/manifest.csv",
        run=wildcards.run,
        label=wildcards.label,
        sampler=wildcards.sampler,
        shard=generation_shards(wildcards.label, wildcards.sampler),
    )


def lora_file_of(run, label):
    """The LoRA that generates ``label`` images: the run's shared one, or that class's own."""
    if config["finetune"].get("lora_mode", "shared") == "per_class":
        return f"results/lora/{run}/{label}/pytorch_lora_weights.safetensors"
    return f"results/lora/{run}/pytorch_lora_weights.safetensors"


def lora_outputs(run="{run}"):
    """The finetune rule's LoRA file(s): one per run, or one per class with lora_mode per_class."""
    return list(dict.fromkeys(lora_file_of(run, label) for label in CLASSES))


def card_outputs(run="{run}"):
    """The model card (README.md) beside each of the run's LoRA files."""
    return [str(Path(f).parent / "README.md") for f in lora_outputs(run)]


def kohya_outputs(run="{run}"):
    """The kohya/web-UI copies of the run's LoRA(s) (finetune.export), each beside its diffusers file."""
    if "kohya" not in config["finetune"]["export"]:
        return []
    if config["finetune"]["lora_mode"] == "per_class":
        return [
            f"results/lora/{run}/{label}/{run}_{label}_kohya.safetensors"
            for label in CLASSES
        ]
    return [f"results/lora/{run}/{run}_kohya.safetensors"]


def generation_model(wildcards):
    """Inputs naming the weights: base model (+ LoRA), or a merged single-file checkpoint."""
    merged = config["generate"].get("checkpoint")
    if merged:
        return {"model": model_input("sd"), "merged": [merged]}
    return {
        "model": model_input("sd"),
        "lora": [lora_file_of(wildcards.run, wildcards.label)],
    }


def generation_sheets():
    return {label: f"results/report/sections/generate_{label}.png" for label in CLASSES}


def filter_sheets():
    """The filter's contact sheet of each rejection reason, in the report's section folder."""
    return expand(
        "results/report/sections/filter_{{run}}_{reason}.png", reason=FILTER_REASONS
    )


def eval_jsons():
    return expand(
        "results/eval/{model}/{regime}/{seed}/{testset}.json",
        model=MODELS,
        regime=REGIMES,
        seed=SEEDS,
        testset=TEST_SETS,
    )


def histories():
    return expand(
        "results/classifiers/{model}/{regime}/{seed}/history.csv",
        model=MODELS,
        regime=REGIMES,
        seed=SEEDS,
    )


def final_targets():
    return [
        "results/report/summary.md",
        f"results/synthetic/{RUN}/DATASHEET.md",
        f"results/synthetic/{RUN}/metadata.jsonl",
    ]


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def classifier_model_input(wildcards):
    return model_input(wildcards.model)


def classifier_model_ref(wildcards):
    return model_ref(wildcards.model)


def classifier_params():
    """The training recipe without the job lists: adding a seed or a model reruns no finished job."""
    return {k: v for k, v in config["classify"].items() if k not in ("models", "seeds")}


def regime_synthetic_input(wildcards):
    """The real-only baseline does not depend on synthetic images: regenerating them leaves it alone."""
    if wildcards.regime == "real":
        return []
    return [f"results/synthetic/{RUN}/filtered.csv"]


def regime_fraction_param(wildcards):
    """Only this regime's fraction: editing hybrid.synthetic_fraction leaves real and sweep sets alone."""
    return regime_fraction(wildcards.regime, config["hybrid"])


def hybrid_train_sets():
    """Every regime's training list: the report states the synthetic share each actually reached."""
    return expand("results/hybrid/{regime}/train.csv", regime=REGIMES)


def realism_jsons():
    """The realism check needs the real-only classifiers: none without the real regime."""
    if "real" not in REGIMES:
        return []
    return expand("results/realism/{model}/{seed}.json", model=MODELS, seed=SEEDS)


def tiny_image_size(wildcards):
    return SD_RES if wildcards.kind == "sd" else CLS_RES


def finetune_gpus(wildcards, resources):
    """GPUs given to the finetune job: more than one re-launches it through `accelerate launch`."""
    return resources.gpu


# Input functions of the quality stage (synthetic-vs-real distribution metrics).


def quality_real_train():
    return expand(
        "results/splits/{dataset}/train.csv", dataset=config["split"]["train_datasets"]
    )


QUALITY_KINDS = preflight.quality_kinds(config["quality"])


def quality_feature_model_dir():
    """The real-only classifier whose penultimate features the `domain` extractor uses."""
    if "domain" not in QUALITY_KINDS:
        return None
    name = config["quality"]["domain_model"] or MODELS[0]
    return f"results/classifiers/{name}/real/{SEEDS[0]}/model"


def quality_embedding_models():
    """models.dinov2 / models.clip of the extractors the quality jobs use (kind -> hub id or folder)."""
    return {k: model_ref(k) for k in ("dinov2", "clip") if k in QUALITY_KINDS}


def quality_feature_model():
    """The domain classifier and any tiny DINOv2/CLIP built by the tiny_model rule: inputs."""
    path = quality_feature_model_dir()
    tiny = [r for r in quality_embedding_models().values() if r.startswith(TINY_PREFIX)]
    return ([path] if path else []) + tiny


def semantic_feature_model():
    """models.dinov2 / models.clip when the semantic memorization audit embeds with it, else None."""
    kind = config["filter"]["memorization"]["semantic"]["features"]
    return model_ref(kind) if kind in ("dinov2", "clip") else None


def semantic_feature_model_input(wildcards):
    """That model as an input when the tiny_model rule builds it (demo-style configs)."""
    ref = semantic_feature_model()
    return [ref] if ref and ref.startswith(TINY_PREFIX) else []


def quality_jsons(wildcards):
    return block_paths(
        "results/quality/{run}/{label}/{sampler}.json", run=wildcards.run
    )


# Input functions of the segment stage (lesion masks, shape statistics).
SEGMENT_METHODS = config["segment"]["methods"]


wildcard_constraints:
    method="classical|sam",


def segment_real_manifest(wildcards):
    return sd_manifest(wildcards.dataset)


def segment_model_input(wildcards):
    """A tiny SAM is built by the tiny_model rule, so it is an input; a hub id is not."""
    ref = config["segment"]["sam_model"]
    if wildcards.method == "sam" and ref.startswith(TINY_PREFIX):
        return [ref]
    return []


def segment_gpu(wildcards):
    return 1 if wildcards.method == "sam" else 0


def segment_params(wildcards):
    return config["segment"]


def segment_tables():
    real = expand(
        "results/masks/{method}/real/{dataset}/masks.csv",
        method=SEGMENT_METHODS,
        dataset=DATASETS,
    )
    synthetic = block_paths(
        "results/masks/{method}/{run}/{label}/{sampler}/masks.csv",
        method=SEGMENT_METHODS,
        run=RUN,
    )
    return real + synthetic


# the method whose masks measure the prompt modifiers (segment.transformations)
SEGMENT_MAIN = "classical" if "classical" in SEGMENT_METHODS else SEGMENT_METHODS[0]


def transformation_tables():
    """The masks tables of the method that measures the smart transformations: real and synthetic."""
    real = expand(
        "results/masks/{method}/real/{dataset}/masks.csv",
        method=SEGMENT_MAIN,
        dataset=DATASETS,
    )
    synthetic = expand(
        "results/masks/{method}/{run}/{label}/{sampler}/masks.csv",
        method=SEGMENT_MAIN,
        run=RUN,
        label=CLASSES,
        sampler=SAMPLERS,
    )
    return real + synthetic


# The report. Markdown fragments that stages add to it, in the order the report rule pastes them into
# summary.md (each is the output of the rule named beside it).
REPORT_SECTIONS = [
    "results/report/sections/data.md",  # data_report
    "results/report/sections/dullrazor.md",  # dullrazor_section
    "results/report/sections/generate.md",  # generate_report
    f"results/report/sections/filter_{RUN}.md",  # filter
    f"results/report/sections/quality_{RUN}.md",  # quality_section
    "results/report/sections/segment.md",  # segment_section
    "results/report/sections/transformations.md",  # transformations_section
    "results/report/sections/subgroups.md",  # subgroups_section
]
SWEEP = sweep_points(config["hybrid"])


# labels= of the report() items: Snakemake's HTML report lists a category's results by their labels
# instead of file names, "figure" first. No other label may take exactly two values that each mark
# half of a category's results: the HTML report turns such a label into a toggle, which here would
# hide half of the figures.
def data_labels(figure):
    return {"figure": figure, "dataset": ", ".join(DATASETS)}


def synthetic_labels(figure, label=None, run=RUN):
    """A figure of synthetic images: of one class (``label``) or all; ``run`` may be "{run}"."""
    return {
        "figure": figure,
        "run": run,
        "class": label or ", ".join(CLASSES),
        "sampler": ", ".join(SAMPLERS),
    }


def segment_labels(figure):
    return {**synthetic_labels(figure), "method": ", ".join(SEGMENT_METHODS)}


def classifier_labels(figure, regime=None, test_set=None):
    """A result of the classifiers: every model, the regimes and the test sets it covers."""
    return {
        "figure": figure,
        "model": ", ".join(MODELS),
        "regime": regime or ", ".join(REGIMES),
        "test set": test_set or ", ".join(TEST_SETS),
    }


def generation_sheet_outputs():
    """The generation contact sheet of each class as its own report item, labelled by class."""
    return {
        f"sheet_{label}": report(
            path,
            caption="../workflow/report/generate.rst",
            category="Synthetic images",
            labels=synthetic_labels("generated images", label=label),
        )
        for label, path in generation_sheets().items()
    }


def sweep_outputs():
    """The ratio sweep's outputs, only when it runs (a declared output must always be written)."""
    if not SWEEP:
        return {}
    return {
        "sweep": report(
            "results/report/sweep.png",
            caption="../workflow/report/sweep.rst",
            category="Ratio sweep",
            labels=classifier_labels(
                "accuracy vs synthetic share",
                regime=", ".join(regime for _, regime in SWEEP),
            ),
        ),
        "sweep_csv": "results/report/sweep.csv",
    }


def realism_outputs():
    """The realism check's table, only when its real-only classifiers are trained."""
    if not realism_jsons():
        return {}
    return {
        "realism": report(
            "results/report/realism.csv",
            caption="../workflow/report/realism.rst",
            category="Synthetic images",
            labels=synthetic_labels("realism check: real-only classifiers on them"),
        )
    }


# Input functions of the detect stage (the paper's detection check, Fig. 12).
DETECT = config["detect"]


def detect_sd_manifests():
    """The images the training masks were drawn on: the diffusion-size real train datasets."""
    return [sd_manifest(ds) for ds in config["split"]["train_datasets"]]


def detect_mask_tables():
    return expand(
        "results/masks/{method}/real/{dataset}/masks.csv",
        method=DETECT["mask_method"],
        dataset=config["split"]["train_datasets"],
    )


def detector_model_ref(wildcards):
    return model_ref("detector")


def detect_params(*skip):
    """The detect section without ``skip`` and the switch: editing the report's sheet size or the
    synthetic sample retrains no detector."""
    return {k: v for k, v in DETECT.items() if k not in ("activate", *skip)}


if DETECT["activate"]:
    REPORT_SECTIONS.append(f"results/report/sections/detect_{RUN}.md")  # detect_section
