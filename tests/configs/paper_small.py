"""tests/configs/paper-small.yaml: the paper's config/config.yaml, small enough for a 2-core CI run.

Regenerate it after any edit of config/config.yaml (a test fails while it is stale), from the repo root:

    python tests/configs/paper_small.py

Run it like the paper's config, with ../shared/data (the real test images) beside the repository:

    snakemake --cores 8 --resources gpu=1 --configfile tests/configs/paper-small.yaml

:func:`derive` deep-copies the paper config and overrides the named paths below, nothing else, so every
key and switch the paper sets (3 seeds, every filter check, lora_mode, samplers, modifiers, dullrazor,
the quality and segment stages, and keys added later) carries over as the paper sets it. It only

- swaps hub ids for the tiny random-weight models the tiny_model rule builds (:data:`MODELS`);
- swaps each isic-cli download for a seeded per-class sample of the real images in ../shared/data
  (folder import; :data:`DATA`): ISIC from isic/<class>/, HAM10000 from ham10000/ with its metadata.csv;
- shrinks counts, sizes, epochs and steps (:data:`SHRINK`; every value is at most the paper's, and a
  list of points, like the ratio sweep, keeps some of the paper's);
- relaxes the filter checks that a random-weight model's images cannot pass (:data:`RELAX`, each with
  its reason); the checks stay on.

The data paths are relative to the working directory (the repo root). tests/test_paper_small.py runs a
copy of the workflow elsewhere and rebases them with :func:`with_data_root`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PAPER = ROOT / "config" / "config.yaml"
OUT = HERE / "paper-small.yaml"
DATA_ROOT = "../shared/data"

#: hub id -> tiny local model built offline by the tiny_model rule (as config/demo.yaml does)
MODELS = {
    "models.sd": "results/models/tiny-sd",
    "models.vit": "results/models/tiny-vit",
    "models.mobilenet_v2": "results/models/tiny-mobilenet_v2",
    "models.dinov2": "results/models/tiny-dinov2",
    "models.clip": "results/models/tiny-clip",
    "segment.sam_model": "results/models/tiny-sam",
    "models.detector": "results/models/tiny-yolos",
    "quality.features": "tiny",  # inception needs the torch-fidelity weights download
    # DINOv2 is a hub model; the tiny extractor takes the same code path (quality.load_extractor)
    "filter.memorization.semantic.features": "tiny",
    # the tiny SD is not the web UI's v1-5-pruned-emaonly: its PNGs must not claim to be
    "generate.webui_model": None,
    "generate.webui_model_hash": None,
}

#: dataset -> (folder under the data root, images per class). ISIC: 24 per class (of 100), so the
#: train split keeps >= 14 per class for the quality stage's real-vs-real halves (quality.min_images);
#: HAM10000 (test only): 12 per class (of 20 malignant, 104 benign).
DATA = {"isic": ("isic", 24), "ham10000": ("ham10000", 12)}

#: the isic-cli settings of a swapped dataset: unused by the folder source, so dropped
DROPPED = [f"datasets.{name}.isic" for name in DATA]

#: counts, sizes, epochs and steps; a [min, max] sampler step range stays a range
SAMPLER_STEPS = 4
SAMPLER_STEP_RANGE = [3, 5]
SHRINK = {
    "preprocess.resize.diffusion": 64,
    "preprocess.resize.classifier": 64,
    "finetune.resolution": 64,
    "finetune.num_train_epochs": 2,
    "finetune.checkpointing_steps": 10,  # ~32 steps: checkpoints are written and pruned
    "finetune.validation_epochs": 1,  # validation runs mid-training, not only at the end
    "finetune.num_validation_images": 1,
    "finetune.validation_inference_steps": SAMPLER_STEPS,
    "generate.images_per_class": 60,  # 20 per sampler: two shards (12 + 8) of each class x sampler
    "generate.resolution": 64,
    "generate.batch_size": 8,  # a shard takes two pipeline calls, the second one short
    "generate.shard_size": 12,
    "classify.image_size": 64,
    "filter.memorization.semantic.image_size": 64,
    "classify.epochs": 2,
    "classify.batch_size": 8,
    "evaluate.bootstrap": 200,
    "hybrid.sweep": [0, 0.5, 0.75],  # one extra regime of the paper's three: the code path, not the curve
    "evaluate.min_group_size": 5,  # 24 HAM10000 test images: groups of 5 show numbers, smaller ones not
    "quality.min_images": 7,  # nearest_k + 2, the least the k-NN metrics need; real halves are ~7
    "quality.kid_subsets": 10,
    "quality.max_pairs": 100,
    "quality.c2st.bootstrap": 200,
    "detect.image_size": 64,
    "detect.epochs": 2,
}

#: filter checks a tiny random-weight Stable Diffusion cannot pass: value and reason. The check runs
#: (activate stays as the paper sets it); only its threshold moves.
RELAX: dict[str, tuple[object, str]] = {
    # empty since the filter was calibrated on real dermoscopy: the random-weight model's grey-magenta
    # images (mean hue -2 to -25 degrees) lie inside the paper's cast range (-91.4 to 91.3)
}


def _get(cfg: dict, path: str):
    node = cfg
    for key in path.split("."):
        node = node[key]
    return node


def _set(cfg: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = copy.deepcopy(value)


def sampler_steps(paper: dict) -> dict[str, object]:
    """generate.samplers.<name>.steps for every sampler the paper runs, shrunk (ranges stay ranges)."""
    out = {}
    for name, spec in paper["generate"]["samplers"].items():
        steps = spec["steps"]
        out[f"generate.samplers.{name}.steps"] = (
            list(SAMPLER_STEP_RANGE) if isinstance(steps, list) else SAMPLER_STEPS
        )
    return out


def data_sources(paper: dict, data_root: str = DATA_ROOT) -> dict[str, object]:
    """datasets.<name>.source / .folder for every dataset of the paper config."""
    unknown = sorted(set(paper["datasets"]) - set(DATA))
    if unknown:
        raise SystemExit(f"paper_small: no local images for dataset(s) {unknown}: add them to DATA")
    out = {}
    for name, (sub, per_class) in DATA.items():
        out[f"datasets.{name}.source"] = "folder"
        out[f"datasets.{name}.folder"] = {"path": f"{data_root}/{sub}", "per_class": per_class}
    return out


def overrides(paper: dict, data_root: str = DATA_ROOT) -> dict[str, object]:
    """Every path :func:`derive` sets, with its value."""
    out = dict(MODELS)
    out.update(data_sources(paper, data_root))
    out.update(SHRINK)
    out.update(sampler_steps(paper))
    out.update({path: value for path, (value, _) in RELAX.items()})
    return out


def derive(paper: dict, data_root: str = DATA_ROOT) -> dict:
    """The paper config with only the overrides applied (a deep copy; ``paper`` is not changed)."""
    cfg = copy.deepcopy(paper)
    for path in DROPPED:
        *parents, last = path.split(".")
        _get(cfg, ".".join(parents)).pop(last, None)
    for path, value in overrides(paper, data_root).items():
        _set(cfg, path, value)
    return cfg


def with_data_root(cfg: dict, data_root: str) -> dict:
    """``cfg`` with the datasets' folder paths moved from :data:`DATA_ROOT` to ``data_root``."""
    cfg = copy.deepcopy(cfg)
    for spec in cfg["datasets"].values():
        folder = spec.get("folder") or {}
        if str(folder.get("path", "")).startswith(DATA_ROOT + "/"):
            folder["path"] = str(data_root) + folder["path"][len(DATA_ROOT) :]
    return cfg


HEADER = """\
# GENERATED from config/config.yaml by tests/configs/paper_small.py: do not edit; regenerate with
#   python tests/configs/paper_small.py
# The paper's config with tiny local models, a sample of the real images in ../shared/data, and
# smaller counts, sizes, epochs and steps; every switch as the paper sets it (see the module docstring).
"""


def render(cfg: dict) -> str:
    # keep the paper's key order: Snakemake compares params by their text
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, allow_unicode=True, width=110)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    text = render(derive(yaml.safe_load(PAPER.read_text())))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
