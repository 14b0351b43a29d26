"""The paper's own config, shrunk (tests/configs/paper-small.yaml), end to end on real images.

The first tests check the derivation: the committed YAML is the output of tests/configs/paper_small.py,
and it carries every key and switch of config/config.yaml. The e2e tests run the whole DAG on a copy of
the workflow, with the dataset folders rebased onto ../shared/data.
"""

import copy
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermsynth.artifacts import REASONS, artifact_reasons, thresholds
from dermsynth.config import validate
from dermsynth.io import load_rgb
from dermsynth.regimes import regime_names

sys.path.insert(0, str(Path(__file__).resolve().parent / "configs"))
import paper_small  # noqa: E402
from _paper import TABLE_IV  # noqa: E402
from test_workflow import copy_workflow, smk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
CONFIG = "config/paper-small.yaml"

PAPER_TABLE_IV = TABLE_IV


def paper_config() -> dict:
    return yaml.safe_load(paper_small.PAPER.read_text())


def validated(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    validate(cfg, SCHEMA)
    return cfg


def leaves(cfg, prefix: str = "") -> dict[str, object]:
    """Dotted path -> value of every leaf (lists are values: a list of samplers or seeds is a switch)."""
    if not isinstance(cfg, dict) or not cfg:
        return {prefix: cfg}
    out = {}
    for k, v in cfg.items():
        out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------------------------ the derivation


def test_committed_yaml_is_the_functions_output():
    want = paper_small.render(paper_small.derive(paper_config()))
    assert paper_small.OUT.read_text() == want, "stale: run `python tests/configs/paper_small.py`"


def test_every_key_and_switch_of_the_paper_config_is_carried():
    paper_raw = paper_config()
    small_raw = yaml.safe_load(paper_small.OUT.read_text())
    # the leaves each override sets: an override that replaced a whole section would hide its keys
    changed = {p for path, v in paper_small.overrides(paper_raw).items() for p in leaves(v, path)}
    ours_raw = leaves(small_raw)
    for path in leaves(paper_raw):
        if not under(path, paper_small.DROPPED):
            assert path in ours_raw, f"{path} of config/config.yaml is missing from paper-small.yaml"
    # values compared once the schema filled its defaults: what the run actually uses
    theirs, ours = leaves(validated(paper_raw)), leaves(validated(small_raw))
    for path, value in theirs.items():
        if not under(path, paper_small.DROPPED) and path not in changed:
            assert ours.get(path) == value, f"{path}: paper {value!r}, paper-small {ours.get(path)!r}"
    # nothing but the named overrides is new
    extra = [p for p in ours if p not in theirs and p not in changed]
    assert not extra, extra


def test_overrides_only_swap_models_and_data_shrink_sizes_or_relax_with_a_reason():
    paper = paper_config()
    defaults = validated(paper)
    shrunk = {**paper_small.SHRINK, **paper_small.sampler_steps(paper)}
    for path, value in shrunk.items():
        before = leaves(defaults)[path]
        if isinstance(value, list) and len(value) != len(before):  # a list of points: keep some of them
            assert set(value) < set(before), f"{path}: {value} is not a subset of {before}"
            continue
        pairs = zip(*(v if isinstance(v, list) else [v] for v in (value, before)), strict=True)
        for a, b in pairs:
            assert not isinstance(a, bool) and isinstance(a, int | float), path
            assert a <= b, f"{path}: {a} is not a shrink of {b}"
    for path, value in paper_small.MODELS.items():
        assert value in ("tiny", None) or value.startswith("results/models/tiny-"), path
    for path, (_, reason) in paper_small.RELAX.items():
        assert path.startswith("filter.") and len(reason) > 20, path
    # a relaxed check still runs: its switch stays as the paper sets it
    small = validated(paper_small.derive(paper))
    for check, spec in small["filter"].items():
        if isinstance(spec, dict) and "activate" in spec:
            assert spec["activate"] == defaults["filter"][check]["activate"], check


def test_no_model_hub_id_is_left():
    hub_id = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    local = ("results/", paper_small.DATA_ROOT + "/", "/", ".")
    small = validated(paper_small.derive(paper_config()))  # schema defaults too (e.g. segment.sam_model)
    found = {
        p: v
        for p, v in leaves(small).items()
        if isinstance(v, str) and hub_id.match(v) and not v.startswith(local)
    }
    assert not found, f"hub ids left (map them to a tiny model in paper_small.MODELS): {found}"


def test_data_root_rebases_only_the_dataset_folders(tmp_path):
    small = yaml.safe_load(paper_small.OUT.read_text())
    moved = paper_small.with_data_root(small, str(tmp_path))
    for name, (sub, _) in paper_small.DATA.items():
        assert moved["datasets"][name]["folder"]["path"] == f"{tmp_path}/{sub}"
    diff = {p for p, v in leaves(moved).items() if leaves(small)[p] != v}
    assert diff == {f"datasets.{n}.folder.path" for n in paper_small.DATA}


# -------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    """The whole paper-small DAG on a copy of the workflow: (working directory, config)."""
    wd = copy_workflow(tmp_path_factory.mktemp("paper_small"))
    cfg = paper_small.with_data_root(yaml.safe_load(paper_small.OUT.read_text()), str(shared_data))
    (wd / CONFIG).write_text(paper_small.render(cfg))
    t0 = time.perf_counter()
    out = smk(wd, "--cores", "2", "--resources", "gpu=1", "--configfile", CONFIG, timeout=1800)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-6000:]
    print(f"paper-small DAG wall time: {wall:.0f} s")
    return wd, validated(cfg)


