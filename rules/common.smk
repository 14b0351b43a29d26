# All Python of the workflow lives here: config validation, path helpers, input functions.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from dermsynth.config import sampler_counts, validate  # noqa: E402
from dermsynth.errors import ConfigError  # noqa: E402

try:
    validate(config, Path(workflow.basedir) / "config" / "schema.yaml")
except ConfigError as e:
    # one line, before any job: the key and the allowed values
    raise SystemExit(f"dermsynth config error: {e}")

CLASSES = config["classes"]
DATASETS = list(config["datasets"])
SAMPLERS = list(config["generate"]["samplers"])
MODELS = config["classify"]["models"]
REGIMES = config["hybrid"]["regimes"]
SEEDS = config["classify"]["seeds"]
TEST_SETS = config["split"]["test_datasets"]
RUN = config["finetune"]["run"]
SD_RES = config["preprocess"]["resize"]["diffusion"]
CLS_RES = config["preprocess"]["resize"]["classifier"]
TINY_PREFIX = "results/models/tiny-"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


wildcard_constraints:
    dataset="|".join(DATASETS),
    label="|".join(CLASSES),
    sampler="|".join(SAMPLERS),
    model="|".join(MODELS),
    regime="|".join(REGIMES),
    seed=r"\d+",
    testset="|".join(TEST_SETS),
    kind="sd|vit|mobilenet_v2",


def model_ref(name):
    return config["models"][name]


def model_input(name):
    """A tiny local model is built by a rule, so it is an input; a hub id is not."""
    ref = model_ref(name)
    return [ref] if ref.startswith(TINY_PREFIX) else []


def sd_manifest(dataset):
    return f"results/data/{dataset}/sd{SD_RES}/manifest.csv"


def cls_manifest(dataset):
    return f"results/data/{dataset}/cls{CLS_RES}/manifest.csv"


def generation_manifests(wildcards=None):
    return expand(
        "results/synthetic/{run}/{label}/{sampler}/manifest.csv",
        run=RUN,
        label=CLASSES,
        sampler=SAMPLERS,
    )


def generation_params(wildcards):
    """Only this sampler's settings (plus the shared ones): editing another sampler reruns nothing here."""
    g = {k: v for k, v in config["generate"].items() if k != "samplers"}
    g["samplers"] = {
        wildcards.sampler: config["generate"]["samplers"][wildcards.sampler]
    }
    return g


def generation_count(wildcards):
    return sampler_counts(config["generate"]["images_per_class"], SAMPLERS)[
        wildcards.sampler
    ]


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
    return ["results/report/summary.md"]


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


def tiny_image_size(wildcards):
    return SD_RES if wildcards.kind == "sd" else CLS_RES


# Markdown fragments that stages add to the report: a rule file registers its fragment with
# REPORT_SECTIONS.append(path); the report rule pastes them, in order, into summary.md.
REPORT_SECTIONS = []
