import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _paper import TABLE_IV
from PIL import Image

from dermsynth import evaluation, io, metrics, report
from dermsynth.report import figures, names, sections, stats, tables
from dermsynth.report.methods import methods_paragraph
from dermsynth.report.summary import write_provenance

# Derm-T2IM Table IV as the report's config takes it: model -> regime -> test set
PAPER: dict = {}
for (_model, _regime, _testset), _value in TABLE_IV.items():
    PAPER.setdefault(_model, {}).setdefault(_regime, {})[_testset] = _value
ROOT = Path(__file__).resolve().parents[1]
MODELS, REGIMES, SEEDS, TESTSETS = (
    ["vit", "mobilenet_v2"],
    ["real", "hybrid"],
    [0, 1, 2],
    ["isic", "ham10000"],
)


def _labels(testset):
    n = 120 if testset == "isic" else 80
    rng = np.random.default_rng(len(testset))
    return [f"{testset}/img_{i}.png" for i in range(n)], rng.integers(0, 2, n)


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """Eval JSONs + predictions CSVs as evaluation.evaluate writes them; hybrid models slightly better."""
    root = tmp_path_factory.mktemp("eval")
    jsons, truth, histories = [], {}, {}
    for model in MODELS:
        for regime in REGIMES:
            for seed in SEEDS:
                h = root / "hist" / model / regime / f"{seed}.csv"
                h.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(
                    {
                        "epoch": [1, 2, 3],
                        "train_loss": [0.7, 0.5, 0.4],
                        "val_loss": [0.68, 0.55, 0.57],
                        "val_accuracy": [0.6, 0.7, 0.69],
                        "val_auroc": [0.65, 0.75, 0.74],
                        "lr": [1e-4, 5e-5, 0.0],
                        "seconds": [1.0, 1.0, 1.0],
                    }
                ).to_csv(h, index=False)
                histories[f"{model}/{regime}/{seed}"] = str(h)
                for ts in TESTSETS:
                    paths, y = _labels(ts)
                    rng = np.random.default_rng(
                        [MODELS.index(model), REGIMES.index(regime), seed, TESTSETS.index(ts)]
                    )
                    sep = 0.25 if regime == "real" else 0.45
                    score = np.clip(0.5 + sep * (2 * y - 1) + rng.normal(0, 0.3, len(y)), 0, 1)
                    pred = metrics.predictions(score)
                    d = root / model / regime / str(seed)
                    d.mkdir(parents=True, exist_ok=True)
                    pcsv = d / f"{ts}.predictions.csv"
                    pd.DataFrame(
                        {
                            "path": paths,
                            "label": np.where(y == 1, "malignant", "benign"),
                            "y": y,
                            "score": score,
                            "pred": pred,
                        }
                    ).to_csv(pcsv, index=False)
                    summ = metrics.summarize(y, score, n_boot=100, seed=0)
                    doc = {
                        "model": model,
                        "regime": regime,
                        "seed": seed,
                        "testset": ts,
                        "n": len(y),
                        "n_per_class": {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())},
                        "metrics": summ,
                        "confusion": metrics.confusion(y, pred).tolist(),
                        "predictions": str(pcsv),
                        # as evaluation.evaluate adds them, the threshold from a validation split
                        "operating_points": evaluation.operating_points(
                            y,
                            score,
                            pd.DataFrame({"y": y[::2], "score": score[::-2]}),
                            (0.9, 0.95),
                            n_boot=20,
                        ),
                        "calibration": {
                            "ece": metrics.expected_calibration_error(y, score),
                            "brier": metrics.brier(y, score),
                            "bins": metrics.reliability(y, score),
                        },
                    }
                    io.write_json(d / f"{ts}.json", doc)
                    jsons.append(str(d / f"{ts}.json"))
                    truth[(model, regime, seed, ts)] = (summ, y, score)
    return jsons, truth, histories, root


def _extras(root):
    img = root / "img"
    rows, rej = [], []
    for k, (label, sampler) in enumerate(
        [(lb, s) for lb in ("benign", "malignant") for s in ("euler", "plms")] * 2
    ):
        p = img / f"s{k}.png"
        io.save_png(p, np.full((16, 16, 3), 40 * (k % 6), np.uint8))
        rows.append(
            {
                "path": str(p),
                "label": label,
                "dataset": "synthetic",
                "source_id": f"s{k}",
                "sha256": "x",
                "sampler": sampler,
            }
        )
    pd.DataFrame(rows).to_csv(root / "synthetic.csv", index=False)
    rej = [
        {
            "path": str(img / "gone.png"),
            "label": "benign",
            "sampler": "euler",
            "reason": "unreadable",
            "score": "",
        },
        {"path": rows[0]["path"], "label": "benign", "sampler": "plms", "reason": "black", "score": 0.97},
    ]
    pd.DataFrame(rej).to_csv(root / "rejected.csv", index=False)
    pd.DataFrame({"path": ["a", "b"], "psnr_before": [20.0, 22.0], "psnr_after": [30.0, 34.0]}).to_csv(
        root / "dullrazor.csv", index=False
    )
    (root / "leak.json").write_text(json.dumps({"overlap_lesions": 0, "checked": 200}))
    # the report reads the validated config: the paper's, with these settings
    cfg = _validated(
        "config.yaml",
        {
            "classes": ["benign", "malignant"],
            "finetune": {
                "rank": 4,
                "alpha": 4,
                "num_train_epochs": 120,
                "resolution": 512,
                "target_modules": ["to_q"],
            },
            "generate": {
                "samplers": {"euler": {"steps": 20}},
                "images_per_class": 3000,
                "guidance_scale": 7.0,
            },
            "models": {"vit": "google/vit"},
            "classify": {"models": ["vit"], "epochs": 10, "seeds": [0, 1, 2]},
            "evaluate": {"bootstrap": 1000, "ci": 0.95},
        },
    )
    return {
        "samples": str(root / "synthetic.csv"),
        "rejected": str(root / "rejected.csv"),
        "dullrazor": str(root / "dullrazor.csv"),
        "leakage": str(root / "leak.json"),
        "config": cfg,
        "versions": {"torch": "2.13.0", "dermsynth": "0.1.0"},
    }