@pytest.mark.e2e
def test_table4_has_the_papers_numbers_on_the_right_rows_and_three_seeds(run):
    wd, cfg = run
    table = pd.read_csv(wd / "results" / "report" / "table4.csv")
    ours = table[table["n_seeds"] > 0]
    cells = {(r.model, r.regime, r.testset) for r in ours.itertuples()}
    assert cells == {
        (m, r, t)
        for m in cfg["classify"]["models"]
        for r in regime_names(cfg["hybrid"])  # the paper's regimes and the ratio sweep's
        for t in cfg["split"]["test_datasets"]
    }
    assert len(cfg["classify"]["seeds"]) == 3 and (ours["n_seeds"] == 3).all()
    want = " ".join(map(str, sorted(cfg["classify"]["seeds"])))
    assert (ours["seeds"].astype(str) == want).all()
    assert ours["accuracy_mean"].between(0, 100).all() and (ours["accuracy_sd"] >= 0).all()
    for (model, regime, testset), acc in PAPER_TABLE_IV.items():
        row = table[(table.model == model) & (table.regime == regime) & (table.testset == testset)]
        assert len(row) == 1, (model, regime, testset)
        assert row["paper_accuracy"].iloc[0] == pytest.approx(acc), (model, regime, testset)


@pytest.mark.e2e
def test_real_images_went_through_import_dullrazor_and_resize(run, shared_data):
    wd, cfg = run
    labels = pd.read_csv(shared_data / "labels.csv")
    size = cfg["preprocess"]["resize"]
    for name, (_, per_class) in paper_small.DATA.items():
        truth = labels[labels.dataset == name].set_index("source_id")["label"]
        data = wd / "results" / "data" / name
        raw = pd.read_csv(data / "raw" / "manifest.csv")
        rejected = pd.read_csv(data / "raw" / "rejected.csv")
        want = {c: min(per_class, int((truth == c).sum())) for c in cfg["classes"]}
        assert raw["label"].value_counts().to_dict() == want, name
        # the label each source gave (class folders; HAM10000 dx through label_map) is the true one
        assert (raw["label"].to_numpy() == truth.loc[raw["source_id"]].to_numpy()).all(), name
        assert len(raw) + (rejected["reason"] == "not_selected").sum() == len(truth), name
        clean = pd.read_csv(data / "clean" / "manifest.csv")
        assert sorted(clean["source_id"]) == sorted(raw["source_id"]), name
        assert clean["hair_fraction"].between(0, 1).all()
        # DullRazor ran at the imported resolution (full-size JPEGs), before any resize
        for r in clean.head(3).itertuples():
            src = raw.set_index("source_id").loc[r.source_id]
            with Image.open(wd / r.path) as im, Image.open(wd / r.mask_path) as mask:
                assert im.size == mask.size == (src.width, src.height) and max(im.size) >= 450
        for purpose, side in (("sd", size["diffusion"]), ("cls", size["classifier"])):
            resized = pd.read_csv(data / f"{purpose}{side}" / "manifest.csv")
            assert sorted(resized["source_id"]) == sorted(raw["source_id"]), (name, purpose)
            for p in resized["path"].head(3):
                with Image.open(wd / p) as im:
                    assert im.size == (side, side)


@pytest.mark.e2e
def test_every_stage_adds_its_report_section(run, shared_data):
    wd, cfg = run
    report = wd / "results" / "report"
    summary = (report / "summary.md").read_text()
    run_name = cfg["finetune"]["run"]
    sections = ["data.md", "generate.md", f"filter_{run_name}.md", f"quality_{run_name}.md", "segment.md"]
    for name in sections:
        text = (report / "sections" / name).read_text()
        heading = next(line for line in text.splitlines() if line.startswith("#"))
        assert heading.lstrip("#").strip() in summary, name
    assert "Table IV" in summary
    quality = pd.read_csv(wd / "results" / "quality" / run_name / "table.csv")
    assert len(quality) >= len(cfg["classes"]) * len(cfg["generate"]["samplers"])
    labels = pd.read_csv(shared_data / "labels.csv")
    ham = labels[labels.dataset == "ham10000"]["label"].value_counts()
    for method in cfg["segment"]["methods"]:
        masks = pd.read_csv(wd / "results" / "masks" / method / "real" / "ham10000" / "masks.csv")
        assert len(masks) == sum(min(paper_small.DATA["ham10000"][1], n) for n in ham), method


@pytest.mark.e2e
def test_the_filter_ran_every_check_the_paper_runs(run):
    wd, cfg = run
    run_name = cfg["finetune"]["run"]
    syn = wd / "results" / "synthetic" / run_name
    section = (wd / "results" / "report" / "sections" / f"filter_{run_name}.md").read_text()
    states = dict(re.findall(r"^\| (\w+) \| \d+ \| (.+?) \|$", section, flags=re.M))
    assert set(states) == set(REASONS) and set(states.values()) == {"on"}, states
    kept = pd.read_csv(syn / "filtered.csv")
    rejected = pd.read_csv(syn / "rejected.csv")
    generated = sum(len(pd.read_csv(m)) for m in syn.glob("*/*/manifest.csv"))
    assert generated >= cfg["generate"]["images_per_class"] * len(cfg["classes"])
    assert len(kept) + len(rejected) == generated and len(kept) > 0
    # the run's verdicts agree with every check recomputed at the run's thresholds
    thr = thresholds(cfg["filter"])
    for p in kept["path"]:
        assert artifact_reasons(np.asarray(load_rgb(wd / p)), thr) == [], p
    for r in rejected.itertuples():
        if r.reason in ("memorized", "duplicate"):
            continue
        assert r.reason in [x[0] for x in artifact_reasons(np.asarray(load_rgb(wd / r.path)), thr)], r.path
    nearest = pd.read_csv(syn / "nearest.csv")
    assert len(nearest) == generated and nearest["similarity"].notna().all()  # the memorization audit
