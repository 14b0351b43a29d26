"""Tiny offline models: real classes, real tokenizer ids, loadable by the same calls as the hub models."""

import json

import _diffusion_fixtures as fx
import numpy as np
import pytest
import torch

from dermsynth import tiny
from dermsynth.errors import ConfigError

# ids from ENVIRONMENT.md (equal to open_clip's SimpleTokenizer and OpenAI's CLIP)
PROMPT = "a dermoscopic image of a malignant skin lesion"
IDS = [49406, 320, 839, 9840, 1282, 2867, 539, 320, 41122, 773, 3575, 534, 1015, 49407]


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return fx.tiny_sd(tmp_path_factory)


def test_clip_tokenizer_matches_openai_ids(tmp_path):
    from transformers import CLIPTokenizer

    out = tiny.build_clip_tokenizer(tmp_path / "tok")
    assert (out / "vocab.json").exists() and (out / "merges.txt").exists()
    tok = CLIPTokenizer.from_pretrained(out, model_max_length=77)
    assert tok(PROMPT).input_ids == IDS
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    vocab = json.loads((out / "vocab.json").read_text())
    # byte tokens in bytes_to_unicode order: printable '!' first, not byte 0
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    padded = tok(PROMPT, padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_tiny_sd_is_a_real_sd_pipeline(tiny_sd):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, use_safetensors=True, safety_checker=None)
    assert pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer(PROMPT).input_ids == IDS
    assert isinstance(pipe.scheduler, PNDMScheduler)
    sc = pipe.scheduler.config
    assert (sc.beta_start, sc.beta_end, sc.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert pipe.unet.config.sample_size * 8 == 64 and pipe.unet.config.cross_attention_dim == 32
    assert pipe.safety_checker is None
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert n_unet < 2_000_000
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    out = pipe(["a", "b"], num_inference_steps=2, generator=gen, output_type="np")
    assert out.images.shape == (2, 64, 64, 3)
    assert np.isfinite(out.images).all()
    assert (tiny_sd / "tokenizer" / "vocab.json").exists()
    assert json.loads((tiny_sd / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 77


def test_tiny_sd_deterministic_per_seed(tiny_sd, tmp_path):
    from safetensors.torch import load_file

    again = tiny.build("sd", tmp_path / "sd0", seed=0)
    other = tiny.build("sd", tmp_path / "sd1", seed=1)
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b, c = (load_file(d / name) for d in (tiny_sd, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kind", ["vit", "mobilenet_v2"])
def test_tiny_classifiers_load_like_hub_checkpoints(kind, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    d = tiny.build(kind, tmp_path / kind, seed=0)
    model = AutoModelForImageClassification.from_pretrained(d, num_labels=2, ignore_mismatched_sizes=True)
    proc = AutoImageProcessor.from_pretrained(d)
    size = model.config.image_size
    assert size == 64
    x = proc(np.zeros((90, 70, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert tuple(x.shape) == (1, 3, size, size)
    assert model(pixel_values=x).logits.shape == (1, 2)


def test_unknown_kind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="sd, vit, mobilenet_v2"):
        tiny.build("resnet", tmp_path / "x")
    assert not (tmp_path / "x").exists()