def test_build_table4_matches_inputs(fabricated, tmp_path):
    jsons, truth, histories, root = fabricated
    out = report.build(
        jsons, tmp_path / "report", PAPER, histories=histories, extras=_extras(root), n_boot=200
    )
    for key in (
        "table4_csv",
        "table4_md",
        "paired_csv",
        "accuracy_png",
        "curves_png",
        "confusion_png",
        "roc_png",
        "summary_md",
        "samples_png",
        "rejected_png",
    ):
        assert (tmp_path / "report").joinpath(out[key].split("/")[-1]).exists(), key
    for key in ("accuracy_png", "curves_png", "confusion_png", "roc_png", "samples_png"):
        assert Image.open(out[key]).width > 100

    t4 = pd.read_csv(out["table4_csv"])
    assert len(t4) == len(MODELS) * len(REGIMES) * len(TESTSETS)
    md = (tmp_path / "report" / "table4.md").read_text()
    for model in MODELS:
        for regime in REGIMES:
            for ts in TESTSETS:
                accs = [100 * truth[(model, regime, s, ts)][0]["accuracy"]["value"] for s in SEEDS]
                row = t4[(t4["model"] == model) & (t4["regime"] == regime) & (t4["testset"] == ts)].iloc[0]
                assert row["accuracy_mean"] == pytest.approx(np.mean(accs))
                assert row["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
                assert row["ci_source"] == "pooled"
                assert row["accuracy_lo"] <= row["accuracy_mean"] <= row["accuracy_hi"]
                assert row["paper_accuracy"] == PAPER[model][regime][ts]
                assert row["diff_vs_paper"] == pytest.approx(np.mean(accs) - PAPER[model][regime][ts])
                aucs = [truth[(model, regime, s, ts)][0]["auroc"]["value"] for s in SEEDS]
                assert row["auroc_mean"] == pytest.approx(np.mean(aucs))
                cell = f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f} [{row['accuracy_lo']:.2f}, "
                assert cell in md
                assert f"{PAPER[model][regime][ts]:.2f}" in md

    pr = pd.read_csv(out["paired_csv"], dtype={"seed": str})
    assert len(pr) == len(MODELS) * len(TESTSETS) * (len(SEEDS) + 1) * 3  # each seed + the seed mean
    sel = (pr["model"] == "vit") & (pr["testset"] == "isic") & (pr["metric"] == "accuracy")
    r = pr[sel & (pr["seed"] == "1")].iloc[0]
    a = truth[("vit", "hybrid", 1, "isic")][0]["accuracy"]["value"]
    b = truth[("vit", "real", 1, "isic")][0]["accuracy"]["value"]
    assert r["diff"] == pytest.approx(100 * (a - b)) and r["hybrid"] == pytest.approx(100 * a)
    assert r["lo"] <= r["diff"] <= r["hi"] and 0 < r["p"] <= 1
    assert (pr[pr["metric"] == "auroc"]["diff"] > 0).mean() > 0.8  # hybrid was fabricated better
    mean_row = pr[sel & (pr["seed"] == "mean")].iloc[0]
    t4v = t4.set_index(["model", "regime", "testset"])
    assert mean_row["diff"] == pytest.approx(
        t4v.loc[("vit", "hybrid", "isic"), "accuracy_mean"]
        - t4v.loc[("vit", "real", "isic"), "accuracy_mean"]
    )
    assert mean_row["hi"] - mean_row["lo"] < r["hi"] - r["lo"]  # averaging seeds narrows the interval
    # Holm within each seed row's family (model × test set × metric), never below the raw p
    for _, fam in pr.groupby("seed"):
        assert fam["p_holm"].to_numpy() == pytest.approx(stats.holm(fam["p"]))
    assert (pr["p_holm"] >= pr["p"] - 1e-12).all()

    summary = (tmp_path / "report" / "summary.md").read_text()
    for text in (
        "Table IV",
        "paired bootstrap",
        "## Methods",
        "DreamBooth",
        "## Rejected synthetic images",
        "unreadable",
        "## Synthetic images",
        "psnr_after",
        "overlap_lesions",
        "2.13.0",
        "(curves.png)",
    ):
        assert text in summary, text


def test_build_minimal_and_single_seed(fabricated, tmp_path):
    jsons, truth, _, _ = fabricated
    one = [j for j in jsons if "/0/" in j and "vit" in j and "isic" in j]  # vit, real+hybrid, seed 0, isic
    out = report.build(one, tmp_path / "r", PAPER, n_boot=50)
    t4 = pd.read_csv(out["table4_csv"])
    ours = t4[t4["n_seeds"] > 0]
    assert len(ours) == 2 and ours["accuracy_sd"].isna().all()
    # paper cells without a run of ours are listed for comparison
    assert len(t4) == 8 and (t4["n_seeds"] == 0).sum() == 6
    md = (tmp_path / "r" / "table4.md").read_text()
    acc = 100 * truth[("vit", "real", 0, "isic")][0]["accuracy"]["value"]
    assert f"{acc:.2f} [" in md and "±" not in md.split("\n")[2]
    # one seed: the pooled CI is that seed's bootstrap CI (same resamples as metrics.summarize)
    ref = metrics.summarize(*truth[("vit", "real", 0, "isic")][1:], n_boot=50, seed=0)["accuracy"]
    row = ours[ours["regime"] == "real"].iloc[0]
    assert row["accuracy_lo"] == pytest.approx(100 * ref["lo"]) and row["accuracy_hi"] == pytest.approx(
        100 * ref["hi"]
    )
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "## Rejected" not in summary and "## Methods" not in summary
    assert "samples_png" not in out


def test_ci_falls_back_to_first_seed_without_predictions(fabricated, tmp_path):
    jsons, truth, _, _ = fabricated
    moved = []
    for j in [j for j in jsons if "mobilenet_v2/real" in j and j.endswith("isic.json")]:
        doc = json.loads(open(j).read())
        doc["predictions"] = str(tmp_path / "nowhere.csv")
        io.write_json(tmp_path / f"{len(moved)}.json", doc)
        moved.append(str(tmp_path / f"{len(moved)}.json"))
    out = report.build(moved, tmp_path / "r", PAPER, n_boot=50)
    t4 = pd.read_csv(out["table4_csv"])
    row = t4[t4["n_seeds"] > 0].iloc[0]
    assert (row["model"], row["regime"], row["n_seeds"], row["ci_source"]) == (
        "mobilenet_v2",
        "real",
        3,
        "seed 0",
    )
    assert row["accuracy_lo"] == pytest.approx(
        100 * truth[("mobilenet_v2", "real", 0, "isic")][0]["accuracy"]["lo"]
    )


def test_methods_paragraph_renders_the_validated_config():
    text = methods_paragraph(_validated("demo.yaml", {"finetune": {"rank": 4}, "classify": {"epochs": 3}}))
    assert "rank 4" in text and "up to 3 epochs" in text and "None" not in text
    assert "Stable Diffusion (results/models/tiny-sd) was fine-tuned" in text  # the model is named
    assert methods_paragraph({}) == ""


def test_null_metrics_and_one_class(tmp_path):
    pcsv = tmp_path / "p.csv"
    pd.DataFrame(
        {"path": ["a", "b"], "label": ["benign"] * 2, "y": [0, 0], "score": [0.2, 0.7], "pred": [0, 1]}
    ).to_csv(pcsv, index=False)
    m = metrics.summarize([0, 0], [0.2, 0.7], n_boot=20)
    m["auroc"] = {"value": None, "lo": None, "hi": None}
    doc = {
        "model": "vit",
        "regime": "real",
        "seed": 0,
        "testset": "isic",
        "n": 2,
        "metrics": m,
        "confusion": [[1, 1], [0, 0]],
        "predictions": str(pcsv),
        "n_per_class": {"benign": 2, "malignant": 0},
    }
    io.write_json(tmp_path / "e.json", doc)
    out = report.build([str(tmp_path / "e.json")], tmp_path / "r", {}, n_boot=20)
    t4 = pd.read_csv(out["table4_csv"])
    assert math.isnan(t4.loc[0, "auroc_mean"]) and t4.loc[0, "accuracy_mean"] == 50.0


def test_fmt_cell():
    assert tables.fmt_cell(80.123, 1.5, 77.0, 83.25) == "80.12 ± 1.50 [77.00, 83.25]"
    assert tables.fmt_cell(80.0, float("nan")) == "80.00"
    assert tables.fmt_cell(float("nan"), 1.0) == "—"


def test_sweep_realism_and_provenance_sections(fabricated, tmp_path):
    jsons, truth, _, root = fabricated
    vit = [j for j in jsons if "/vit/" in j]
    # realism JSONs as evaluation.realism_check writes them (groups = samplers)
    realism = []
    for seed, acc in ((0, 0.9), (1, 0.8)):
        doc = {
            "model": "vit",
            "seed": seed,
            "testset": "synthetic",
            "n": 40,
            "metrics": {
                "accuracy": {"value": acc, "lo": acc - 0.1, "hi": acc + 0.05},
                "sensitivity": {"value": 1.0, "lo": 1.0, "hi": 1.0},
                "specificity": {"value": None, "lo": None, "hi": None},
            },
            "groups": {"euler": {"n": 20, "accuracy": {"value": 1.0, "lo": 1.0, "hi": 1.0}}},
        }
        io.write_json(tmp_path / f"realism{seed}.json", doc)
        realism.append(str(tmp_path / f"realism{seed}.json"))
    out = report.build(
        vit,
        tmp_path / "r",
        PAPER,
        extras={"sweep": [(0.0, "real"), (0.75, "hybrid")], "realism": realism},
        n_boot=50,
    )
    sw = pd.read_csv(out["sweep_csv"])
    assert len(sw) == 2 * len(TESTSETS) and set(sw["fraction"]) == {0.0, 0.75}
    t4 = pd.read_csv(out["table4_csv"]).set_index(["model", "regime", "testset"])
    r = sw[(sw["testset"] == "isic") & (sw["fraction"] == 0.75)].iloc[0]
    for m in ("accuracy", "balanced_accuracy", "auroc"):
        for k in ("mean", "lo", "hi"):
            assert r[f"{m}_{k}"] == pytest.approx(t4.loc[("vit", "hybrid", "isic"), f"{m}_{k}"])
    assert Image.open(out["sweep_png"]).width > 100
    rl = pd.read_csv(out["realism_csv"], keep_default_na=False)
    whole = rl[rl["group"] == ""]
    assert sorted(whole["accuracy"].astype(float)) == pytest.approx([80.0, 90.0])
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "## Ratio sweep" in summary and "(sweep.png)" in summary
    bal = t4.loc[("vit", "hybrid", "isic")]
    cell = tables.fmt_cell(*(bal[f"balanced_accuracy_{k}"] for k in ("mean", "sd", "lo", "hi")))
    assert cell in summary.split("## Ratio sweep")[1].split("\n## ")[0]
    assert "## Realism check" in summary and "85.00 ± 7.07 [80.00, 95.00]" in summary  # seed 0's CI

    # provenance: config snapshot round-trips, wall times summed per rule from benchmark TSVs
    bench = tmp_path / "bench"
    for rel, s in (("train_classifier/vit_real_0.tsv", 12.5), ("train_classifier/vit_hybrid_0.tsv", 7.5)):
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{s}\t0:00:12\t512.0\t3.0\n")
    (bench / "finetune.tsv").write_text("")  # empty: skipped, not fatal
    cfg = {"classes": ["benign", "malignant"], "evaluate": {"bootstrap": 20, "ci": 0.95}, "seed": 7}
    written = {}
    text = write_provenance(cfg, bench, tmp_path / "cfg.yaml", tmp_path / "wt.csv", written)
    import yaml

    assert yaml.safe_load((tmp_path / "cfg.yaml").read_text()) == cfg
    wt = pd.read_csv(tmp_path / "wt.csv")
    assert len(wt) == 2 and wt["s"].sum() == pytest.approx(20.0)
    assert "| train_classifier | 2 | 20.0 | 10.0 | 12.5 | 512 |" in text


def test_leakage_counts_table(tmp_path):
    p = tmp_path / "leak.csv"
    pd.DataFrame(
        {
            "dataset_a": ["isic"] * 3,
            "source_id_a": ["a", "b", "c"],
            "dataset_b": ["ham10000"] * 3,
            "source_id_b": ["x", "y", "z"],
            "kind": ["sha256", "phash", "phash"],
            "action": ["grouped", "grouped", "dropped"],
            "hamming": [0, 3, 5],
        }
    ).to_csv(p, index=False)
    text = sections.section_leakage(str(p))
    assert "3 near-duplicate" in text and "| phash | 1 | 1 | 2 |" in text
    pd.DataFrame(columns=["kind", "action"]).to_csv(p, index=False)
    assert "0 near-duplicate" in sections.section_leakage(str(p))


def test_leakage_lists_embedding_pairs_best_first(tmp_path):
    p = tmp_path / "leak.csv"
    pd.DataFrame(
        {
            "dataset_a": ["ham"] * 3,
            "source_id_a": ["a", "b", "c"],
            "dataset_b": ["ham"] * 3,
            "source_id_b": ["x", "y", "z"],
            "kind": ["phash", "embedding", "embedding"],
            "action": ["grouped"] * 3,
            "hamming": [2, 20, 25],
            "similarity": ["", 31, 57],
        }
    ).to_csv(p, index=False)
    text = sections.section_leakage(str(p))
    assert "2 pairs matched by embedding similarity" in text
    assert text.index("| ham | c | ham | z | grouped | 57") < text.index("| ham | b | ham | y | grouped | 31")


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_finetune_section_has_one_column_per_class_lora(tmp_path):
    shared = {"n_images": 10, "it_s": 3.5, "peak_mem_gb": 2.7}
    text = sections.section_finetune(str(_write_json(tmp_path / "shared.json", shared)))
    assert "| value |" in text and "3.5" in text
    per_class = {
        "lora_mode": "per_class",
        "runs": {"benign": {"n_images": 6, "it_s": 3.0}, "malignant": {"n_images": 4, "it_s": 2.0}},
    }
    text = sections.section_finetune(str(_write_json(tmp_path / "per_class.json", per_class)))
    assert "LoRA benign" in text and "LoRA malignant" in text
    row = next(line for line in text.splitlines() if line.startswith("| n_images"))
    assert "6" in row and "4" in row
    # a CPU run has no GPU memory rows nor compile rows; a GPU run's failed compile is flagged
    assert "reserved" not in text and "compile" not in text
    per_class["runs"]["benign"].update(peak_mem_gb=1.0, peak_mem_with_validation_gb=1.0)  # CPU: one RSS
    text = sections.section_finetune(str(_write_json(tmp_path / "cpu.json", per_class)))
    assert "with_validation" not in text
    per_class["runs"]["malignant"].update(
        peak_mem_gb=2.0,
        peak_mem_with_validation_gb=2.2,
        peak_mem_reserved_gb=3.1,
        compile_mode=None,
        compile_error="RuntimeError: a lowering failed | x",
    )
    text = sections.section_finetune(str(_write_json(tmp_path / "gpu.json", per_class)))
    row = next(line for line in text.splitlines() if line.startswith("| compile_error"))
    assert row.endswith("| None | RuntimeError: a lowering failed \\| x |")
    assert "| peak_mem_reserved_gb | None | 3.1 |" in text and "compile_mode" not in text
    assert "| peak_mem_with_validation_gb | 1.0 | 2.2 |" in text
    assert "**torch.compile failed** (malignant): those LoRAs trained eager" in text
    # a LoRA whose CUDA graphs failed to record trained compiled without them: another warning
    per_class["runs"]["benign"].update(compile=True, compile_mode="default", compile_error="RuntimeError: y")
    text = sections.section_finetune(str(_write_json(tmp_path / "no_graphs.json", per_class)))
    assert "**torch.compile failed** (malignant): those LoRAs trained eager" in text
    assert "**torch.compile failed** (benign): recording CUDA graphs failed" in text


# ---------------------------------------------------------------- issue 22: the report tells the truth


def _validated(name, overrides=None):
    """config/<name> with ``overrides`` (section -> keys, merged into that section), validated."""
    import yaml

    from dermsynth.config import validate

    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    for key, value in (overrides or {}).items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(cfg, ROOT / "config" / "schema.yaml")


def _eval(tmp_path, model, regime, seed, testset, acc, sens=0.7, spec=0.8, auroc=0.8, n=100):
    """A minimal eval JSON (no predictions CSV: CIs come from the JSON)."""
    m = {
        k: {"value": v, "lo": None if v is None else v - 0.05, "hi": None if v is None else v + 0.05}
        for k, v in (
            ("accuracy", acc),
            ("balanced_accuracy", (sens + spec) / 2),
            ("auroc", auroc),
            ("sensitivity", sens),
            ("specificity", spec),
            ("f1", 0.5),
        )
    }
    doc = {"model": model, "regime": regime, "seed": seed, "testset": testset, "n": n, "metrics": m}
    p = tmp_path / "evals" / f"{model}_{regime}_{seed}_{testset}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(p, doc)
    return str(p)


def test_paper_table_default_is_table_iv_on_the_right_rows(tmp_path, monkeypatch):
    paper = _validated("config.yaml")["report"]["paper_table"]
    table_iv = TABLE_IV
    cells = {(m, r, t): v for m, rs in paper.items() for r, ts in rs.items() for t, v in ts.items()}
    assert cells == pytest.approx(table_iv)
    # ours: a distinct accuracy per cell, so a swapped row shows in diff_vs_paper
    ours = {k: 0.5 + 0.01 * i for i, k in enumerate(sorted(table_iv))}
    jsons = [_eval(tmp_path, *k[:2], 0, k[2], acc) for k, acc in ours.items()]
    t4 = stats.table4(stats.load_evals(jsons), paper, n_boot=0)
    assert len(t4) == 8 and (t4["n_seeds"] == 1).all()
    for r in t4.itertuples():
        key = (r.model, r.regime, r.testset)
        assert r.paper_accuracy == pytest.approx(table_iv[key])
        assert r.diff_vs_paper == pytest.approx(100 * ours[key] - table_iv[key])
    # accuracy.png: each hatched (paper) bar stands over its model's tick in its regime's colour
    import matplotlib.colors as mcolors

    figs = []
    monkeypatch.setattr(figures, "savefig", lambda fig, path: figs.append(fig) or path)
    figures.fig_accuracy(t4, tmp_path / "acc.png")
    models = names.order(t4["model"], names.MODEL_NAMES)
    seen = {}
    for ax in figs[0].axes:
        ts = next(k for k, v in names.TESTSET_NAMES.items() if v == ax.get_title())
        for bar in ax.patches:
            if bar.get_hatch() != "//":
                continue
            model = models[round(bar.get_x() + bar.get_width() / 2)]
            regime = next(
                reg
                for reg, c in figures.REGIME_COLORS.items()
                if np.allclose(bar.get_edgecolor()[:3], mcolors.to_rgb(c))
            )
            seen[(model, regime, ts)] = bar.get_height()
    assert seen == pytest.approx(table_iv)


def test_holm_step_down_matches_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (step-down monotone)
    adj = stats.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adj[4])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, then monotone
    assert stats.holm([0.02]) == pytest.approx([0.02])
    assert len(stats.holm([])) == 0


