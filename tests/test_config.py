"""Config validation: defaults filled, and every violation is one line naming the key."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dermsynth.config import sampler_counts, validate
from dermsynth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"


def load(name):
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_validate(name):
    cfg = validate(load(name), SCHEMA)
    assert cfg["classes"] == ["benign", "malignant"]
    assert set(cfg["generate"]["samplers"]) >= {"euler", "euler_a", "plms"}


def test_paper_defaults_are_table_ii():
    cfg = validate(load("config.yaml"), SCHEMA)
    ft = cfg["finetune"]
    assert (ft["train_batch_size"], ft["num_train_epochs"], ft["optimizer"]) == (2, 120, "adamw8bit")
    assert (ft["learning_rate"], ft["lr_min"], ft["lora_learning_rate"]) == (2e-6, 1e-6, 1e-4)
    assert (ft["mixed_precision"], ft["lr_scheduler"], ft["resolution"]) == (
        "fp16",
        "constant_with_warmup",
        512,
    )


def test_defaults_fill_missing_sections():
    cfg = validate({"datasets": {"isic": {"source": "demo"}}, "split": {"test_datasets": ["isic"]}}, SCHEMA)
    assert cfg["finetune"]["rank"] == 4
    assert cfg["datasets"]["isic"]["demo"]["n_per_class"] == 40
    assert cfg["hybrid"]["synthetic_fraction"] == 0.75


@pytest.mark.parametrize(
    "mutate, key, allowed",
    [
        (lambda c: c["generate"]["samplers"].update(euler_x={"steps": 3}), "generate.samplers", "euler_a"),
        (lambda c: c["generate"].update(images_per_class=-2), "generate.images_per_class", "minimum"),
        (lambda c: c["datasets"]["isic"].update(source="web"), "datasets.isic.source", "folder"),
        (lambda c: c["datasets"]["isic"].pop("source"), "datasets.isic.source", "missing"),
        (lambda c: c["finetune"].update(lr=1), "finetune.lr", "learning_rate"),
        (lambda c: c["classify"].update(models=["resnet"]), "classify.models.0", "mobilenet_v2"),
        (lambda c: c["split"].update(test_datasets=["nope"]), "split.test_datasets", "ham10000"),
        (lambda c: c["finetune"].update(export=["kohya"]), "finetune.export", "must include 'diffusers'"),
    ],
)
def test_bad_values_give_one_line_with_key_and_allowed(mutate, key, allowed):
    cfg = copy.deepcopy(load("demo.yaml"))
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"'{key}'" in msg
    assert allowed in msg


def test_sampler_counts_split_exactly():
    counts = sampler_counts(3001, ["euler", "euler_a", "plms"])
    assert sum(counts.values()) == 3001
    assert max(counts.values()) - min(counts.values()) <= 1


def test_snakemake_stops_before_any_job(tmp_path):
    cfg = load("demo.yaml")
    cfg["generate"]["samplers"]["nosuch"] = {"steps": 5}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    snakemake = Path(sys.executable).with_name("snakemake")
    out = subprocess.run(
        [str(snakemake), "-n", "--configfile", str(bad), "-d", str(tmp_path / "wd")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "dermsynth config error" in ln]
    assert len(lines) == 1 and "generate.samplers" in lines[0] and "euler_a" in lines[0]
    assert not (tmp_path / "wd" / "results").exists()


def test_config_readme_documents_every_key():
    from dermsynth.config import document

    assert (ROOT / "config" / "README.md").read_text() == document(SCHEMA), (
        "config/README.md is stale: python -m dermsynth.config config/schema.yaml > config/README.md"
    )


def test_section_fills_schema_defaults_and_names_the_key():
    from dermsynth.config import section

    full = validate(load("config.yaml"), SCHEMA)
    overrides = {"rank": 8}
    ft = section("finetune", overrides)
    assert overrides == {"rank": 8}  # the caller's dict is not modified
    assert ft["rank"] == 8 and ft["alpha"] == full["finetune"]["alpha"]
    for name in ("filter", "generate", "classify", "quality", "segment"):
        assert section(name).keys() <= full[name].keys()
    with pytest.raises(ConfigError, match="config key 'finetune.rank'"):
        section("finetune", {"rank": "four"})
    with pytest.raises(ConfigError, match="config section 'nope'"):
        section("nope")


def test_section_fills_defaults_into_each_place_of_a_shared_override():
    from dermsynth.config import section

    off = {"activate": False}  # one dict for two checks: each gets its own defaults
    f = section("filter", {"cast": off, "blur": off})
    assert f["cast"]["max_chroma"] == section("filter")["cast"]["max_chroma"]
    assert set(f["blur"]) == {"activate", "min_sharpness"} and off == {"activate": False}


def test_no_module_restates_the_schema_defaults():
    """Defaults live in config/schema.yaml only; modules read config.section(name, cfg)."""
    import ast

    package = ROOT / "workflow" / "dermsynth"
    found = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            named = [t.id for t in targets if isinstance(t, ast.Name)]
            value = getattr(node, "value", None)
            if any(n.upper().endswith("DEFAULTS") for n in named) and isinstance(value, ast.Dict):
                found.add(path.relative_to(package).as_posix())
    assert not found, f"module-level *DEFAULTS dicts restate the schema in {sorted(found)}"
