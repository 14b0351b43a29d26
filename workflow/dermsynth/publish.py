"""Publish the run's LoRA (with its model card) and the synthetic set (with its datasheet) to the Hub.

Not a rule and never run by tests: ``make publish`` calls it after a finished run. It needs
``publish.repo_id`` in the config and a Hugging Face token (``HF_TOKEN`` or ``hf auth login``);
without either it stops with one line before touching the network. The LoRA goes to the model repo
``<repo_id>``, the kept and rejected images with ``metadata.jsonl`` and ``DATASHEET.md`` to the dataset
repo ``<repo_id>-synthetic``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .config import SCHEMA, validate
from .errors import ConfigError


def plan(cfg: dict, results: Path = Path("results")) -> list[dict]:
    """What would be uploaded: one entry per repo (repo_id, repo_type, folder, files)."""
    repo = (cfg.get("publish") or {}).get("repo_id")
    if not repo:
        raise ConfigError("config key 'publish.repo_id' is not set: name the Hub repo to publish to")
    run = cfg["finetune"]["run"]
    lora, synthetic = results / "lora" / run, results / "synthetic" / run
    for need in (lora / "README.md", synthetic / "DATASHEET.md", synthetic / "metadata.jsonl"):
        if not need.is_file():
            raise ConfigError(f"{need} is missing: run the workflow to the end first")
    return [
        {"repo_id": repo, "repo_type": "model", "folder": lora, "ignore": ["validation/*", "*.csv"]},
        {"repo_id": f"{repo}-synthetic", "repo_type": "dataset", "folder": synthetic, "ignore": ["*.csv"]},
    ]


def publish(cfg: dict, results: Path = Path("results"), token: str | None = None) -> list[str]:
    from huggingface_hub import HfApi, get_token

    steps = plan(cfg, results)
    token = token or get_token()
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` first")
    api, private = HfApi(token=token), bool(cfg["publish"]["private"])
    urls = []
    for s in steps:
        api.create_repo(s["repo_id"], repo_type=s["repo_type"], private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=s["repo_id"],
            repo_type=s["repo_type"],
            folder_path=str(s["folder"]),
            ignore_patterns=s["ignore"],
            commit_message=f"dermsynth run {cfg['finetune']['run']}",
        )
        urls.append(str(info.commit_url))
    return urls


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--results", default="results")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    a = p.parse_args(argv)
    cfg = validate(yaml.safe_load(Path(a.config).read_text()), SCHEMA)
    try:
        if a.dry_run:
            for s in plan(cfg, Path(a.results)):
                print(f"{s['repo_type']} {s['repo_id']} <- {s['folder']} (without {', '.join(s['ignore'])})")
            return
        for url in publish(cfg, Path(a.results)):
            print(url)
    except ConfigError as e:
        raise SystemExit(f"dermsynth publish: {e}") from None


if __name__ == "__main__":
    main()