def test_degenerate_classifiers_are_flagged(tmp_path):
    assert stats.degenerate_reason(0.0, 1.0, 0.7) == "sensitivity 0"
    assert "AUROC 0.500" in stats.degenerate_reason(0.6, 0.4, 0.5)
    assert stats.degenerate_reason(0.6, 0.4, 0.51) == ""
    assert stats.degenerate_reason(float("nan"), 0.9, float("nan")) == ""
    jsons = [
        _eval(tmp_path, "vit", "real", 0, "isic", 0.6, sens=0.0, spec=1.0, auroc=0.62),
        _eval(tmp_path, "vit", "real", 1, "isic", 0.8),
        _eval(tmp_path, "vit", "hybrid", 0, "isic", 0.7, auroc=0.45),
        _eval(tmp_path, "vit", "hybrid", 1, "isic", 0.75),
    ]
    evals = stats.load_evals(jsons)
    t4 = stats.table4(evals, {}, n_boot=0).set_index("regime")
    assert t4.loc["real", "n_degenerate"] == 1 and t4.loc["hybrid", "n_degenerate"] == 1
    md = tables.table4_markdown(t4.reset_index())
    assert md.count("⚠ degenerate (1/2 seeds)") == 2 and "predicts one class only" in md
    run = sections.section_run(evals, ["benign", "malignant"])
    assert "**Degenerate classifiers** (2 of 4 evaluations" in run
    assert "seed 0 on ISIC Archive: sensitivity 0" in run and "AUROC 0.450 ≤ 0.5" in run
    healthy = stats.load_evals([j for j in jsons if "_1_" in j])
    assert "Degenerate" not in sections.section_run(healthy, ["benign", "malignant"])
    assert "⚠" not in tables.table4_markdown(stats.table4(healthy, {}, n_boot=0))


