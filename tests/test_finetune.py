"""DreamBooth-LoRA training: outputs, LoRA effect, exact resume, divergence, config errors."""

import json

import _diffusion_fixtures as fx
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dermsynth.diffusion.pipeline import load_pipeline
from dermsynth.diffusion.train import train_lora
from dermsynth.errors import ConfigError, ModelNotFoundError, TrainingError

LORA = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return fx.tiny_sd(tmp_path_factory)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return fx.lesion_images(tmp_path_factory)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    return fx.trained_lora(tmp_path_factory)


def _images(pipe, n=2, seed=3, **kw):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return pipe(["a dermoscopic image of a malignant skin lesion"] * n, num_inference_steps=4, generator=gens,
                output_type="np", **kw).images


def test_training_writes_all_outputs(trained, tmp_path_factory):
    out, summary = trained
    for name in (LORA, "loss.csv", "loss.png", "train_summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out.parent / "out.ckpt").exists()  # checkpoints removed once the LoRA is final
    loss = pd.read_csv(out / "loss.csv")
    assert list(loss.columns) == ["step", "epoch", "loss", "lr"]
    assert loss["step"].tolist() == list(range(1, 31))
    assert np.isfinite(loss["loss"]).all()
    # 6 images, batch 2 -> 3 steps per epoch; warmup of 2 steps then constant 1e-3
    assert loss["epoch"].tolist()[:7] == [0, 0, 0, 1, 1, 1, 2]
    assert loss["lr"].iloc[0] == pytest.approx(5e-4) and loss["lr"].iloc[-1] == pytest.approx(1e-3)
    on_disk = json.loads((out / "train_summary.json").read_text())
    assert on_disk == summary
    assert summary["steps"] == 30 and summary["epochs"] == 10 and summary["n_images"] == 6
    assert summary["mixed_precision"] == "no"  # fp16 asked, CPU -> fp32
    assert summary["device"] == "cpu" and summary["resumed_from"] is None
    assert summary["peak_mem_gb"] > 0 and summary["it_s"] > 0


def test_lora_file_has_diffusers_keys_and_loads(trained, tiny_sd):
    out, _ = trained
    sd = load_file(out / LORA)
    assert sd and all(k.startswith("unet.") for k in sd)
    assert any(k.endswith("to_q.lora.down.weight") for k in sd)  # diffusers naming
    assert all(v.dtype == torch.float32 for v in sd.values())
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, use_safetensors=True, safety_checker=None)
    pipe.load_lora_weights(str(out), adapter_name="derm")  # the directory form, as diffusers users do
    assert "derm" in pipe.get_active_adapters()


def test_lora_changes_output_and_scale_zero_is_the_base(trained, tiny_sd):
    out, _ = trained
    base = load_pipeline(str(tiny_sd), device="cpu")
    base.set_progress_bar_config(disable=True)
    ref = _images(base)
    tuned = _images(load_pipeline(str(tiny_sd), str(out), device="cpu", lora_scale=1.0))
    zero = _images(load_pipeline(str(tiny_sd), str(out / LORA), device="cpu", lora_scale=0.0))
    assert np.abs(tuned - ref).mean() > 1e-3
    assert np.abs(zero - ref).max() < 1e-6


def test_resume_ends_at_the_same_lora(tiny_sd, images, tmp_path):
    cfg = {**fx.FINETUNE, "max_train_steps": 6, "checkpointing_steps": 2, "gradient_accumulation_steps": 2,
           "optimizer": "adamw8bit", "mixed_precision": "no"}
    train_lora(str(tiny_sd), images, tmp_path / "full", cfg, tmp_path / "full.ckpt", threads=1, device="cpu")

    class Killed(Exception):
        pass

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed

    ckpt = tmp_path / "part.ckpt"
    with pytest.raises(Killed):
        train_lora(str(tiny_sd), images, tmp_path / "part", cfg, ckpt, threads=1, device="cpu",
                   on_step=kill_at_5)
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "part" / LORA).exists()
    summary = train_lora(str(tiny_sd), images, tmp_path / "part", cfg, ckpt, threads=1, device="cpu")
    assert summary["resumed_from"] == 4 and summary["steps_this_run"] == 2
    a, b = load_file(tmp_path / "full" / LORA), load_file(tmp_path / "part" / LORA)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    la, lb = pd.read_csv(tmp_path / "full" / "loss.csv"), pd.read_csv(tmp_path / "part" / "loss.csv")
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-5)
    assert not ckpt.exists()


def test_checkpoint_from_other_settings_is_ignored(tiny_sd, images, tmp_path, caplog):
    cfg = {**fx.FINETUNE, "max_train_steps": 3, "checkpointing_steps": 1, "mixed_precision": "no"}

    class Killed(Exception):
        pass

    def stop(step, loss):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_lora(str(tiny_sd), images, tmp_path / "o", cfg, tmp_path / "c", device="cpu", on_step=stop)
    other = {**cfg, "rank": 2}
    summary = train_lora(str(tiny_sd), images, tmp_path / "o", other, tmp_path / "c", device="cpu")
    assert summary["resumed_from"] is None
    assert "other data or settings" in caplog.text


def test_nan_loss_raises_training_error_naming_the_step(tiny_sd, images, tmp_path):
    cfg = {**fx.FINETUNE, "max_train_steps": 5, "lr_warmup_steps": 0, "lora_learning_rate": 1e30,
           "max_grad_norm": 1e30, "mixed_precision": "no"}
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step \d+") as err:
        train_lora(str(tiny_sd), images, tmp_path / "o", cfg, tmp_path / "c", device="cpu")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o" / LORA).exists()


@pytest.mark.parametrize("key,value", [("optimizer", "sgd"), ("lr_scheduler", "step"),
                                       ("mixed_precision", "fp8"), ("train_batch_size", 0)])
def test_bad_config_is_a_config_error(tiny_sd, images, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        train_lora(str(tiny_sd), images, tmp_path / "o", {**fx.FINETUNE, key: value}, tmp_path / "c")


def test_missing_model_is_one_line(images, tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        train_lora(str(tmp_path / "no-model"), images, tmp_path / "o", fx.FINETUNE, tmp_path / "c",
                   device="cpu")
    assert "\n" not in str(err.value) and "no-model" in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_adamw8bit_training_on_gpu(tiny_sd, images, tmp_path):
    # the paper's precision/optimizer: fp16 frozen weights, fp32 LoRA master weights, GradScaler, 8-bit AdamW
    cfg = {**fx.FINETUNE, "max_train_steps": 12, "checkpointing_steps": 4, "optimizer": "adamw8bit",
           "mixed_precision": "fp16", "lora_learning_rate": 1e-4}
    summary = train_lora(str(tiny_sd), images, tmp_path / "o", cfg, tmp_path / "c", device="cuda")
    assert summary["device"] == "cuda" and summary["mixed_precision"] == "fp16"
    assert summary["optimizer"] == "AdamW8bit" and summary["peak_mem_gb"] > 0
    sd = load_file(tmp_path / "o" / LORA)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())
    assert np.isfinite(pd.read_csv(tmp_path / "o" / "loss.csv")["loss"]).all()
    pipe = load_pipeline(str(tiny_sd), str(tmp_path / "o"), device="cuda")
    assert pipe.unet.dtype == torch.float16
    assert np.isfinite(_images(pipe)).all()
