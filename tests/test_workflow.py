"""The whole demo DAG end to end, what reruns after a change, and the paper DAG as a dry run."""

import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermsynth.regimes import regime_names

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
COPY = ["Snakefile", "rules", "config", "workflow", "envs"]


def copy_workflow(dst: Path) -> Path:
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def smk(wd: Path, *args, timeout=900):
    return subprocess.run([SNAKEMAKE, *args], cwd=wd, capture_output=True, text=True, timeout=timeout)


def planned_jobs(wd: Path, configfile: str, *args: str) -> dict[str, int]:
    """Rule -> job count of a dry run ({} when nothing is to be done)."""
    out = smk(wd, "-n", "--quiet", "rules", "--configfile", configfile, *args, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    if "Job stats" not in text:
        return {}
    block = text.split("Job stats:")[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def variant(wd: Path, name: str, change) -> str:
    cfg = yaml.safe_load((wd / "config" / "demo.yaml").read_text())
    change(cfg)
    # keep the key order: Snakemake compares params by their text, and a reordered dict reads as changed
    (wd / "config" / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f"config/{name}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("demo"))
    t0 = time.perf_counter()
    out = smk(wd, "--cores", "2", "--resources", "gpu=1", "--configfile", "config/demo.yaml", timeout=1200)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-6000:]
    print(f"demo DAG wall time: {wall:.0f} s")
    return wd


pytestmark = pytest.mark.e2e


def test_report_table4_has_every_cell_with_paper_numbers(demo):
    cfg = yaml.safe_load((demo / "config" / "demo.yaml").read_text())
    table = pd.read_csv(demo / "results" / "report" / "table4.csv")
    cells = {(r.model, r.regime, r.testset) for r in table.itertuples()}
    expected = {
        (m, r, t)
        for m in cfg["classify"]["models"]
        for r in regime_names(cfg["hybrid"])  # the paper's regimes and the ratio sweep's
        for t in cfg["split"]["test_datasets"]
    }
    assert cells == expected
    acc = table["accuracy_mean"].to_numpy()
    assert np.all((acc >= 0) & (acc <= 100))
    paper = table.set_index(["model", "regime", "testset"])["paper_accuracy"]
    assert paper[("vit", "real", "isic")] == pytest.approx(90.74)
    assert paper[("mobilenet_v2", "real", "isic")] == pytest.approx(78.89)
    summary = (demo / "results" / "report" / "summary.md").read_text()
    assert "Table IV" in summary


def test_datasheet_model_card_and_metadata_match_the_run(demo):
    run = demo / "results" / "synthetic" / "demo"
    kept = pd.read_csv(run / "filtered.csv")
    rejected = pd.read_csv(run / "rejected.csv")
    rows = [json.loads(line) for line in (run / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == len(kept) + len(rejected)
    by_path = kept.set_index("path")
    for r in rows:
        path = f"results/synthetic/demo/{r['file_name']}"
        if r["verdict"] == "kept":
            assert by_path.loc[path, "sha256"] == r["sha256"] and by_path.loc[path, "seed"] == r["seed"]
    sheet = (run / "DATASHEET.md").read_text()
    assert f"{len(rows)} images on disk, {len(kept)} kept" in sheet
    finetune = pd.read_csv(demo / "results" / "splits" / "finetune.csv", keep_default_na=False)
    assert set(finetune["license"]) == {"CC0-1.0"}  # the demo renderer's images
    assert f"| isic | CC0-1.0 | {len(finetune)} |" in sheet
    lora = demo / "results" / "lora" / "demo"
    card = (lora / "README.md").read_text()
    assert f"`{sha256_of(lora / 'pytorch_lora_weights.safetensors')}`" in card
    assert set(kept["lora_sha256"]) == {sha256_of(lora / "pytorch_lora_weights.safetensors")}
    summary_md = (demo / "results" / "report" / "summary.md").read_text()
    page = (demo / "results" / "report" / "summary.html").read_text()
    for heading in re.findall(r"^#{1,3} (.+)$", summary_md, flags=re.M):
        assert html.escape(heading.strip(), quote=False) in page, heading


def sha256_of(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_eval_json_agrees_with_its_predictions(demo):
    for path in (demo / "results" / "eval").rglob("*.json"):
        ev = json.loads(path.read_text())
        pred = pd.read_csv(path.with_name(path.stem + "_predictions.csv"))
        assert ev["n"] == len(pred) > 0
        acc = ev["metrics"]["accuracy"]
        assert acc["value"] == pytest.approx((pred["y"] == pred["pred"]).mean())
        assert acc["lo"] <= acc["value"] <= acc["hi"]


def test_hybrid_regime_is_mostly_synthetic_and_trains_a_different_model(demo):
    from safetensors.numpy import load_file

    real = pd.read_csv(demo / "results" / "hybrid" / "real" / "train.csv")
    hybrid = pd.read_csv(demo / "results" / "hybrid" / "hybrid" / "train.csv")
    assert (real["origin"] == "real").all()
    frac = (hybrid["origin"] == "synthetic").mean()
    assert 0.6 <= frac <= 0.8
    for model in ("vit", "mobilenet_v2"):
        a = load_file(demo / f"results/classifiers/{model}/real/0/model/model.safetensors")
        b = load_file(demo / f"results/classifiers/{model}/hybrid/0/model/model.safetensors")
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        assert diff > 1e-4, f"{model}: hybrid and real models are identical"


def test_samplers_give_different_images_for_the_same_seed_index(demo):
    syn = demo / "results" / "synthetic" / "demo" / "malignant"
    first = {}
    for sampler in ("euler", "euler_a", "plms"):
        m = pd.read_csv(syn / sampler / "manifest.csv")
        assert (m["sampler"] == sampler).all()
        first[sampler] = np.asarray(Image.open(demo / m["path"].iloc[0]), dtype=np.float32)
    assert np.abs(first["euler"] - first["euler_a"]).mean() > 1.0
    assert np.abs(first["euler"] - first["plms"]).mean() > 1.0


def test_manifest_row_regenerates_its_image(demo, monkeypatch):
    from dermsynth.diffusion.sample import regenerate

    monkeypatch.chdir(demo)
    m = pd.read_csv("results/synthetic/demo/benign/euler/manifest.csv")
    row = m.iloc[1]
    img = regenerate(
        row,
        "results/models/tiny-sd",
        "results/lora/demo/pytorch_lora_weights.safetensors",
        device="cpu",
        threads=2,
    )
    stored = np.asarray(Image.open(row["path"]), dtype=np.float32)
    assert np.abs(np.asarray(img, dtype=np.float32) - stored).mean() <= 1.0


def test_dullrazor_improves_hairy_demo_images(demo):
    clean = pd.read_csv(demo / "results" / "data" / "isic" / "clean" / "manifest.csv")
    hairy = clean[clean["has_hair"].astype(bool)]
    assert len(hairy) > 0
    assert (hairy["psnr_after"] > hairy["psnr_before"]).mean() >= 0.8
    assert (hairy["psnr_after"] - hairy["psnr_before"]).mean() >= 3.0  # dB, the target


def test_nothing_reruns_when_nothing_changed(demo):
    assert planned_jobs(demo, "config/demo.yaml") == {}


def test_classifier_param_reruns_only_training_evaluation_report(demo):
    cfg = variant(demo, "epochs.yaml", lambda c: c["classify"].update(epochs=c["classify"]["epochs"] + 1))
    jobs = planned_jobs(demo, cfg)
    # realism scores the real-only classifiers on the synthetic images: it is evaluation too
    # and the subgroup tables, which read every evaluation
    assert set(jobs) == {"train_classifier", "evaluate", "realism", "subgroups_section", "report", "all"}
    c = yaml.safe_load((demo / "config" / "demo.yaml").read_text())
    n = len(c["classify"]["models"]) * len(regime_names(c["hybrid"])) * len(c["classify"]["seeds"])
    assert jobs["train_classifier"] == n and jobs["evaluate"] == n * len(c["split"]["test_datasets"])
    assert jobs["realism"] == len(c["classify"]["models"]) * len(c["classify"]["seeds"])


def test_sampler_steps_rerun_only_that_sampler_and_what_follows(demo):
    cfg = variant(demo, "steps.yaml", lambda c: c["generate"]["samplers"]["euler"].update(steps=13))
    jobs = planned_jobs(demo, cfg)
    assert jobs["generate"] == 2  # benign + malignant with euler, not the other samplers
    assert "finetune" not in jobs and "download" not in jobs and "split" not in jobs
    # the real-only baseline does not use synthetic images: it stays; every other regime reruns
    c = yaml.safe_load((demo / "config" / "demo.yaml").read_text())
    synthetic = [r for r in regime_names(c["hybrid"]) if r != "real"]
    assert len(synthetic) >= 2 and jobs["hybrid"] == len(synthetic)  # hybrid and the sweep's
    assert jobs["train_classifier"] == len(synthetic) * len(c["classify"]["models"]) * len(
        c["classify"]["seeds"]
    )


@contextlib.contextmanager
def edited(path: Path):
    """Yields a function that rewrites ``path``; the text and mtime come back afterwards.

    Snakemake reruns a script rule when the script's mtime is newer than the outputs, so restoring the
    text alone would leave the finished run dirty for the tests after this one.
    """
    original, stat = path.read_text(), path.stat()
    try:
        yield path.write_text
    finally:
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_a_stage_script_reruns_that_stage_onward(demo):
    script = demo / "workflow" / "scripts" / "filter.py"
    with edited(script) as write:
        original = script.read_text()
        write(original.replace('with logs.stage("filter"):', 'with logs.stage("filter"):  # edited'))
        jobs = planned_jobs(demo, "config/demo.yaml")
    assert jobs.get("filter") == 1
    assert {"generate", "finetune", "download", "dullrazor"}.isdisjoint(jobs)
    assert jobs.get("report") == 1
    assert planned_jobs(demo, "config/demo.yaml") == {}  # restored: nothing left to do


def test_editing_a_library_module_reruns_the_rules_that_import_it_onward(demo):
    module = demo / "workflow" / "dermsynth" / "filter.py"  # filter_stage, rule filter's code
    with edited(module) as write:
        original = module.read_text()
        write(original + "\n# a comment changes no output\n")
        comment_only = planned_jobs(demo, "config/demo.yaml")
        write(original + "\n_EDITED = True\n")
        jobs = planned_jobs(demo, "config/demo.yaml")
    assert comment_only == {}
    # filter.py is reached only by the filter's script: what reruns is the filter
    # and everything downstream of it, exactly as if the filter were forced
    assert jobs.get("filter") == 1
    assert jobs == planned_jobs(demo, "config/demo.yaml", "--forcerun", "filter")
    upstream = {"download", "dullrazor", "resize", "split", "tiny_model", "finetune", "generate"}
    assert upstream.isdisjoint(jobs)
    assert {"hybrid", "train_classifier", "report"} <= set(jobs)
    assert planned_jobs(demo, "config/demo.yaml") == {}


def test_paper_config_dry_run_builds_the_whole_dag(tmp_path):
    wd = copy_workflow(tmp_path)
    out = smk(wd, "-n", "--quiet", "rules", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = planned_jobs(wd, "config/config.yaml")
    for stage in (
        "download",
        "dullrazor",
        "resize",
        "split",
        "finetune",
        "generate",
        "filter",
        "hybrid",
        "train_classifier",
        "evaluate",
        "report",
    ):
        assert jobs.get(stage, 0) >= 1, stage
    # 2 classes x 3 samplers x shards; 2 models x (2 regimes + the sweep's 3) x 3 seeds; x 2 test sets
    assert jobs["generate"] >= 6 and jobs["train_classifier"] == 30 and jobs["evaluate"] == 60
    assert "tiny_model" not in jobs  # the paper config names hub models


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/demo.yaml"])
def test_lint_is_clean_and_gpu_rules_ask_for_a_gpu(configfile):
    # both configs: the demo's local tiny models are inputs too, which the lint checks params against
    out = smk(ROOT, "--lint", "--configfile", configfile, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    text = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    for rule in ("finetune", "generate", "train_classifier", "train_detector", "detect_synthetic"):
        body = text.split(f"rule {rule}:")[1].split("\nrule ")[0]
        assert re.search(r"resources:\s*\n\s*gpu=1", body), rule


def test_per_class_loras_each_generate_their_own_class(tmp_path):
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    cfg["finetune"]["lora_mode"] = "per_class"
    (wd / "config" / "per_class.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = smk(wd, "-n", "--configfile", "config/per_class.yaml", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    blocks = re.split(r"\n(?=\[|rule )", out.stdout + out.stderr)
    run, classes = cfg["finetune"]["run"], cfg["classes"]
    loras = {lb: f"results/lora/{run}/{lb}/pytorch_lora_weights.safetensors" for lb in classes}
    (finetune,) = [b for b in blocks if b.startswith("rule finetune:")]
    assert all(f in finetune for f in loras.values())
    # their web-UI copies (finetune.export: kohya, the default) are declared outputs too
    assert all(f"results/lora/{run}/{lb}/{run}_{lb}_kohya.safetensors" in finetune for lb in classes)
    generate = [b for b in blocks if b.startswith("rule generate:")]
    assert len(generate) >= 2 * len(classes)
    for b in generate:
        label = re.search(r"label=(\w+)", b).group(1)
        inputs = re.search(r"input: (.*)", b).group(1)
        assert loras[label] in inputs
        assert not any(f in inputs for lb, f in loras.items() if lb != label)