def test_sd_only_with_two_or_more_seeds(tmp_path):
    assert tables.seeds_phrase([1, 1]) == "one seed: the value of that seed alone, no sd"
    assert tables.seeds_phrase([3, 3, 0]) == "mean ± sd over 3 seeds"
    assert "a cell with one seed" in tables.seeds_phrase([1, 3])
    one = stats.load_evals([_eval(tmp_path, "vit", "real", 0, "isic", 0.8125)])
    md = tables.table4_markdown(stats.table4(one, {}, n_boot=0))
    assert "81.25 [76.25, 86.25]" in md and "±" not in md and "one seed" in md
    assert "one seed" in sections.section_run(one, ["benign", "malignant"])
    two = stats.load_evals([_eval(tmp_path, "vit", "real", s, "isic", a) for s, a in ((0, 0.8), (1, 0.9))])
    md = tables.table4_markdown(stats.table4(two, {}, n_boot=0))
    assert f"85.00 ± {np.std([80, 90], ddof=1):.2f}" in md and "mean ± sd over 2 seeds" in md


def test_validation_accuracy_beside_fig10(tmp_path, monkeypatch):
    paper_val = _validated("config.yaml")["report"]["paper_val_accuracy"]
    assert paper_val == {
        "mobilenet_v2": {"real": 76.61, "hybrid": 86.57},
        "vit": {"real": 91.16, "hybrid": 94.74},
    }
    hist = {}
    # vit/real: two seeds, lowest val loss at epoch 2 (seed 0) and 3 (seed 1); later epochs are worse
    for seed, vl, va in ((0, [0.6, 0.4, 0.5], [0.7, 0.9, 0.95]), (1, [0.6, 0.5, 0.3], [0.6, 0.7, 0.8])):
        p = tmp_path / f"vit_real_{seed}.csv"
        pd.DataFrame(
            {"epoch": [1, 2, 3], "train_loss": 0.5, "val_loss": vl, "val_accuracy": va, "val_auroc": 0.7}
        ).to_csv(p, index=False)
        hist[f"vit/real/{seed}"] = str(p)
    p = tmp_path / "mob_hybrid_0.csv"  # no validation set: the last epoch is kept
    nan = [np.nan, np.nan]
    pd.DataFrame(
        {"epoch": [1, 2], "train_loss": 0.5, "val_loss": nan, "val_accuracy": nan, "val_auroc": nan}
    ).to_csv(p)
    hist["mobilenet_v2/hybrid/0"] = str(p)
    va = stats.val_accuracy_table(hist, paper_val).set_index(["model", "regime"])
    assert len(va) == 4  # every paper cell, ours or not
    r = va.loc[("vit", "real")]
    assert (r["n_seeds"], r["epochs"]) == (2, "2 3")
    assert r["val_accuracy_mean"] == pytest.approx(85.0) and r["val_accuracy_sd"] == pytest.approx(
        np.std([90, 80], ddof=1)
    )
    assert r["paper_val_accuracy"] == 91.16 and r["diff_vs_paper"] == pytest.approx(85.0 - 91.16)
    assert va.loc[("mobilenet_v2", "hybrid"), "epochs"] == "2"
    assert va.loc[("mobilenet_v2", "real"), "n_seeds"] == 0
    # curves.png: the paper's value as a dashed line on each model's accuracy panel
    import matplotlib

    figs = []
    monkeypatch.setattr(figures, "savefig", lambda fig, path: figs.append(fig) or path)
    figures.fig_curves(hist, tmp_path / "curves.png", paper_val)
    acc_axes = [ax for ax in figs[0].axes if ax.get_ylabel() == "val accuracy (%)"]
    assert [ax.get_title() for ax in acc_axes] == ["ViT-B/16", "MobileNetV2"]
    for ax, model in zip(acc_axes, ("vit", "mobilenet_v2"), strict=True):
        dashed = {
            ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_label().endswith("Fig. 10")
        }
        assert sorted(dashed.values()) == pytest.approx(sorted(paper_val[model].values()))
    matplotlib.pyplot.close("all")
    md = sections.section_val_accuracy(va.reset_index())
    assert "| ViT-B/16 | Baseline (real) | 2 | 2 3 | 85.00 ± 7.07 | 91.16 | -6.16 |" in md
    assert "| MobileNetV2 | Hybrid (synthetic + real) | 1 | 2 | — | 86.57 | — |" in md


