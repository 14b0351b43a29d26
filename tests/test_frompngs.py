"""generate.from_pngs: a prompt grid read from web-UI PNGs (their ``parameters`` text), and generating it."""

import re
import subprocess
import sys
from pathlib import Path

import _diffusion_fixtures as fx
import numpy as np
import pytest
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dermsynth import io
from dermsynth.diffusion import pngs, sample, webui
from dermsynth.diffusion.pipeline import SAMPLERS, set_sampler
from dermsynth.errors import ConfigError

CLASSES = ["benign", "malignant"]
ROOT = Path(__file__).resolve().parents[1]


def _png(path, text=None):
    """A tiny PNG carrying ``text`` as its ``parameters`` chunk (as the web UI saves one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if text is not None:
        info = PngInfo()
        info.add_text("parameters", text)
    Image.new("RGB", (8, 8), (200, 150, 120)).save(path, pnginfo=info)
    return path


# texts in the web UI's own format, with the values read off by hand
WEBUI_TEXT = (
    "a dermoscopic image,\n"
    "of a malignant lesion <lora:derm_kohya:0.8>\n"
    "Negative prompt: blurry, hair\n"
    "lowres\n"
    "Steps: 25, Sampler: DPM++ 2M SDE Karras, CFG scale: 6.5, Seed: 123, Size: 512x768, "
    'Model hash: 6ce0161689, Lora hashes: "derm_kohya: 0123456789ab, other: ba9876543210", '
    'Version: v1.6.0, Hires upscaler: "4x: Ultra, sharp"'
)


def test_parse_follows_the_webui_rules():
    got = webui.parse(WEBUI_TEXT)
    assert got["Prompt"] == "a dermoscopic image,\nof a malignant lesion <lora:derm_kohya:0.8>"
    assert got["Negative prompt"] == "blurry, hair\nlowres"
    assert (got["Steps"], got["Sampler"], got["CFG scale"], got["Seed"]) == (
        "25",
        "DPM++ 2M SDE Karras",
        "6.5",
        "123",
    )
    assert (got["Size-1"], got["Size-2"]) == ("512", "768")
    assert got["Lora hashes"] == "derm_kohya: 0123456789ab, other: ba9876543210"
    assert got["Hires upscaler"] == "4x: Ultra, sharp" and got["Version"] == "v1.6.0"
    row = pngs.row_of(WEBUI_TEXT)
    assert row == {
        "prompt": "a dermoscopic image,\nof a malignant lesion",
        "negative_prompt": "blurry, hair\nlowres",
        "sampler": "dpmpp_2m_sde_karras",
        "steps": 25,
        "guidance_scale": 6.5,
        "seed": 123,
    }


def test_parse_without_negative_prompt_and_with_few_pairs():
    row = pngs.row_of("a benign mole\nSteps: 20, Sampler: Euler a, CFG scale: 7, Size: 64x64")
    assert row == {
        "prompt": "a benign mole",
        "negative_prompt": "",
        "sampler": "euler_a",
        "steps": 20,
        "guidance_scale": 7.0,
        "seed": None,
    }
    # a last line with fewer than three pairs is prompt text, as in the web UI
    got = webui.parse("line one\nratio: 2, size: big")
    assert got["Prompt"] == "line one\nratio: 2, size: big" and "ratio" not in got
    # an empty value: the web UI's reader skips that key
    got = webui.parse("p\nSteps: 20, Sampler: PLMS, Model: , CFG scale: 4")
    assert "Model" not in got and got["CFG scale"] == "4" and got["Sampler"] == "PLMS"


def test_sampler_names_of_both_webui_generations():
    assert pngs.sampler_of({"Sampler": "PLMS"}) == "plms"
    assert pngs.sampler_of({"Sampler": "Heun", "Schedule type": "Automatic"}) == "heun"
    # v1.9+ names the schedule apart from the sampler
    assert pngs.sampler_of({"Sampler": "DPM++ 2M SDE", "Schedule type": "Karras"}) == "dpmpp_2m_sde_karras"
    with pytest.raises(ConfigError, match=r"x\.png: web-UI sampler 'Euler Karras'.*from_pngs_samplers"):
        pngs.sampler_of({"Sampler": "Euler", "Schedule type": "Karras"}, where="x.png")
    assert pngs.sampler_of({"Sampler": "DDIM"}, {"DDIM": "euler"}) == "euler"


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_our_text_reads_back_as_written(sampler):
    prompt = "a dermoscopic image of a benign skin lesion, large mole: tiny\nsecond line"
    text = webui.parameters(
        prompt,
        "blurry, hair" if sampler != "plms" else "",
        17,
        SAMPLERS[sampler][2],
        7.5 if sampler != "euler" else 7.0,
        4294967295,
        64,
        64,
        model="v1-5",
        model_hash="6ce0161689",
        lora=("derm_kohya", "ab" * 32, 0.75),
    )
    assert pngs.row_of(text) == {
        "prompt": prompt,
        "negative_prompt": "blurry, hair" if sampler != "plms" else "",
        "sampler": sampler,
        "steps": 17,
        "guidance_scale": 7.5 if sampler != "euler" else 7.0,
        "seed": 4294967295,
    }


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no PNG in"):
        pngs.read_folder(tmp_path, CLASSES)
    good = "p\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1"
    _png(tmp_path / "benign" / "a.png", good)
    bare = _png(tmp_path / "malignant" / "bare.png")
    with pytest.raises(ConfigError, match=rf"{bare}: no web-UI 'parameters' text chunk"):
        pngs.read_folder(tmp_path, CLASSES)
    odd = _png(bare, "p\nSteps: 3, Sampler: UniPC, CFG scale: 5")
    with pytest.raises(ConfigError, match=rf"{odd}: web-UI sampler 'UniPC'"):
        pngs.read_folder(tmp_path, CLASSES)
    assert pngs.read_folder(tmp_path, CLASSES, {"UniPC": "plms"})[1]["sampler"] == "plms"
    _png(bare, "p\nSteps: many, Sampler: Euler, CFG scale: 5")
    with pytest.raises(ConfigError, match=rf"{bare}: 'Steps: many' is not a number"):
        pngs.read_folder(tmp_path, CLASSES)
    bare.unlink()
    with pytest.raises(ConfigError, match="no PNG for class"):
        pngs.read_folder(tmp_path, CLASSES)
    stray = _png(tmp_path / "other" / "c.png", good)
    with pytest.raises(ConfigError, match=rf"{stray}: .*class folder"):
        pngs.read_folder(tmp_path, CLASSES)


@pytest.fixture
def grid_dir(tmp_path):
    """Three web-UI PNGs: two benign with Euler (other steps, CFG, negative prompt, one seed), one
    malignant with PLMS."""
    d = tmp_path / "released"
    _png(
        d / "benign" / "a.png",
        "a round benign mole\nNegative prompt: hair\nSteps: 3, Sampler: Euler, CFG scale: 5",
    )
    _png(
        d / "benign" / "b.png",
        "a benign mole <lora:theirs:1>\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 777, Size: 512x512",
    )
    _png(
        d / "malignant" / "sub" / "c.png",
        "a ragged malignant lesion\nSteps: 2, Sampler: PLMS, CFG scale: 6, Seed: 99, Size: 512x512",
    )
    return d


def test_grid_plans_the_pngs_values(grid_dir):
    cfg = {
        "classes": CLASSES,
        "generate": {"from_pngs": str(grid_dir), "images_per_class": 3, "from_pngs_seeds": True},
    }
    blocks = pngs.grid_from_config(cfg)
    assert list(blocks) == [("benign", "euler"), ("malignant", "plms")]
    assert pngs.grid_samplers(blocks) == ["euler", "plms"]
    # 3 images over 2 benign PNGs: 2 + 1 (remainder to the first file)
    assert blocks[("benign", "euler")] == [
        {"png": "benign/a.png", "prompt": "a round benign mole", "negative_prompt": "hair", "steps": 3,
         "guidance_scale": 5.0, "count": 2},
        {"png": "benign/b.png", "prompt": "a benign mole", "negative_prompt": "", "steps": 2,
         "guidance_scale": 7.5, "count": 1, "seed": 777},
    ]  # fmt: skip
    assert blocks[("malignant", "plms")] == [
        {"png": "malignant/sub/c.png", "prompt": "a ragged malignant lesion", "negative_prompt": "",
         "steps": 2, "guidance_scale": 6.0, "count": 3, "seed": 99},
    ]  # fmt: skip
    # fewer images than PNGs: the last files get none, and a block left empty is not planned
    cfg["generate"] |= {"images_per_class": 1, "from_pngs_seeds": False}
    blocks = pngs.grid_from_config(cfg)
    assert [(b, [r["png"] for r in rows]) for b, rows in blocks.items()] == [
        (("benign", "euler"), ["benign/a.png"]),
        (("malignant", "plms"), ["malignant/sub/c.png"]),
    ]
    assert "seed" not in blocks[("benign", "euler")][0]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return fx.tiny_sd(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return fx.base_pipeline(tmp_path_factory)


def test_generation_carries_the_pngs_values(grid_dir, tiny_sd, pipe, tmp_path, monkeypatch):
    cfg = {
        "classes": CLASSES,
        "generate": {"from_pngs": str(grid_dir), "images_per_class": 3, "from_pngs_seeds": True},
    }
    blocks = pngs.grid_from_config(cfg)
    calls = []
    real = sample.run_batch

    def counting(pipe_, seeds, steps, prompt, negative, guidance, res):
        calls.append((len(seeds), steps, guidance, negative))
        return real(pipe_, seeds, steps, prompt, negative, guidance, res)

    monkeypatch.setattr(sample, "run_batch", counting)
    gen = {**fx.GENERATE, "prompt": "unused {label}", "negative_prompt": "unused", "guidance_scale": 1.0}
    made = {}
    for (label, sampler), grid in blocks.items():
        out = tmp_path / label / sampler
        made[label] = sample.generate(
            str(tiny_sd), None, label, sampler, 3, gen, out, out / "m.csv", device="cpu", pipe=pipe, grid=grid
        )
    benign, malignant = made["benign"], made["malignant"]
    # images of equal (steps, CFG, negative prompt) share a call; the others do not
    assert sorted(calls) == sorted([(2, 3, 5.0, "hair"), (1, 2, 7.5, ""), (3, 2, 6.0, "")])
    assert benign["prompt"].tolist() == ["a round benign mole"] * 2 + ["a benign mole"]
    assert benign["negative_prompt"].tolist() == ["hair", "hair", ""]
    assert benign["steps"].tolist() == [3, 3, 2] and benign["guidance_scale"].tolist() == [5.0, 5.0, 7.5]
    assert (benign["sampler"] == "euler").all() and (malignant["sampler"] == "plms").all()
    assert benign["modifiers"].tolist() == ["", "", ""]
    # the first image of a PNG with a seed replays it; the others get seeds of their own
    assert benign["seed"].iloc[2] == 777 and malignant["seed"].iloc[0] == 99
    assert malignant["seed"].nunique() == 3 and benign["seed"].iloc[0] != benign["seed"].iloc[1]
    on_disk = io.read_csv(tmp_path / "benign" / "euler" / "m.csv")
    assert on_disk["guidance_scale"].tolist() == [5.0, 5.0, 7.5]
    # the written PNGs say the same, and read back as a grid of their own
    for row in benign.itertuples():
        back = pngs.row_of(pngs.parameters_text(row.path))
        assert back == {
            "prompt": row.prompt,
            "negative_prompt": row.negative_prompt,
            "sampler": "euler",
            "steps": row.steps,
            "guidance_scale": row.guidance_scale,
            "seed": row.seed,
        }
    # the image is the one of those values: b.png's, made alone, equals its row
    set_sampler(pipe, "euler")
    alone = real(pipe, [777], 2, "a benign mole", "", 7.5, 64)[0].astype(np.float64)
    assert np.abs(alone - np.asarray(Image.open(benign["path"].iloc[2]), np.float64)).mean() <= 1.0


def test_report_texts_name_the_pngs_not_the_config_grid():
    import pandas as pd

    from dermsynth.datasheet import _grid_settings
    from dermsynth.report.methods import _grid_text

    gen = {"from_pngs": "released/", "samplers": {"heun": {"steps": 9}}, "guidance_scale": 3.0}
    assert "web-UI PNGs in `released/`" in _grid_text(gen) and "heun" not in _grid_text(gen)
    assert _grid_text({**gen, "from_pngs": None}) == "samplers heun 9 steps, guidance scale 3.0"
    images = pd.DataFrame(
        {"sampler": ["plms", "euler", "plms"], "steps": [5, 3, 7], "guidance_scale": [6.0, 7.5, 6.0]}
    )
    rows, samplers, cfg_text, _ = _grid_settings(images, gen)
    assert rows == [["plms", "5-7"], ["euler", "3"]] and samplers == "plms, euler"
    assert cfg_text.startswith("6-7.5 (per image")


def _dry_run(cfg: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake = Path(sys.executable).with_name("snakemake")
    return subprocess.run(
        [str(snakemake), "-n", "--quiet", "rules", "--configfile", str(path), "-d", str(tmp_path / "wd")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dag_takes_its_blocks_from_the_pngs(grid_dir, tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    # 8 images per class over the PNGs, shards of 2: benign euler 4 + 4 (2 + 2 shards), malignant plms 8 (4)
    cfg["generate"] |= {"from_pngs": str(grid_dir), "images_per_class": 8, "shard_size": 2}
    out = _dry_run(cfg, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:")[1], re.M))
    assert (counts["generate"], counts["generate_merge"], counts["quality"]) == ("8", "2", "2")
    _png(grid_dir / "benign" / "a.png", "p\nSteps: 3, Sampler: DDIM, CFG scale: 5")
    out = _dry_run(cfg, tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if "dermsynth config error" in ln]
    assert out.returncode != 0 and len(lines) == 1 and "a.png: web-UI sampler 'DDIM'" in lines[0]
