"""A LoRA trained with alpha != rank comes back at its trained strength through every loader.

Trained with rank 4 and alpha 16, its update is scaled by alpha / rank = 4. A file that keeps only the
tensors loads as alpha = rank (scale 1): a quarter of the trained strength.
"""

import copy
import json
import re

import _diffusion_fixtures as fx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dermsynth.diffusion.finetune import checkpoints, settings, train_lora
from dermsynth.diffusion.pipeline import load_pipeline

LORA = "pytorch_lora_weights.safetensors"
TOL = 1e-5
#: the web UI's (extensions-builtin/Lora) patterns for diffusers-named UNet keys
WEBUI_KEY = re.compile(
    r"lora_unet_(down_blocks_\d+_attentions_\d+|mid_block_attentions_\d+|up_blocks_\d+_attentions_\d+)_\w+"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)"
)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return fx.tiny_sd(tmp_path_factory)


@pytest.fixture(scope="module")
def strong(tiny_sd, tmp_path_factory, request):
    """(output dir, the UNet as training left it in memory) of a rank 4 / alpha 16 LoRA."""
    kept = {}
    save = checkpoints.save_lora

    def spy(unet, *args, **kw):
        kept["unet"] = copy.deepcopy(unet)
        return save(unet, *args, **kw)

    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setattr(checkpoints, "save_lora", spy)
    root = tmp_path_factory.mktemp("strong")
    cfg = {**fx.FINETUNE, "alpha": 16, "max_train_steps": 6}
    train_lora(
        str(tiny_sd), fx.lesion_images(tmp_path_factory), root / "run", cfg, root / "run.ckpt", device="cpu"
    )
    mp.undo()
    return root / "run", kept["unet"].eval()


def _unet_out(unet):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([10, 600]), cond).sample


def _plain_pipe(tiny_sd):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(tiny_sd), use_safetensors=True, safety_checker=None)


def _loaded(tiny_sd, path, how):
    """The UNet after loading the LoRA at ``path`` through our generate loader or diffusers' plain one."""
    if how == "generate":
        return load_pipeline(str(tiny_sd), str(path), device="cpu").unet
    pipe = _plain_pipe(tiny_sd)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    return pipe.unet


def _diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
@pytest.mark.parametrize("how", ["generate", "load_lora_weights"])
def test_every_loader_applies_the_trained_strength(strong, tiny_sd, fmt, how):
    out, trained_unet = strong
    path = out / (LORA if fmt == "diffusers" else "run_kohya.safetensors")
    ref = _unet_out(trained_unet)
    got = _unet_out(_loaded(tiny_sd, path, how))
    base = _unet_out(_plain_pipe(tiny_sd).unet)
    assert _diff(base, ref) > 100 * TOL  # the LoRA changes the output far beyond the tolerance
    assert _diff(got, ref) < TOL


def test_without_the_adapter_metadata_the_lora_loads_at_a_quarter_strength(strong, tiny_sd, tmp_path):
    # the control: our file as it was before (tensors only), and kohya's alpha as diffusers writes it
    out, trained_unet = strong
    ref, base = _unet_out(trained_unet), _unet_out(_plain_pipe(tiny_sd).unet)
    save_file(load_file(out / LORA), tmp_path / LORA)
    kohya = load_file(out / "run_kohya.safetensors")
    rank_alpha = {k: torch.tensor(4.0) if k.endswith(".alpha") else v for k, v in kohya.items()}
    save_file(rank_alpha, tmp_path / "kohya.safetensors")
    for name in (LORA, "kohya.safetensors"):
        got = _unet_out(_loaded(tiny_sd, tmp_path / name, "load_lora_weights"))
        assert _diff(got, ref) > 100 * TOL, name
        # a LoRA's effect is linear in its scale to first order: a quarter of it is left
        assert _diff(got, base) == pytest.approx(_diff(ref, base) / 4, rel=0.2), name


def test_files_carry_alpha_and_the_kohya_one_is_in_the_web_ui_format(strong):
    out, trained_unet = strong
    with safe_open(out / LORA, "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["lora_adapter_metadata"])  # what diffusers' loader builds its LoraConfig from
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 16
    ours, kohya = load_file(out / LORA), load_file(out / "run_kohya.safetensors")
    bad = [k for k in kohya if not WEBUI_KEY.fullmatch(k)]
    assert not bad, bad[:3]
    downs = sorted(k for k in kohya if k.endswith(".lora_down.weight"))
    assert len(downs) == len(ours) // 2 == len(kohya) // 3
    for k in downs:
        assert kohya[k].shape[0] == 4 and kohya[k.replace("lora_down.weight", "alpha")].item() == 16.0
    # the same numbers as our file, under other names
    assert sorted(float(v.double().sum()) for v in kohya.values() if v.ndim) == pytest.approx(
        sorted(float(v.double().sum()) for v in ours.values()), abs=1e-6
    )


def test_export_must_keep_the_diffusers_file():
    from dermsynth.errors import ConfigError

    with pytest.raises(ConfigError, match="finetune.export"):
        settings.resolve({"export": ["kohya"]})
    assert settings.resolve({"export": ["diffusers"]})["export"] == ["diffusers"]


def test_model_card_describes_the_run_it_sits_beside(tmp_path_factory):
    import yaml

    from dermsynth import io
    from dermsynth.config import section

    out, summary = fx.trained_lora(tmp_path_factory)
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == summary["pretrained"] and meta["library_name"] == "diffusers"
    assert meta["license"] == section("finetune")["card_license"]
    assert {"lora", "dreambooth", "dermoscopy"} <= set(meta["tags"])
    labels = summary["labels"]
    assert meta["instance_prompt"] == [fx.FINETUNE["instance_prompt"].format(label=lb) for lb in labels]
    # the sha256 it gives is the weights' own, and every figure it shows is in the folder
    assert f"`{io.sha256_file(out / LORA)}`" in body
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", body):
        assert (out / fig).is_file(), fig
    images = fx.lesion_images(tmp_path_factory)
    for label, n in images.groupby("label").size().items():
        assert f"| {label} | {n} |" in body
    assert f"| optimizer steps | {summary['steps']} |" in body
    assert "Not for diagnosis" in body


def test_the_same_lora_saved_in_two_processes_has_one_sha256(tmp_path, tiny_sd):
    """The file's sha256 is the LoRA's identity in every manifest: no hash-seed-dependent bytes."""
    import subprocess
    import sys

    script = """
import sys, torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from dermsynth import io
from dermsynth.diffusion.finetune import checkpoints
from pathlib import Path
unet = UNet2DConditionModel.from_pretrained(sys.argv[1], subfolder="unet")
torch.manual_seed(0)
unet.add_adapter(LoraConfig(r=4, lora_alpha=16, init_lora_weights="gaussian",
                            target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
out = Path(sys.argv[2]); out.mkdir(parents=True)
lora = checkpoints.save_lora(unet, out, "k.safetensors")
print(io.sha256_file(lora) + io.sha256_file(out / "k.safetensors"))
"""
    shas = set()
    for seed in ("1", "2", "3"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", script, str(tiny_sd), str(tmp_path / seed)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        shas.add(run.stdout.split()[-1])
    assert len(shas) == 1, shas
