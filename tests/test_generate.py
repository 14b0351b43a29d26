"""Generation: samplers, per-image seeds, manifest, PNG metadata, reproducibility, resume, errors."""

import hashlib
from pathlib import Path

import _diffusion_fixtures as fx
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dermsynth import io
from dermsynth.diffusion import pipeline as pl
from dermsynth.diffusion import webui
from dermsynth.diffusion.sample import (
    MANIFEST_COLUMNS,
    generate,
    image_seed,
    merge_shards,
    modifier_plan,
    regenerate,
    run_batch,
    section_generate,
    shards,
    split_counts,
    steps_for,
)
from dermsynth.errors import ConfigError, ModelNotFoundError

PROMPT = "a dermoscopic image of a benign skin lesion"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return fx.tiny_sd(tmp_path_factory)


@pytest.fixture(scope="session")
def lora(tmp_path_factory):
    return fx.trained_lora(tmp_path_factory)[0]


@pytest.fixture(scope="session")
def pipe(tmp_path_factory):
    return fx.base_pipeline(tmp_path_factory)


@pytest.fixture(scope="session")
def generated(tiny_sd, lora, tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    manifest = generate(
        str(tiny_sd),
        str(lora),
        "malignant",
        "euler_a",
        6,
        fx.GENERATE,
        d / "img",
        d / "manifest.csv",
        threads=1,
        device="cpu",
    )
    return d, manifest


def _arr(path):
    return np.asarray(Image.open(path), dtype=np.float64)


def test_samplers_differ_for_the_same_seed(pipe):
    outs = {}
    for name in pl.SAMPLERS:
        pl.set_sampler(pipe, name)
        outs[name] = run_batch(pipe, [11], 6, PROMPT, "", 7.0, 64)[0].astype(np.float64)
        assert outs[name].shape == (64, 64, 3)
    pl.set_sampler(pipe, "plms")
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(outs[a] - outs[b]).mean() > 0.5, (a, b)


def test_plms_is_pndm_without_prk(pipe):
    from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler

    assert isinstance(pl.make_scheduler("euler_a", pipe.scheduler.config), EulerAncestralDiscreteScheduler)
    plms = pl.make_scheduler("plms", pipe.scheduler.config)
    assert isinstance(plms, PNDMScheduler) and plms.config.skip_prk_steps
    assert plms.config.beta_schedule == "scaled_linear"


def test_unknown_sampler_lists_the_allowed_names(pipe):
    with pytest.raises(ConfigError, match="euler, euler_a, plms"):
        pl.set_sampler(pipe, "ddim")


def test_generate_writes_images_and_manifest(generated, lora):
    d, m = generated
    assert list(m.columns) == MANIFEST_COLUMNS
    on_disk = io.read_csv(d / "manifest.csv")
    assert len(on_disk) == 6 and on_disk["sha256"].tolist() == m["sha256"].tolist()
    assert (m["dataset"] == "synthetic").all() and (m["label"] == "malignant").all()
    assert m["index"].tolist() == list(range(6))
    assert m["source_id"].iloc[2] == "malignant_euler_a_000002"
    assert m["seed"].nunique() == 6
    assert (m["lora_sha256"] == io.sha256_file(lora / "pytorch_lora_weights.safetensors")).all()
    for row in m.itertuples():
        assert io.sha256_file(row.path) == row.sha256
        assert Image.open(row.path).size == (64, 64)


def test_png_carries_only_the_a1111_parameters_chunk(generated, lora):
    _, m = generated
    row = m.iloc[0]
    im = Image.open(row["path"])
    im.load()
    assert set(im.info) == {"parameters"}  # no EXIF, no dpi, nothing else
    kohya = webui.kohya_file(lora)  # the web UI loads this copy: its hash and name go in the text
    assert im.text == {
        "parameters": (
            f"a dermoscopic image of a malignant skin lesion <lora:{kohya.stem}:1>\n"
            f"Steps: 6, Sampler: Euler a, CFG scale: 7, Seed: {row['seed']}, Size: 64x64, "
            f'Lora hashes: "{kohya.stem}: {webui.addnet_hash(kohya)[:12]}", RNG: CPU'
        )
    }
    assert 0 <= row["seed"] < 2**32  # a seed the web UI can replay


def test_webui_text_reads_back_by_the_webui_rules(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "derm_kohya.safetensors"
    save_file({"a": torch.ones(3)}, str(lora), metadata={"ss_network_dim": "4"})
    text = webui.parameters(
        "a lesion, large mole",
        "blurry, hair",
        22,
        "DPM++ 2M SDE Karras",
        7.5,
        4294967295,
        512,
        512,
        model="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        lora=("derm_kohya", webui.addnet_hash(lora), 1.0),
    )
    assert text.splitlines()[0] == "a lesion, large mole <lora:derm_kohya:1>"
    got = webui.parse(text)
    assert (
        got["Prompt"] == "a lesion, large mole <lora:derm_kohya:1>"
        and got["Negative prompt"] == "blurry, hair"
    )
    assert (got["Steps"], got["Sampler"], got["CFG scale"], got["Seed"]) == (
        "22",
        "DPM++ 2M SDE Karras",
        "7.5",
        "4294967295",
    )
    assert (got["Size-1"], got["Size-2"], got["Model"], got["Model hash"]) == (
        "512",
        "512",
        "v1-5-pruned-emaonly",
        "6ce0161689",
    )
    # the hash of the tensor data, not of the file: the web UI's "addnet" hash
    with open(lora, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        data = f.read()[n:]
    assert got["Lora hashes"] == f"derm_kohya: {hashlib.sha256(data).hexdigest()[:12]}"
    assert got["RNG"] == "CPU"
    assert webui.number(7.0) == "7" and webui.number(7.25) == "7.25"
    # a web-UI text of its own (Model hash before Model, quoted values with commas) reads the same way
    theirs = webui.parse(
        "p\nSteps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        'Lora hashes: "a: 0123456789ab, b: ba9876543210", Version: v1.8.0'
    )
    assert theirs["Lora hashes"] == "a: 0123456789ab, b: ba9876543210" and theirs["Version"] == "v1.8.0"
    assert theirs["Size-2"] == "768" and theirs["Prompt"] == "p" and theirs["Negative prompt"] == ""


def test_manifest_row_regenerates_the_image(generated, tiny_sd, lora):
    d, _ = generated
    row = io.read_csv(d / "manifest.csv").iloc[4]  # via the CSV: empty strings come back as NaN
    im = regenerate(row, str(tiny_sd), str(lora), device="cpu", threads=1)
    assert np.abs(np.asarray(im, np.float64) - _arr(row["path"])).mean() <= 1.0
    with pytest.raises(ConfigError, match="pass its lora_path"):
        regenerate(row, str(tiny_sd), None)


def test_images_do_not_depend_on_the_batch(tiny_sd, tmp_path):
    cfg = {**fx.GENERATE, "samplers": {"euler_a": {"steps": 4}}}
    one = generate(
        str(tiny_sd),
        None,
        "benign",
        "euler_a",
        5,
        {**cfg, "batch_size": 1},
        tmp_path / "a",
        tmp_path / "a.csv",
        device="cpu",
    )
    many = generate(
        str(tiny_sd),
        None,
        "benign",
        "euler_a",
        3,
        {**cfg, "batch_size": 3},
        tmp_path / "b",
        tmp_path / "b.csv",
        device="cpu",
        first_index=2,
    )
    assert one["lora_scale"].eq(0.0).all() and one["lora_sha256"].eq("").all()
    assert many["index"].tolist() == [2, 3, 4]
    assert many["seed"].tolist() == one["seed"].tolist()[2:]
    for a, b in zip(one["path"].tolist()[2:], many["path"].tolist(), strict=True):
        # batched GEMMs may round differently: measured ~1e-4 grey levels on average, never > 1 level
        assert np.abs(_arr(a) - _arr(b)).mean() <= 0.25
        assert np.abs(_arr(a) - _arr(b)).max() <= 2


def test_generate_resumes_and_rebuilds_rows(tiny_sd, tmp_path):
    cfg = {**fx.GENERATE, "samplers": {"plms": {"steps": [3, 6]}}}
    first = generate(
        str(tiny_sd), None, "benign", "plms", 4, cfg, tmp_path / "i", tmp_path / "m.csv", device="cpu"
    )
    assert set(first["steps"]) <= {3, 4, 5, 6}
    assert first["steps"].tolist() == [steps_for([3, 6], s) for s in first["seed"]]
    gone, kept = tmp_path / "i" / "benign_plms_000001.png", tmp_path / "i" / "benign_plms_000003.png"
    mtime = kept.stat().st_mtime_ns
    gone.unlink()
    again = generate(
        str(tiny_sd), None, "benign", "plms", 4, cfg, tmp_path / "i", tmp_path / "m.csv", device="cpu"
    )
    pd.testing.assert_frame_equal(first, again)  # the deleted image comes back identical
    assert kept.stat().st_mtime_ns == mtime  # an existing image is kept, not regenerated


def test_seeds_and_steps_are_stable():
    assert image_seed(42, "benign", "euler", 0) == image_seed(42, "benign", "euler", 0)
    assert image_seed(42, "benign", "euler", 0) != image_seed(42, "benign", "euler", 1)
    assert image_seed(42, "benign", "euler", 0) != image_seed(42, "malignant", "euler", 0)
    assert 0 <= image_seed(1, "x", "plms", 10**6) < 2**48
    assert steps_for(20, 123) == 20
    assert steps_for([10, 30, 50], 7) in (10, 30, 50)
    assert steps_for({"min": 5, "max": 5}, 9) == 5
    for bad in (0, [], "20", {"min": 3}):
        with pytest.raises(ConfigError):
            steps_for(bad, 1)


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        generate(
            str(tmp_path / "nope"),
            None,
            "benign",
            "euler",
            1,
            fx.GENERATE,
            tmp_path / "o",
            tmp_path / "m.csv",
            device="cpu",
        )
    assert "\n" not in str(err.value) and "nope" in str(err.value)
    with pytest.raises(ModelNotFoundError) as err:
        pl.load_pipeline("some-org/not-cached-model", device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelNotFoundError, match="LoRA weights"):
        pl.load_pipeline("some-org/not-cached-model", str(tmp_path / "no-lora"), device="cpu")


def test_sampler_missing_from_config(tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match="heun"):
        generate(str(tiny_sd), None, "benign", "heun", 1, fx.GENERATE, tmp_path / "o", tmp_path / "m.csv")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_generation_on_gpu_regenerates(tiny_sd, lora, tmp_path):
    m = generate(
        str(tiny_sd),
        str(lora),
        "benign",
        "euler_a",
        4,
        fx.GENERATE,
        tmp_path / "i",
        tmp_path / "m.csv",
        device="cuda",
    )
    for row in m.itertuples():
        assert np.asarray(Image.open(row.path)).std() > 0
    row = m.iloc[2]
    im = regenerate(row, str(tiny_sd), str(lora), device="cuda")
    assert np.abs(np.asarray(im, np.float64) - _arr(row["path"])).mean() <= 1.0


MODS = {
    "size": {
        "typical": {"weight": 2, "text": ""},
        "tiny": {"weight": 1, "text": "tiny mole"},
        "large": {"weight": 1, "text": "large mole"},
    },
    "skin_tone": {"unspecified": {"weight": 1}, "VI": {"weight": 1, "text": "on Fitzpatrick type VI skin"}},
}


def test_split_counts_are_exact_largest_remainder():
    assert split_counts(10, [0.6, 0.2, 0.2]) == [6, 2, 2]
    assert split_counts(7, [1, 1, 1]) == [3, 2, 2]  # ties: the earlier option gets the extra image
    assert split_counts(5, [0.5, 0.3, 0.2]) == [3, 1, 1]  # quotas 2.5, 1.5, 1.0: largest remainders
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, n = rng.random(rng.integers(1, 8)), int(rng.integers(0, 500))
        c = split_counts(n, w)
        assert sum(c) == n and all(abs(ci - n * wi / w.sum()) < 1 for ci, wi in zip(c, w, strict=True))
    with pytest.raises(ConfigError):
        split_counts(3, [0, 0])
    assert shards(10, 4) == [(0, 4), (4, 4), (8, 2)] and shards(3, 250) == [(0, 3)]


def test_modifier_plan_is_exact_and_independent_of_sharding():
    plan = modifier_plan(MODS, 1000, 42, "benign", "euler")
    sizes = pd.Series([p["size"] for p in plan]).value_counts()
    assert sizes.to_dict() == {"typical": 500, "tiny": 250, "large": 250}
    tones = pd.Series([p["skin_tone"] for p in plan]).value_counts()
    assert tones.to_dict() == {"unspecified": 500, "VI": 500}
    # groups are shuffled independently: tiny moles are spread over both skin tones
    both = pd.crosstab(pd.Series([p["size"] for p in plan]), pd.Series([p["skin_tone"] for p in plan]))
    assert (both.loc["tiny"] > 90).all()
    assert plan == modifier_plan(MODS, 1000, 42, "benign", "euler")  # deterministic
    assert plan != modifier_plan(MODS, 1000, 42, "malignant", "euler")
    assert modifier_plan({}, 3, 42, "benign", "euler") == [{}, {}, {}]


@pytest.fixture(scope="module")
def sharded(tiny_sd, pipe, tmp_path_factory):
    """One class x sampler block of 5 images made as shards (3 + 2) and merged."""
    d = tmp_path_factory.mktemp("shards")
    cfg = {**fx.GENERATE, "samplers": {"euler": {"steps": 3}}, "modifiers": MODS, "batch_size": 2}
    parts = []
    for k, (first, n) in enumerate(shards(5, 3)):
        generate(
            str(tiny_sd),
            None,
            "benign",
            "euler",
            n,
            cfg,
            d / f"{k:03d}",
            d / f"{k:03d}" / "manifest.csv",
            device="cpu",
            first_index=first,
            block_size=5,
            shard=k,
            pipe=pipe,  # the cached tiny pipeline: one model load for both shards
        )
        parts.append(d / f"{k:03d}" / "manifest.csv")
    whole = generate(
        str(tiny_sd), None, "benign", "euler", 5, cfg, d / "whole", d / "whole.csv", device="cpu"
    )
    return d, parts, merge_shards(parts, d / "manifest.csv", block_size=5), whole


def test_shards_merge_into_the_unsharded_block(sharded):
    d, parts, merged, whole = sharded
    assert merged["index"].tolist() == list(range(5)) and merged["shard"].tolist() == [0, 0, 0, 1, 1]
    for col in ("seed", "prompt", "modifiers", "steps"):
        assert merged[col].tolist() == whole[col].tolist(), col
    for a, b in zip(merged["path"], whole["path"], strict=True):
        assert np.abs(_arr(a) - _arr(b)).mean() <= 0.25
    counts = merged["modifiers"].str.extract(r"size=(\w+)")[0].value_counts().to_dict()
    assert counts == dict(zip(["typical", "tiny", "large"], split_counts(5, [2, 1, 1]), strict=True))
    for row in merged.itertuples():
        chosen = dict(p.split("=") for p in row.modifiers.split(";"))
        assert ("tiny mole" in row.prompt) == (chosen["size"] == "tiny")
        assert ("type VI" in row.prompt) == (chosen["skin_tone"] == "VI")
        assert Image.open(row.path).text["parameters"].startswith(row.prompt + "\n")
    with pytest.raises(ConfigError, match="missing \\[3, 4\\]"):
        merge_shards(parts[:1], d / "bad.csv", block_size=5)


def test_section_generate_has_the_split_and_a_sheet_per_class(sharded, tmp_path):
    d, _, merged, _ = sharded
    sheet = tmp_path / "generate_benign.png"
    table = section_generate(
        [d / "manifest.csv"],
        tmp_path / "generate.md",
        {"benign": sheet},
        split_csv=tmp_path / "split.csv",
        per_row=4,
        thumb=32,
    )
    size = table[table["group"] == "size"].set_index("option")["n"]
    chosen = merged["modifiers"].str.extract(r"size=(\w+);skin_tone=(\w+)")
    assert size.sum() == 5 and size.to_dict() == chosen[0].value_counts().to_dict()
    assert table.query("group == 'all'")["n"].tolist() == [5]
    # one row per sampler x modifier option present (sizes + tones), 4 cells of 32 px each
    w, h = Image.open(sheet).size
    n_rows = chosen[0].nunique() + chosen[1].nunique()
    n_cols = min(4, max(chosen[0].value_counts().max(), chosen[1].value_counts().max()))
    assert h == 18 + n_rows * 34 + 2 and w == 150 + n_cols * 34 + 2
    md = (tmp_path / "generate.md").read_text()
    assert "sections/generate_benign.png" in md and "| benign | euler | size |" in md


KOHYA = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
LEGACY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"


@pytest.mark.parametrize("fmt", ["kohya", "legacy_dreambooth"])
def test_lora_files_of_other_trainers_load(tiny_sd, tmp_path, fmt):
    """kohya / web-UI keys (with alpha) and the old DreamBooth script's attention-processor keys."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    r, alpha = 4, 2.0
    down, up = torch.randn(r, 32, generator=g) * 0.1, torch.randn(32, r, generator=g) * 0.1
    if fmt == "kohya":
        sd = {
            f"{KOHYA}.lora_down.weight": down,
            f"{KOHYA}.lora_up.weight": up,
            f"{KOHYA}.alpha": torch.tensor(alpha),
        }
        scale = alpha / r  # kohya scales by alpha / rank
    else:
        sd = {f"{LEGACY}.down.weight": down, f"{LEGACY}.up.weight": up}
        scale = 1.0
    f = tmp_path / f"{fmt}.safetensors"
    save_file(sd, str(f))
    pipe = pl.load_pipeline(str(tiny_sd), str(f), device="cpu", lora_scale=0.5)
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(3, 32, generator=g)
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(delta, 0.5 * scale * x @ down.T @ up.T, atol=1e-5, rtol=1e-4)


def _to_ldm_single_file(model_dir, out):
    """A diffusers SD directory -> one original-layout (web-UI) .safetensors file, as merges are shared.

    The inverse of diffusers' single-file conversion, for SD 1.x-style configs of any size.
    """
    import json
    import re

    from safetensors.torch import load_file, save_file

    m = Path(model_dir)
    ucfg = json.loads((m / "unet/config.json").read_text())
    lpb = ucfg["layers_per_block"]
    sd = {}
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    res = [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("time_emb_proj", "emb_layers.1"),
        ("conv_shortcut", "skip_connection"),
    ]
    for k, v in load_file(m / "unet/diffusion_pytorch_model.safetensors").items():
        head, _, tail = k.rpartition(".")  # tail: weight / bias
        new = None
        for a, b in top.items():
            if head == a:
                new = b
        if mm := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", head):
            b, kind, j, rest = int(mm[1]), mm[2], int(mm[3]), mm[4]
            new = f"input_blocks.{1 + b * (lpb + 1) + j}.{0 if kind == 'resnets' else 1}.{rest}"
        elif mm := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", head):
            new = f"input_blocks.{(int(mm[1]) + 1) * (lpb + 1)}.0.op"
        elif mm := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", head):
            idx = 1 if mm[1] == "attentions" else 2 * int(mm[2])
            new = f"middle_block.{idx}.{mm[3]}"
        elif mm := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", head):
            b, kind, j, rest = int(mm[1]), mm[2], int(mm[3]), mm[4]
            new = f"output_blocks.{b * (lpb + 1) + j}.{0 if kind == 'resnets' else 1}.{rest}"
        elif mm := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", head):
            b = int(mm[1])
            has_attn = "CrossAttn" in ucfg["up_block_types"][b]
            new = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv"
        assert new is not None, k
        if new.split(".")[0] in ("input_blocks", "middle_block", "output_blocks"):
            parts = new.split(".")
            if parts[2] == "0" or (parts[0] == "middle_block" and parts[1] != "1"):
                for a, b in res:
                    new = new.replace(f".{a}", f".{b}") if f".{a}" in new else new
        sd[f"model.diffusion_model.{new}.{tail}"] = v
    vcfg = json.loads((m / "vae/config.json").read_text())
    nv = len(vcfg["up_block_types"])
    vattn = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
    for k, v in load_file(m / "vae/diffusion_pytorch_model.safetensors").items():
        new = k.replace("conv_norm_out", "norm_out")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda mm: f"decoder.up.{nv - 1 - int(mm[1])}.block.",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda mm: f"decoder.up.{nv - 1 - int(mm[1])}.upsample.",
            new,
        )
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda mm: f"mid.block_{int(mm[1]) + 1}.", new)
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in vattn:
                new = new.replace(f".{a}.", f".{b}.")
            if v.ndim == 2:
                v = v[:, :, None, None]  # ldm's attention projections are 1x1 convolutions
        new = new.replace("conv_shortcut", "nin_shortcut")
        sd[f"first_stage_model.{new}"] = v
    for k, v in load_file(m / "text_encoder/model.safetensors").items():
        k = k if k.startswith("text_model.") else f"text_model.{k}"  # transformers 5 drops the prefix
        sd[f"cond_stage_model.transformer.{k}"] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    return out


def test_merged_single_file_checkpoint_generates_like_the_directory(tiny_sd, pipe, tmp_path):
    merged = _to_ldm_single_file(tiny_sd, tmp_path / "merged.safetensors")
    single = pl.load_pipeline(str(tiny_sd), sampler="euler", device="cpu", checkpoint=str(merged))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a), name
    pl.set_sampler(pipe, "euler")
    x, y = (run_batch(p, [5], 4, PROMPT, "", 7.0, 64)[0].astype(float) for p in (pipe, single))
    assert np.abs(x - y).mean() <= 0.25
    with pytest.raises(ConfigError, match="only .safetensors"):
        pl.load_pipeline(str(tiny_sd), device="cpu", checkpoint=str(tmp_path / "merged.ckpt"))


def test_swapping_samplers_does_not_carry_options_over(pipe):
    pl.set_sampler(pipe, "dpmpp_2m_sde_karras")
    assert pipe.scheduler.config.use_karras_sigmas
    pl.set_sampler(pipe, "euler")  # Euler accepts use_karras_sigmas too: it must come from the model
    assert not pipe.scheduler.config.use_karras_sigmas
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"


# ---------------------------------------------------------------------------------------------
# Top-up: a shard replaces images that fail the filter's per-image checks, round after round


def _coin(arr):
    """A verdict that rejects about half of all images, fixed by their pixels (so a resume agrees)."""
    import hashlib

    if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).digest()[0] < 128:
        return [("noise", 9.0, "rejected by the test's coin")]
    return []


def _counting(verdict, seen):
    def check(arr):
        seen.append(arr.copy())
        return verdict(arr)

    return check


TOPUP = {**fx.GENERATE, "samplers": {"euler": {"steps": [2, 5]}}, "modifiers": MODS, "max_rounds": 8}


@pytest.fixture(scope="module")
def topped_up(tiny_sd, pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("topup")
    seen = []
    m = generate(
        str(tiny_sd),
        None,
        "benign",
        "euler",
        6,
        TOPUP,
        d / "000",
        d / "000" / "manifest.csv",
        device="cpu",
        block_size=6,
        pipe=pipe,
        checks=_counting(_coin, seen),
    )
    return d, m, seen


def test_top_up_ends_with_the_target_passing(topped_up):
    d, m, seen = topped_up
    assert list(m.columns) == MANIFEST_COLUMNS
    assert len(seen) == len(m)  # every image generated was checked once
    ok = m[m["verdict"] == "pass"]
    assert sorted(ok["index"]) == list(range(6))  # exactly one passing image per slot
    assert (m["round"] > 0).any() and m["round"].max() >= 2  # the coin rejected some, twice for one
    for i, g in m.groupby("index"):
        g = g.sort_values("round")
        assert g["round"].tolist() == list(range(len(g)))
        assert (g["verdict"].iloc[:-1] == "noise").all() and g["verdict"].iloc[-1] == "pass"
        assert g["seed"].nunique() == len(g)  # a new seed per round ...
        assert g["prompt"].nunique() == 1 and g["modifiers"].nunique() == 1  # ... for the same slot
        assert g["seed"].iloc[0] == image_seed(TOPUP["seed"], "benign", "euler", i)
        for row in g.itertuples():
            assert row.seed == image_seed(TOPUP["seed"], "benign", "euler", i, row.round)
            assert io.sha256_file(row.path) == row.sha256
            assert bool(_coin(_arr(row.path).astype(np.uint8))) == (row.verdict != "pass")
    # the modifier split of the block is exact among the passing images
    sizes = ok["modifiers"].str.extract(r"size=(\w+)")[0].value_counts().to_dict()
    assert sizes == dict(zip(["typical", "tiny", "large"], split_counts(6, [2, 1, 1]), strict=True))
    assert m["source_id"].is_unique and m["path"].map(lambda p: Path(p).is_file()).all()
    merged = merge_shards([d / "000" / "manifest.csv"], d / "manifest.csv", block_size=6)
    assert len(merged) == len(m)
    broken = m[~((m["index"] == m.loc[m["round"] == 1, "index"].iloc[0]) & (m["round"] == 0))]
    broken.to_csv(d / "broken.csv", index=False)
    with pytest.raises(ConfigError, match="exactly once"):
        merge_shards([d / "broken.csv"], d / "bad.csv", block_size=6)


def test_steps_are_drawn_per_image_recorded_and_regenerate(topped_up, tiny_sd):
    _, m, _ = topped_up
    assert m["steps"].between(2, 5).all() and m["steps"].nunique() >= 2
    assert m["steps"].tolist() == [steps_for([2, 5], s) for s in m["seed"]]
    late = m[m["round"] >= 2].iloc[0]
    other = m[(m["round"] == 0) & (m["steps"] != late["steps"])].iloc[0]
    for row in (late, other):
        im = regenerate(row, str(tiny_sd), None, device="cpu", threads=1)
        assert np.abs(np.asarray(im, np.float64) - _arr(row["path"])).mean() <= 1.0
        text = Image.open(row["path"]).text["parameters"]
        assert f"Steps: {row['steps']}," in text and f"Seed: {row['seed']}," in text


def test_top_up_resumes_and_follows_changed_checks(topped_up, tiny_sd, pipe, tmp_path):
    import shutil

    d, m, _ = topped_up
    shard = tmp_path / "000"
    shutil.copytree(d / "000", shard)
    (shard / "manifest.csv").unlink()
    # killed before the last top-up image was written: alone in its round, it is remade in the same
    # batch (of one), so its pixels and verdict come back exactly
    last = m[m["round"] == m["round"].max()]
    assert len(last) == 1
    (shard / Path(last["path"].iloc[0]).name).unlink()
    kept = shard / Path(m["path"].iloc[0]).name
    mtime = kept.stat().st_mtime_ns
    seen = []

    def run(checks, cfg=TOPUP):
        return generate(
            str(tiny_sd),
            None,
            "benign",
            "euler",
            6,
            cfg,
            shard,
            shard / "manifest.csv",
            device="cpu",
            block_size=6,
            pipe=pipe,
            checks=checks,
        )

    again = run(_counting(_coin, seen))
    cols = ["index", "round", "seed", "steps", "verdict", "prompt", "sha256"]
    assert again[cols].equals(m[cols])  # the same images and verdicts; the deleted one came back
    assert kept.stat().st_mtime_ns == mtime and len(seen) == len(m)  # kept images are checked again
    # checks that pass everything need no top-up: one round, and no stray top-up files left behind
    loose = run(None)
    assert loose["round"].eq(0).all() and (loose["verdict"] == "pass").all() and len(loose) == 6
    assert not list(shard.glob("*_r*.png")) and kept.stat().st_mtime_ns == mtime
    # other settings: the images on disk are not theirs, so they are made anew
    other = run(None, {**TOPUP, "guidance_scale": 3.0})
    assert kept.stat().st_mtime_ns != mtime and other["sha256"].iloc[0] != m["sha256"].iloc[0]


def test_round_bound_stops_and_reports_the_shortfall(tiny_sd, pipe, tmp_path, caplog):
    from dermsynth.filter import kept_vs_target

    cfg = {**fx.GENERATE, "samplers": {"plms": {"steps": 2}}, "max_rounds": 2}
    with caplog.at_level("WARNING", logger="dermsynth"):
        m = generate(
            str(tiny_sd),
            None,
            "malignant",
            "plms",
            3,
            cfg,
            tmp_path / "s",
            tmp_path / "s.csv",
            device="cpu",
            pipe=pipe,
            checks=lambda arr: [("blurry", 0.0, "always")],
        )
        merge_shards([tmp_path / "s.csv"], tmp_path / "m.csv", block_size=3)
    assert len(m) == 6 and sorted(m["round"]) == [0, 0, 0, 1, 1, 1] and (m["verdict"] == "blurry").all()
    assert "0 of 3 images pass" in caplog.text and "3 short" in caplog.text
    table = kept_vs_target(m, m.iloc[:0])
    assert table[["target", "generated", "kept", "short"]].values.tolist() == [[3, 6, 0, 3]]


def test_filter_stage_gives_the_shard_verdicts(tiny_sd, pipe, tmp_path):
    """The shard's checks are the filter's: a strict threshold rejects some, and the filter agrees."""
    from dermsynth.artifacts import gray_of
    from dermsynth.filter import filter_synthetic

    off = {"activate": False}
    cfg = {**fx.GENERATE, "samplers": {"euler_a": {"steps": 3}}, "max_rounds": 4}
    probe = generate(
        str(tiny_sd), None, "benign", "euler_a", 6, cfg, tmp_path / "p", tmp_path / "p.csv", pipe=pipe
    )
    stds = sorted(float(gray_of(_arr(p).astype(np.uint8)).std()) for p in probe["path"])
    checks = {
        "min_std": (stds[1] + stds[2]) / 2,  # the two flattest of round 0 fail
        **{k: off for k in ("clipped", "cast", "noise", "tiling", "blur", "lesion")},
    }
    m = generate(
        str(tiny_sd),
        None,
        "benign",
        "euler_a",
        6,
        cfg,
        tmp_path / "t",
        tmp_path / "t.csv",
        pipe=pipe,
        checks=checks,
    )
    assert (m.loc[m["round"] == 0, "verdict"] == "flat").sum() == 2 and (m["round"] > 0).any()
    kept, rej = filter_synthetic(
        [str(tmp_path / "t.csv")],
        tmp_path / "k.csv",
        tmp_path / "r.csv",
        {**checks, "duplicates": off, "memorization": off},
    )
    assert sorted(kept["source_id"]) == sorted(m.loc[m["verdict"] == "pass", "source_id"])
    assert dict(zip(rej["path"], rej["reason"], strict=True)) == dict(
        zip(m.loc[m["verdict"] != "pass", "path"], m.loc[m["verdict"] != "pass", "verdict"], strict=True)
    )


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_speed_up_compiles_the_unet_in_the_configured_mode(monkeypatch, mode):
    # generate.compile_mode reaches torch.compile (reduce-overhead: each denoising step a CUDA graph)
    calls = []

    class Pipe:
        device = torch.device("cuda")
        unet, vae = object(), object()

    monkeypatch.setattr(pl, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(kw) or ("compiled", m))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    pipe = pl.speed_up(Pipe(), channels_last=False, compile=True, compile_mode=mode)
    assert calls == [{"fullgraph": False, "mode": mode}] and pipe.unet[0] == "compiled"
    assert pl.speed_up(pipe, compile=True, compile_mode=mode) is pipe and len(calls) == 1  # once only