def test_finetune_section_has_the_paper_figures():
    pf = _validated("config.yaml")["report"]["paper_finetune"]
    assert pf == {"final_loss": 0.1394, "wall_h": 10.4, "gpu_mem_gb": 5.3}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = _write_json(Path(d) / "s.json", {"final_loss": 0.21, "wall_s": 120.5, "peak_mem_gb": 2.5})
        text = sections.section_finetune(str(path), pf)
        assert "| final_loss | 0.21 | 0.1394 |" in text
        assert "| wall_s | 120.5 | 37440 (10.4 h) |" in text
        assert "| peak_mem_gb | 2.5 | 5.3 (GPU) |" in text
        assert "| steps | None |  |" in text  # no paper figure: empty cell
        assert "Derm-T2IM" not in sections.section_finetune(str(path))


def test_banner_for_tiny_models(fabricated, tmp_path):
    assert sections.not_comparable_reasons(_validated("config.yaml")) == []
    demo = _validated("demo.yaml")
    why = "\n".join(sections.not_comparable_reasons(demo))
    for key in ("models.sd", "models.vit", "models.mobilenet_v2", "quality.features", "segment.sam_model"):
        assert key in why
    demo["segment"]["methods"] = ["classical"]  # a tiny SAM that never runs changes nothing
    assert "segment.sam_model" not in "\n".join(sections.not_comparable_reasons(demo))
    jsons = fabricated[0][:4]
    out = report.build(jsons, tmp_path / "tiny", PAPER, extras={"config": demo}, n_boot=0)
    head = Path(out["summary_md"]).read_text().split("## ")[0]
    assert "**Not comparable to the paper.**" in head and "tiny-vit" in head
    page = Path(out["summary_html"]).read_text()  # each reason a list item there too, not run-on text
    assert "<li>models.vit = results/models/tiny-vit (tiny, random weights)</li>" in page
    out = report.build(jsons, tmp_path / "paper", PAPER, n_boot=0)
    assert "Not comparable" not in Path(out["summary_md"]).read_text()


