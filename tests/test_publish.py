"""make publish: what goes where, and a clear stop before any network call when something is missing."""

from pathlib import Path

import pytest
import yaml

from dermsynth import publish
from dermsynth.config import SCHEMA, validate
from dermsynth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(repo_id="someone/derm-lora"):
    cfg = validate(yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()), SCHEMA)
    cfg["publish"]["repo_id"] = repo_id
    return cfg


def _results(tmp_path, run):
    for f in (f"lora/{run}/README.md", f"synthetic/{run}/DATASHEET.md", f"synthetic/{run}/metadata.jsonl"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    return tmp_path


def test_plan_names_the_model_and_dataset_repos(tmp_path):
    cfg = _cfg()
    run = cfg["finetune"]["run"]
    steps = publish.plan(cfg, _results(tmp_path, run))
    assert [(s["repo_id"], s["repo_type"]) for s in steps] == [
        ("someone/derm-lora", "model"),
        ("someone/derm-lora-synthetic", "dataset"),
    ]
    assert (
        steps[0]["folder"] == tmp_path / "lora" / run and steps[1]["folder"] == tmp_path / "synthetic" / run
    )


def test_nothing_is_attempted_without_repo_outputs_or_token(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="publish.repo_id"):
        publish.plan(_cfg(None), tmp_path)
    with pytest.raises(ConfigError, match="DATASHEET.md is missing|README.md is missing"):
        publish.plan(_cfg(), tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    monkeypatch.setattr("huggingface_hub.HfApi", lambda **k: pytest.fail("no Hub call without a token"))
    cfg = _cfg()
    with pytest.raises(ConfigError, match="no Hugging Face token"):
        publish.publish(cfg, _results(tmp_path, cfg["finetune"]["run"]))


def test_dry_run_lists_the_uploads(tmp_path, capsys):
    cfg = _cfg()
    results = _results(tmp_path, cfg["finetune"]["run"])
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {**yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()), "publish": {"repo_id": "a/b"}}
        )
    )
    publish.main(["--config", str(config), "--results", str(results), "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model a/b <- ") and out[1].startswith("dataset a/b-synthetic <- ")