def _train_csv(path, counts):
    """A hybrid-stage training list with counts[(origin, label)] rows."""
    rows = [
        {"path": f"{o}_{lb}_{i}.png", "label": lb, "origin": o}
        for (o, lb), n in counts.items()
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_hybrid_composition_and_methods_state_actual_fraction(tmp_path):
    cfg = _validated(
        "demo.yaml", {"hybrid": {"synthetic_fraction": 0.75}, "report": {"hybrid_fraction_tolerance": 0.02}}
    )
    real = _train_csv(tmp_path / "real" / "train.csv", {("real", "benign"): 10, ("real", "malignant"): 10})
    # benign has its 30 synthetic images (75 %); the filter left malignant 15 instead of 30 (60 %)
    hybrid = _train_csv(
        tmp_path / "hybrid" / "train.csv",
        {
            ("real", "benign"): 10,
            ("synthetic", "benign"): 30,
            ("real", "malignant"): 10,
            ("synthetic", "malignant"): 15,
        },
    )
    comp = stats.hybrid_composition([real, hybrid], cfg, ["benign", "malignant"])
    c = comp.set_index(["regime", "label"])
    assert c.loc[("hybrid", "all"), "fraction"] == pytest.approx(45 / 65)
    assert c.loc[("hybrid", "malignant"), "n_synthetic"] == 15 and c.loc[("hybrid", "benign"), "n_real"] == 10
    assert c.loc[("real", "all"), "fraction"] == 0 and c.loc[("real", "all"), "configured"] == 0
    assert comp[comp["short"]][["regime", "label"]].values.tolist() == [
        ["hybrid", "all"],
        ["hybrid", "malignant"],
    ]
    md = sections.section_composition(comp, 0.02)
    assert "| hybrid | malignant | 10 | 15 | 60.0 | 75.0 |" in md
    assert (
        "**Warning:** hybrid: synthetic share overall 69.2 %, malignant 60.0 %, below the configured 75 %"
        in md
    )
    # a looser tolerance forgives the overall share (69.2 >= 75 - 10) but not malignant's 60 %
    loose = stats.hybrid_composition(
        [hybrid],
        {**cfg, "report": {**cfg["report"], "hybrid_fraction_tolerance": 0.1}},
        ["benign", "malignant"],
    )
    assert loose[loose["short"]]["label"].tolist() == ["malignant"]
    text = methods_paragraph(cfg, comp)
    assert "held 69.2 % synthetic images (45 synthetic and 20 real" in text
    assert "benign 75.0 % (30 of 40), malignant 60.0 % (15 of 25)" in text and "75 % configured" in text
    assert "configured to hold 75 %" in methods_paragraph(cfg)  # no list read: no claim of 75 %
    bad = _train_csv(tmp_path / "x" / "train.csv", {("real", "benign"): 1})
    pd.read_csv(bad).drop(columns="origin").to_csv(bad, index=False)
    with pytest.raises(ValueError, match="no column origin"):
        stats.hybrid_composition([bad], cfg, ["benign"])
    # build() puts the table, its warning and the actual share in summary.md
    jsons = [_eval(tmp_path, "vit", r, 0, "isic", 0.8) for r in ("real", "hybrid")]
    out = report.build(
        jsons, tmp_path / "r", {}, extras={"config": cfg, "hybrid_sets": [real, hybrid]}, n_boot=0
    )
    summary = Path(out["summary_md"]).read_text()
    assert "## Training sets after the filter" in summary and "**Warning:** hybrid" in summary
    methods = summary.split("## Methods")[1].split("##")[0]
    assert "69.2 % synthetic" in methods


def test_summary_html_holds_real_tables_and_embedded_figures(tmp_path):
    from PIL import Image

    from dermsynth.report import html

    (tmp_path / "sections").mkdir()
    Image.new("RGB", (7, 5), (200, 10, 10)).save(tmp_path / "sections" / "fig.png")
    md = "## Table IV\n\n| model | acc |\n|---|---|\n| ViT | 81.2 |\n\n![a figure](sections/fig.png)\n"
    page = html.render(md, tmp_path, "t")
    assert "<table>" in page and "<td>81.2</td>" in page and 'id="table-iv"' in page
    src = page.split('src="', 1)[1].split('"', 1)[0]
    assert src.startswith("data:image/jpeg;base64,")
    import base64
    import io as _io

    assert Image.open(_io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (7, 5)
    # large figures shrink until the page fits (report.html's frame refuses data: URLs over 2 MiB)
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8)).save(tmp_path / f"big{k}.png")
    md = "\n\n".join(f"![big {k}](big{k}.png)" for k in range(6))
    page = html.render(md, tmp_path, "t", max_bytes=1_000_000)
    assert len(page.encode()) <= 1_000_000 and page.count("data:image/jpeg") == 6


def test_clinical_operating_points_and_calibration_are_reported(fabricated, tmp_path):
    from dermsynth.report.stats import clinical_table, pooled_reliability

    jsons, truth, histories, _ = fabricated
    ct = clinical_table(jsons).set_index(["model", "regime", "testset"])
    for (model, regime, ts), row in ct.iterrows():
        docs = [json.loads(Path(j).read_text()) for j in jsons]
        mine = [d for d in docs if (d["model"], d["regime"], d["testset"]) == (model, regime, ts)]
        want = np.mean([d["operating_points"][0]["sensitivity"]["value"] for d in mine])
        assert row["sens@spec90"] == pytest.approx(want) and row["n_seeds"] == len(mine)
        assert row["ece"] == pytest.approx(np.mean([d["calibration"]["ece"] for d in mine]))
    bins = pooled_reliability(jsons)
    pooled = bins.groupby(["model", "regime", "testset"])["n"].sum()
    for (model, regime, ts), n in pooled.items():  # every test image of every seed, once
        assert n == sum(len(v[1]) for k, v in truth.items() if (k[0], k[1], k[3]) == (model, regime, ts))
    report.build(jsons, tmp_path, PAPER, histories=histories, n_boot=50)
    md = (tmp_path / "summary.md").read_text()
    assert "## Clinical operating points and calibration" in md
    first = ct.reset_index().iloc[0]
    assert f"{100 * first['sens@spec90']:.1f} ({100 * first['spec@spec90']:.1f})" in md
    assert (tmp_path / "reliability.png").stat().st_size > 1000
