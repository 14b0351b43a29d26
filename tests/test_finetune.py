"""DreamBooth-LoRA training: outputs, LoRA effect, exact resume, divergence, config errors."""

import json
import math
import shutil

import _diffusion_fixtures as fx
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dermsynth.diffusion.finetune import train_lora
from dermsynth.diffusion.pipeline import load_pipeline
from dermsynth.errors import ConfigError, ModelNotFoundError, TrainingError

LORA = "pytorch_lora_weights.safetensors"


class Killed(Exception):
    """A job killed from inside its training loop (what SIGKILL does, minus the process)."""


def kill_at(n):
    """An ``on_step`` callback that kills the run when step ``n`` is reached."""

    def on_step(step, loss):
        if step == n:
            raise Killed

    return on_step


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
    return pipe(
        ["a dermoscopic image of a malignant skin lesion"] * n,
        num_inference_steps=4,
        generator=gens,
        output_type="np",
        **kw,
    ).images


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
    cfg = {
        **fx.FINETUNE,
        "max_train_steps": 6,
        "checkpointing_steps": 2,
        "gradient_accumulation_steps": 2,
        "optimizer": "adamw8bit",
        "mixed_precision": "no",
    }
    train_lora(str(tiny_sd), images, tmp_path / "full", cfg, tmp_path / "full.ckpt", threads=1, device="cpu")

    ckpt = tmp_path / "part.ckpt"
    with pytest.raises(Killed):
        train_lora(
            str(tiny_sd), images, tmp_path / "part", cfg, ckpt, threads=1, device="cpu", on_step=kill_at(5)
        )
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

    with pytest.raises(Killed):
        train_lora(
            str(tiny_sd), images, tmp_path / "o", cfg, tmp_path / "c", device="cpu", on_step=kill_at(2)
        )
    other = {**cfg, "rank": 2}
    summary = train_lora(str(tiny_sd), images, tmp_path / "o", other, tmp_path / "c", device="cpu")
    assert summary["resumed_from"] is None
    assert "other data or settings" in caplog.text


def test_nan_loss_raises_training_error_naming_the_step(tiny_sd, images, tmp_path):
    cfg = {
        **fx.FINETUNE,
        "max_train_steps": 5,
        "lr_warmup_steps": 0,
        "lora_learning_rate": 1e30,
        "max_grad_norm": 1e30,
        "mixed_precision": "no",
    }
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step \d+") as err:
        train_lora(str(tiny_sd), images, tmp_path / "o", cfg, tmp_path / "c", device="cpu")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o" / LORA).exists()


@pytest.mark.parametrize(
    "key,value",
    [
        ("optimizer", "sgd"),
        ("lr_scheduler", "step"),
        ("mixed_precision", "fp8"),
        ("train_batch_size", 0),
        ("compile_mode", "fast"),
    ],
)
def test_bad_config_is_a_config_error(tiny_sd, images, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        train_lora(str(tiny_sd), images, tmp_path / "o", {**fx.FINETUNE, key: value}, tmp_path / "c")


def test_missing_model_is_one_line(images, tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        train_lora(
            str(tmp_path / "no-model"), images, tmp_path / "o", fx.FINETUNE, tmp_path / "c", device="cpu"
        )
    assert "\n" not in str(err.value) and "no-model" in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_adamw8bit_training_on_gpu(tiny_sd, images, tmp_path):
    # the paper's precision/optimizer: fp16 frozen weights, fp32 LoRA master weights, GradScaler, 8-bit AdamW
    cfg = {
        **fx.FINETUNE,
        "max_train_steps": 12,
        "checkpointing_steps": 4,
        "optimizer": "adamw8bit",
        "mixed_precision": "fp16",
        "lora_learning_rate": 1e-4,
    }
    summary = train_lora(str(tiny_sd), images, tmp_path / "o", cfg, tmp_path / "c", device="cuda")
    assert summary["device"] == "cuda" and summary["mixed_precision"] == "fp16"
    assert summary["optimizer"] == "AdamW8bit" and summary["peak_mem_gb"] > 0
    # what the process held covers what it allocated, in training and with validation
    assert summary["peak_mem_reserved_gb"] >= summary["peak_mem_gb"]
    assert summary["peak_mem_reserved_with_validation_gb"] >= summary["peak_mem_with_validation_gb"]
    sd = load_file(tmp_path / "o" / LORA)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())
    assert np.isfinite(pd.read_csv(tmp_path / "o" / "loss.csv")["loss"]).all()
    pipe = load_pipeline(str(tiny_sd), str(tmp_path / "o"), device="cuda")
    assert pipe.unet.dtype == torch.float16
    assert np.isfinite(_images(pipe)).all()


# ---------------------------------------------------------------------------------------------
# options users of diffusers' script expect


def _train(tiny_sd, images, tmp_path, name, on_step=None, **over):
    cfg = {**fx.FINETUNE, "max_train_steps": 6, "checkpointing_steps": 100, "mixed_precision": "no", **over}
    summary = train_lora(
        str(tiny_sd),
        images,
        tmp_path / name,
        cfg,
        tmp_path / f"{name}.ckpt",
        threads=1,
        device="cpu",
        on_step=on_step,
    )
    return load_file(tmp_path / name / LORA), summary


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_cached_latents_train_the_same_lora_as_encoding_every_step(tiny_sd, images, tmp_path):
    # the cache holds both flips; the step draws mean + std * eps from it with the same generator
    cached, s1 = _train(tiny_sd, images, tmp_path, "cached", cache_latents=True, random_flip=True)
    encoded, s2 = _train(tiny_sd, images, tmp_path, "encoded", cache_latents=False, random_flip=True)
    assert s1["cache_latents"] and not s2["cache_latents"]
    assert _max_diff(cached, encoded) < 1e-5


def test_checkpointing_and_attention_kernels_do_not_change_the_lora(tiny_sd, images, tmp_path):
    ref, s1 = _train(tiny_sd, images, tmp_path, "ref")
    other, s2 = _train(tiny_sd, images, tmp_path, "gc", gradient_checkpointing=True, attention="eager")
    assert s1["attention"] == "sdpa" and not s1["gradient_checkpointing"]
    assert s2["attention"] == "eager" and s2["gradient_checkpointing"]
    # same maths, other kernels: float rounding only (Adam steps of lr 1e-3 bound any drift)
    assert _max_diff(ref, other) < 1e-4


def test_fused_qkv_lora_trains_the_same_lora(tiny_sd, images, tmp_path):
    ref, s1 = _train(tiny_sd, images, tmp_path, "ref")
    fused, s2 = _train(tiny_sd, images, tmp_path, "fused", fuse_qkv_lora=True)
    assert not s1["fuse_qkv_lora"] and s2["fuse_qkv_lora"]
    # the same LoRA tensors, saved under the same names, within float rounding of 6 Adam steps
    assert _max_diff(ref, fused) < 1e-4
    with pytest.raises(ConfigError, match="fuse_qkv_lora needs finetune.attention: sdpa"):
        _train(tiny_sd, images, tmp_path, "eager", fuse_qkv_lora=True, attention="eager")


def test_min_snr_weighting_and_noise_offset(tiny_sd, images, tmp_path):
    _train(tiny_sd, images, tmp_path, "plain", max_train_steps=2)
    # gamma below every timestep's SNR (min 0.0047 at t=999): every sample's weight gamma/SNR < 1
    _train(tiny_sd, images, tmp_path, "snr", max_train_steps=2, snr_gamma=1e-3)
    _train(tiny_sd, images, tmp_path, "offset", max_train_steps=2, noise_offset=0.1)
    plain, snr, offset = (pd.read_csv(tmp_path / n / "loss.csv")["loss"] for n in ("plain", "snr", "offset"))
    # step 1: same weights and draws, so only the weighting differs
    assert snr[0] < 0.5 * plain[0]
    assert abs(offset[0] - plain[0]) > 1e-6


def test_validation_images_every_n_epochs_and_grid(tiny_sd, images, tmp_path):
    # 6 images, batch 2: 3 steps per epoch; 9 steps = 3 epochs, validation after each
    _, summary = _train(
        tiny_sd, images, tmp_path, "val", max_train_steps=9, validation_epochs=1, num_validation_images=2
    )
    val = tmp_path / "val" / "validation"
    assert sorted(p.name for p in val.iterdir()) == ["step-0000003", "step-0000006", "step-0000009"]
    first = np.asarray(Image.open(val / "step-0000003" / "benign_0.png"), dtype=float)
    last = np.asarray(Image.open(val / "step-0000009" / "benign_0.png"), dtype=float)
    assert first.shape == (64, 64, 3) and np.abs(first - last).mean() > 0.1  # same seed, trained further
    assert len(list((val / "step-0000009").glob("*.png"))) == 4  # 2 per class
    grid = Image.open(tmp_path / "val" / "validation_grid.png")
    pad = 2  # imaging.contact_sheet's gap between cells: 4 columns and 3 rows of 64 px images
    assert grid.size == (110 + 4 * (64 + pad) + pad, 14 + 3 * (64 + pad) + pad)
    assert summary["it_s"] > 0


def test_per_class_mode_trains_one_lora_per_class(tiny_sd, images, tmp_path):
    summary = train_lora(
        str(tiny_sd),
        images,
        tmp_path / "pc",
        {**fx.FINETUNE, "max_train_steps": 3, "mixed_precision": "no", "lora_mode": "per_class"},
        tmp_path / "pc.ckpt",
        device="cpu",
    )
    assert sorted(summary["runs"]) == ["benign", "malignant"]
    for label, run in summary["runs"].items():
        assert run["labels"] == [label] and run["n_images"] == 3
        pipe = load_pipeline(str(tiny_sd), str(tmp_path / "pc" / label), device="cpu")
        assert np.isfinite(_images(pipe, n=1)).all()
        # each class's kohya copy holds that class's LoRA, named after run and class
        q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        ours = load_file(tmp_path / "pc" / label / LORA)[f"unet.{q}.lora.down.weight"]
        kohya = load_file(tmp_path / "pc" / label / f"pc_{label}_kohya.safetensors")
        torch.testing.assert_close(kohya[f"lora_unet_{q.replace('.', '_')}.lora_down.weight"], ours)
    loss = pd.read_csv(tmp_path / "pc" / "loss.csv")
    assert sorted(loss["lora"].unique()) == ["benign", "malignant"] and len(loss) == 6
    assert (tmp_path / "pc" / "validation_grid.png").exists() and not (tmp_path / "pc.ckpt").exists()


def test_multi_gpu_runs_through_accelerate_launch(tmp_path, monkeypatch):
    from accelerate.commands.launch import launch_command_parser

    from dermsynth.diffusion import finetune

    cfg = {**fx.FINETUNE, "mixed_precision": "bf16"}
    cmd = finetune.launch.launch_command(
        4, "models/sd", "ft.csv", "out/lora", cfg, "out/lora.ckpt", threads=3, python="py"
    )
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"]
    launch = launch_command_parser().parse_args(cmd[3:])  # accelerate's own parser accepts it
    assert launch.num_processes == 4 and launch.multi_gpu and launch.module
    assert launch.mixed_precision == "bf16" and launch.training_script == "dermsynth.diffusion.finetune"
    assert 1024 <= launch.main_process_port < 65536  # its own port, not torchrun's shared default
    ours = finetune.launch.parse_args(launch.training_script_args)
    assert ours.pretrained_model_name_or_path == "models/sd" and ours.instance_data_csv == "ft.csv"
    assert ours.output_dir == "out/lora" and ours.checkpoint_dir == "out/lora.ckpt" and ours.threads == 3
    assert json.loads(ours.config_json) == cfg
    with pytest.raises(ConfigError):
        finetune.launch.launch_command(1, "m", "x.csv", "o", cfg, "c")

    calls = []

    class Done:
        returncode = 0

    def fake_run(cmd, env):
        calls.append(cmd)
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "train_summary.json").write_text('{"num_processes": 2}')
        return Done()

    monkeypatch.setattr("subprocess.run", fake_run)
    monkeypatch.setattr(
        finetune.launch, "train_lora", lambda *a, **k: pytest.fail("2 GPUs must not train in-process")
    )
    assert finetune.run_finetune("m", "x.csv", tmp_path / "o", cfg, tmp_path / "c", gpus=2) == {
        "num_processes": 2
    }
    assert calls[0][calls[0].index("--num_processes") + 1] == "2"


def test_two_processes_through_accelerate_launch_train_the_lora_of_one_with_two_micro_batches(
    tiny_sd, images, tmp_path
):
    """The real multi-GPU path (accelerate launch, DDP) run as two CPU processes over gloo.

    Each process takes every other micro-batch and DDP averages the gradients, so two processes
    must train the LoRA that one process trains with gradient accumulation 2.
    """
    from dermsynth.diffusion.finetune import run_finetune

    csv = tmp_path / "ft.csv"
    images.to_csv(csv, index=False)
    cfg = {**fx.FINETUNE, "max_train_steps": 6, "checkpointing_steps": 4}

    # a one-process run of the same settings, killed after its step-4 checkpoint
    with pytest.raises(Killed):
        _train(tiny_sd, images, tmp_path, "two", on_step=kill_at(5), **cfg)
    assert (tmp_path / "two.ckpt" / "checkpoint-4").is_dir()

    two = run_finetune(str(tiny_sd), csv, tmp_path / "two", cfg, tmp_path / "two.ckpt", gpus=2)
    assert two["num_processes"] == 2 and two["steps"] == 6 and two["epochs"] == 4
    assert two["resumed_from"] is None  # another process count: another stream, not resumed
    assert not (tmp_path / "two.ckpt").exists()  # a checkpoint was written at step 4, then removed
    one, s1 = _train(tiny_sd, images, tmp_path, "one", **{**cfg, "gradient_accumulation_steps": 2})
    assert s1["num_processes"] == 1
    lora2 = load_file(tmp_path / "two" / LORA)
    assert _max_diff(lora2, one) < 1e-6
    a, b = pd.read_csv(tmp_path / "two" / "loss.csv"), pd.read_csv(tmp_path / "one" / "loss.csv")
    assert a["step"].tolist() == list(range(1, 7)) and a["lr"].tolist() == b["lr"].tolist()
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    # equal because both trained the same way, not because neither moved: one step less differs
    five, _ = _train(tiny_sd, images, tmp_path, "five", **{**cfg, "max_train_steps": 5})
    assert _max_diff(lora2, five) > 1e-4


def test_module_entry_point_trains(tiny_sd, images, tmp_path):
    from dermsynth.diffusion.finetune import main

    csv = tmp_path / "ft.csv"
    images.to_csv(csv, index=False)
    cfg = {**fx.FINETUNE, "max_train_steps": 2, "mixed_precision": "no"}
    assert (
        main(
            [
                "--pretrained_model_name_or_path",
                str(tiny_sd),
                "--instance_data_csv",
                str(csv),
                "--output_dir",
                str(tmp_path / "o"),
                "--checkpoint_dir",
                str(tmp_path / "c"),
                "--config_json",
                json.dumps(cfg),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "o" / "train_summary.json").read_text())["steps"] == 2
    assert load_file(tmp_path / "o" / LORA)


# ---------------------------------------------------------------------------------------------
# LoRA files of diffusers' own DreamBooth-LoRA script load in our generate stage


def _peft_keys(sd):
    """PEFT's native naming (lora_A/lora_B), as get_peft_model_state_dict writes before conversion."""
    return {
        k.replace(".lora.down.weight", ".lora_A.weight").replace(".lora.up.weight", ".lora_B.weight"): v
        for k, v in sd.items()
    }


# (diffusers <= 0.20's attn-processor files, keys "...attn1.processor.to_q_lora.down.weight", load in no
# current diffusers: load_lora_weights leaves no adapter; a conversion would belong in pipeline.py)
@pytest.mark.parametrize("fmt", ["diffusers", "peft"])
def test_diffusers_script_lora_formats_load_in_generate(trained, tiny_sd, tmp_path, fmt):
    from safetensors.torch import save_file

    out, _ = trained
    ours = load_file(out / LORA)
    # train_dreambooth_lora.py saves convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)) with
    # StableDiffusionLoraLoaderMixin.save_lora_weights: unet.<module>.lora.{down,up}.weight
    keys = {"diffusers": dict, "peft": _peft_keys}[fmt](ours)
    if fmt == "diffusers":
        assert any(
            k.startswith("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down")
            for k in keys
        )
    save_file({k: v.clone() for k, v in keys.items()}, tmp_path / LORA)
    ref = _images(load_pipeline(str(tiny_sd), str(out), device="cpu"))
    theirs = _images(load_pipeline(str(tiny_sd), str(tmp_path), device="cpu"))
    np.testing.assert_allclose(theirs, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# killed through Snakemake, rerun, same LoRA


def _smk(wd, *args, **kw):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        *args,  # targets first: --resources takes every word after it
        "-s",
        str(root / "Snakefile"),
        "-d",
        str(wd),
        "--configfile",
        str(wd.parent / "kill.yaml"),
        "--cores",
        "1",  # one thread per job: 2 OpenMP threads on a busy 2-core machine are ~40x slower
        "--resources",
        "gpu=1",
    ]
    if kw.pop("background", False):
        return subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_finetune_killed_through_snakemake_resumes_to_the_same_lora(tmp_path):
    import os
    import signal
    import time
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config" / "demo.yaml").read_text())
    cfg["datasets"]["isic"]["demo"].update(n_per_class=8, size=64)
    cfg["datasets"]["ham10000"]["demo"].update(n_per_class=4, size=64)
    cfg["preprocess"]["dullrazor"]["activate"] = False
    cfg["finetune"].update(
        train_batch_size=2,
        max_train_steps=60,
        checkpointing_steps=10,
        num_validation_images=1,
        validation_inference_steps=2,
        validation_epochs=0,
    )
    (tmp_path / "kill.yaml").write_text(yaml.safe_dump(cfg))
    lora = Path("results/lora/demo/pytorch_lora_weights.safetensors")

    # uninterrupted run (it also builds the data and the tiny SD that both runs share)
    full = tmp_path / "full"
    _smk(full, "finetune_all")
    killed = tmp_path / "killed"
    shutil.copytree(full, killed, symlinks=True)
    shutil.rmtree(killed / "results" / "lora")  # only the fine-tune is left to run

    proc = _smk(killed, "finetune_all", background=True)
    ckpt = killed / "results" / "lora" / "demo.ckpt"
    deadline = time.monotonic() + 120
    while not list(ckpt.glob("checkpoint-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, as a preempted node or OOM kill would
    proc.wait()
    assert list(ckpt.glob("checkpoint-*")), "no checkpoint appeared before the kill"
    assert not (killed / lora).exists()

    _smk(killed, "--unlock")
    _smk(killed, "finetune_all", "--rerun-incomplete")
    summary = json.loads((killed / lora.parent / "train_summary.json").read_text())
    assert summary["resumed_from"] is not None and 10 <= summary["resumed_from"] < 60
    assert summary["steps_this_run"] == 60 - summary["resumed_from"]
    assert "resuming from" in (killed / "results/logs/finetune/demo.log").read_text()
    assert not ckpt.exists()  # removed once the final LoRA is written
    a, b = load_file(full / lora), load_file(killed / lora)
    # same seed, same thread count: float rounding only (stated tolerance 1e-5)
    assert _max_diff(a, b) < 1e-5
    la, lb = pd.read_csv(full / lora.parent / "loss.csv"), pd.read_csv(killed / lora.parent / "loss.csv")
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-5)


def test_tensorboard_logs_hold_the_loss_curve_and_validation_images(trained):
    # tensorboard is a dev dependency so this runs in CI; the stage never requires it
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = trained
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    loss = pd.read_csv(out / "loss.csv")
    events = acc.Scalars("loss")
    assert [e.step for e in events] == loss["step"].tolist()
    np.testing.assert_allclose([e.value for e in events], loss["loss"], rtol=1e-6)
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx(loss["lr"].tolist())
    tags = acc.Tags()["images"]
    assert tags and all(t.startswith("validation/") for t in tags)


def test_adamw8bit_on_flat_buffers_updates_exactly_as_bitsandbytes_per_tensor_without_syncs(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.optim.optimizer as bnb_opt

    syncs = []
    monkeypatch.setattr(bnb_opt, "sync_gpu", lambda t: syncs.append(t))
    shapes = _LORA_SHAPES
    init, ps_ours, ps_bnb, flat, ours, ref = _ours_and_bitsandbytes_adamw8bit(bnb, seed=0)
    assert isinstance(ours, bnb.optim.AdamW8bit) and type(ours) is not bnb.optim.AdamW8bit
    assert [len(g["params"]) for g in ours.param_groups] == [1, 1]  # 8 tensors, two buffers
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ps_ours, ps_bnb, grads, strict=True):
            p.grad.copy_(g)  # a view of the flat gradient buffer
            q.grad = g.clone()
        n = len(syncs)
        ours.step()
        assert len(syncs) == n  # no sync of ours
        ref.step()
        assert len(syncs) == n + len(shapes)  # bitsandbytes: one per tensor
    for p, q, p0 in zip(ps_ours, ps_bnb, init, strict=True):
        assert torch.equal(p, q) and not torch.equal(p, p0)
    assert _flat_states_equal_per_tensor(ours, flat, ps_ours, ref, ps_bnb) == {"torch.float32", "torch.uint8"}


#: LoRA shapes: 4x1280 and 3x1500 pass bitsandbytes' min_8bit_size (8-bit states in blocks of 256;
#: 3x1500 ends in a partial block), the rest keep 32-bit states
_LORA_SHAPES = [(4, 320), (320, 4), (4, 1280), (1280, 4), (4, 768), (3, 1500), (1500, 3), (4, 1280)]


def _ours_and_bitsandbytes_adamw8bit(bnb, seed: int, device: str = "cpu"):
    """The same random LoRA matrices twice: ours in flat buffers with our 8-bit AdamW, and a copy with
    bitsandbytes' AdamW8bit per tensor, at the same settings."""
    from dermsynth.diffusion.finetune import model

    torch.manual_seed(seed)
    init = [torch.randn(s).to(device) for s in _LORA_SHAPES]
    ps_ours = [torch.nn.Parameter(t.clone()) for t in init]
    ps_ref = [torch.nn.Parameter(t.clone()) for t in init]
    s = {**fx.FINETUNE, "optimizer": "adamw8bit", "adam_beta1": 0.9, "adam_beta2": 0.999}
    s.update(adam_weight_decay=1e-2, adam_epsilon=1e-8, lora_learning_rate=1e-3)
    flat = model.flat_params(s, ps_ours)
    ours = model.optimizer(s, flat, device)
    ref = bnb.optim.AdamW8bit(ps_ref, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return init, ps_ours, ps_ref, flat, ours, ref


def _flat_states_equal_per_tensor(ours, flat, ps_ours, ref, ps_ref) -> set:
    """Asserts each matrix's slice of the flat optimizer states is the reference's state of that matrix
    alone; returns the state dtypes seen (both of bitsandbytes' update paths: float32 and uint8)."""
    kinds = set()
    for p, q in zip(ps_ours, ps_ref, strict=True):
        f = next(f for f in flat.flat if f.untyped_storage().data_ptr() == p.untyped_storage().data_ptr())
        st, o, k = ours.state[f], p.storage_offset(), p.numel()
        kinds.add(str(st["state1"].dtype))
        assert st["step"] == ref.state[q]["step"]
        for key in ("state1", "state2"):
            assert torch.equal(st[key][o : o + k], ref.state[q][key].reshape(-1))
        if st["state1"].dtype == torch.uint8:
            assert o % 256 == 0
            b = ref.state[q]["absmax1"].numel()
            for key in ("absmax1", "absmax2"):
                assert torch.equal(st[key][o // 256 : o // 256 + b], ref.state[q][key])
    return kinds


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        # on CUDA the flag comes back through pinned memory and an event
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
            ],
        ),
    ],
)
@pytest.mark.parametrize("unscaled_first", [True, False], ids=["unscaled-first", "scaled"])
def test_adamw8bit_takes_fp16_overflow_steps_back_on_the_device_as_grad_scaler_skipping_them_does(
    unscaled_first, device
):
    bnb = pytest.importorskip("bitsandbytes")
    # the reference: bitsandbytes per tensor, whose step GradScaler skips after reading the flag on the host
    init, ps_ours, ps_ref, flat, ours, ref = _ours_and_bitsandbytes_adamw8bit(bnb, seed=1, device=device)
    assert ours._step_supports_amp_scaling and not getattr(ref, "_step_supports_amp_scaling", False)
    scalers = [torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=2) for _ in range(2)]
    calls = []
    ours_step = ours.step
    ours.step = lambda *a, **kw: (calls.append(1), ours_step(*a, **kw))[1]
    overflow = {0, 3, 4}  # the very first step (fresh states), and two in a row
    for i in range(8):
        for sc in scalers:
            sc.scale(torch.ones((), device=device))  # what scaling the loss does: the scale exists
        scale = scalers[0].get_scale()
        assert scale == scalers[1].get_scale()
        grads = [torch.randn(sh).to(device) for sh in _LORA_SHAPES]
        if i in overflow:
            grads[i % len(grads)].view(-1)[3] = math.inf
        for p, q, g in zip(ps_ours, ps_ref, grads, strict=True):
            p.grad.copy_(g * scale)  # a view of the flat gradient buffer
            q.grad = g * scale
        for sc, opt in zip(scalers, (ours, ref), strict=True):
            if unscaled_first:  # as the fine-tune does: clipping unscales first
                sc.unscale_(opt)
            sc.step(opt)
            sc.update()
        # the parameters every step: a step count learnt late would show in the next update
        for p, q in zip(ps_ours, ps_ref, strict=True):
            assert torch.equal(p, q), i
    assert scalers[0].get_scale() == scalers[1].get_scale() < 2.0**10
    assert len(calls) == 8  # ours ran on every step, the host never read the flag to skip one
    assert ref.state[ps_ref[0]]["step"] == 8 - len(overflow)
    ours.state_dict()  # settles the last step's count, as a checkpoint does
    assert _flat_states_equal_per_tensor(ours, flat, ps_ours, ref, ps_ref) == {"torch.float32", "torch.uint8"}
    for p, p0 in zip(ps_ours, init, strict=True):
        assert not torch.equal(p, p0)


@pytest.mark.parametrize("n, bs", [(5, 2), (7, 3), (6, 2), (1, 2)])
def test_every_batch_is_full_and_every_epoch_shows_every_image(n, bs):
    from dermsynth.diffusion.finetune.data import Batches

    images = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": ["benign"] * n})
    s = {"train_batch_size": bs, "resolution": 64, "center_crop": True, "random_flip": True, "seed": 3}
    data = Batches(images, s)
    assert data.nb == -(-n // bs)
    orders = []
    for epoch in range(3):
        batches = [data.indices(epoch * data.nb + b)[0] for b in range(data.nb)]
        assert all(len(idx) == bs for idx in batches)
        seen = np.concatenate(batches)
        # the first n are the epoch's shuffle of every image; the rest repeat its first ones
        assert sorted(seen[:n].tolist()) == list(range(n))
        assert seen[n:].tolist() == seen[: len(seen) - n].tolist()
        assert all(data.epoch_of(epoch * data.nb + b) == epoch for b in range(data.nb))
        orders.append(seen[:n].tolist())
    if n > 2:
        assert len({tuple(o) for o in orders}) == 3  # each epoch its own order


def test_flat_parameters_take_autograd_gradients_in_place_and_train_as_separate_ones():
    from dermsynth.diffusion.flat_params import FlatParams

    torch.manual_seed(0)
    x = torch.randn(5, 6)
    layers = [torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)]
    twins = [torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)]
    for a, b in zip(layers, twins, strict=True):
        b.load_state_dict(a.state_dict())
    flat = FlatParams([p for m in layers for p in m.parameters()], split_at=10, align=8)
    assert [f.numel() for f in flat.flat] == [40 + 24, 6 + 3]  # 36 and 18 padded to 8s; biases apart
    opt = torch.optim.AdamW([{"params": [f]} for f in flat.flat], lr=1e-2)
    ref = torch.optim.AdamW([p for m in twins for p in m.parameters()], lr=1e-2)

    def loss(ms):
        return ms[1](torch.tanh(ms[0](x))).square().mean()

    for _ in range(3):
        for _micro in range(2):  # accumulation: autograd adds into the views, in place
            loss(layers).backward()
            loss(twins).backward()
        opt.step()
        ref.step()
        flat.zero_grad()
        ref.zero_grad()
    for p, q in zip(flat.params, [p for m in twins for p in m.parameters()], strict=True):
        assert torch.equal(p, q)
        assert p.untyped_storage().data_ptr() in {f.untyped_storage().data_ptr() for f in flat.flat}
    flat.release()
    ptrs = {p.untyped_storage().data_ptr() for p in flat.params}
    assert len(ptrs) == len(flat.params) and all(p.grad is None for p in flat.params)


def test_compile_probe_names_a_broken_toolchain_and_passes_a_working_one(monkeypatch):
    from dermsynth.diffusion import pipeline

    if fx.has_cxx():  # a real compile
        assert pipeline.compile_unavailable("cpu") is None

    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("Failed to compile the launcher\nfatal error: Python.h: No such file")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    assert pipeline.compile_unavailable("cpu") == "RuntimeError: Failed to compile the launcher"
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda x: fn(x) + 1)
    assert pipeline.compile_unavailable("cpu") == "a compiled probe gave a wrong result"
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    assert pipeline.compile_unavailable("cpu") is None


class _NegatedGrad(torch.autograd.Function):
    """Identity forward, negated gradient backward: a miscompiled backward with a correct forward.

    Negated, not scaled: Adam's first update is sign(grad), blind to any positive scaling.
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


_MISCOMPILED_CALLS = []


def _miscompiling_backend(from_call: int):
    """A dynamo backend whose graphs negate the gradient from their ``from_call``-th call on (3: as a
    CUDA graph that records right and replays wrong would)."""

    def backend(gm, example_inputs, **kw):
        def run(*args):
            _MISCOMPILED_CALLS.append(len(args))
            outs = gm(*args)
            if len(_MISCOMPILED_CALLS) < from_call:
                return outs
            return type(outs)(
                _NegatedGrad.apply(o) if isinstance(o, torch.Tensor) and o.requires_grad else o for o in outs
            )

        return run

    return backend


@pytest.mark.parametrize(
    "backend, mode, checked, fails_at",
    [
        ("eager", "default", [1], None),
        ("eager", "reduce-overhead", [1, 3], None),  # CUDA-graph modes: the first replay too
        # Inductor itself: it records no CUDA graph of a CPU step, and the summary must say so
        ("inductor", "reduce-overhead", [1, 3], None),
        ("miscompiling", "default", [1], 1),
        ("miscompiling-on-replay", "reduce-overhead", [1, 3], 3),
    ],
)
def test_compiled_gradients_are_checked_against_eager_ones_and_a_miscompile_trains_eager(
    backend, mode, checked, fails_at, tiny_sd, images, tmp_path, monkeypatch
):
    from torch._dynamo.utils import counters

    from dermsynth.diffusion.finetune import compiled_step

    # no reference (an fp16 overflow of the eager pass): nan, the check waits; a compiled inf: inf, it fails
    assert math.isnan(compiled_step.grad_rel_error([torch.tensor([1.0, math.inf])], [torch.ones(2)]))
    assert compiled_step.grad_rel_error([torch.ones(2)], [torch.tensor([1.0, math.inf])]) == math.inf
    assert compiled_step.grad_rel_error([torch.zeros(2)], [torch.zeros(2)]) == 0.0
    # torch.compile on CPU, with dynamo's own eager backend or one whose backward negates the gradients
    monkeypatch.setattr(compiled_step, "compiles_on", lambda device: True)
    monkeypatch.setattr(compiled_step, "compile_unavailable", lambda dev: None)
    if backend == "inductor":
        fx.skip_without_cxx()
    if backend in ("eager", "inductor"):
        chosen = backend
    else:
        chosen = _miscompiling_backend(3 if "replay" in backend else 1)
    monkeypatch.setattr(compiled_step, "compile_backend", lambda: chosen)
    torch._dynamo.reset()
    counters.clear()
    _MISCOMPILED_CALLS.clear()
    # 5 images in batches of 2: step 3 ends an epoch, and its batch must have the others' shapes
    five = images.iloc[:5]
    compiled, s1 = _train(
        tiny_sd, five, tmp_path, "compiled", compile=True, compile_mode=mode, max_train_steps=5
    )
    # one graph for the whole job: no recompilation at the epoch's end, nor for the eager check steps
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
    eager, s2 = _train(tiny_sd, five, tmp_path, "eager", compile=False, max_train_steps=5)
    assert s2["compile"] is False and s2["compile_check"] is None
    assert [c["step"] for c in s1["compile_check"]] == checked
    errors = [c["grad_rel_error"] for c in s1["compile_check"]]
    # Inductor's own kernels sum in another order than eager: fp32 rounding, not a miscompile
    tol = 1e-5 if backend == "inductor" else 1e-6
    assert s1["cuda_graphs"] is (False if backend == "inductor" else None)
    if fails_at is None:
        assert s1["compile"] is True and max(errors) < tol
    else:
        # the check saw the negated gradient, restored the eager one and trained the rest eager
        assert s1["compile"] is False and errors[-1] == pytest.approx(2.0, abs=1e-3)
        assert max(errors[:-1], default=0.0) < 1e-6
        # the compiled code ran up to the failed check, not for the steps after nor the validation
        assert len(_MISCOMPILED_CALLS) == fails_at
    assert _max_diff(compiled, eager) < tol


def _failing_backend(at_call: int):
    """A dynamo backend that fails to compile (``at_call`` 1) or whose graph raises at its
    ``at_call``-th call, as Inductor failing to record a CUDA graph there would."""
    calls = []

    def backend(gm, example_inputs, **kw):
        if at_call == 1:
            raise RuntimeError("a lowering failed\nInductor's traceback")

        def run(*args):
            calls.append(1)
            if len(calls) == at_call:
                raise RuntimeError(f"CUDA graph recording failed at call {at_call}")
            return gm(*args)

        return run

    return backend


@pytest.mark.parametrize(
    "mode, fails_at, compiled_as, error",
    [
        ("default", [1], None, "RuntimeError: a lowering failed"),
        ("reduce-overhead", [1], None, "RuntimeError: a lowering failed"),  # no kernels: eager
        # the kernels ran once, so recording the CUDA graphs failed: compiled again without them
        ("reduce-overhead", [2], "default", "RuntimeError: CUDA graph recording failed at call 2"),
        (
            "max-autotune",
            [3],
            "max-autotune-no-cudagraphs",
            "RuntimeError: CUDA graph recording failed at call 3",
        ),
        # ... and where that compile fails too: eager
        ("reduce-overhead", [2, 1], None, "RuntimeError: a lowering failed"),
        ("reduce-overhead", [4], "", None),  # after the compile's trial calls: a real error, the job fails
    ],
)
def test_a_torch_compile_failure_trains_on_without_cuda_graphs_or_eager_to_the_same_lora(
    mode, fails_at, compiled_as, error, tiny_sd, images, tmp_path, monkeypatch
):
    from dermsynth.diffusion.finetune import compiled_step

    monkeypatch.setattr(compiled_step, "compiles_on", lambda device: True)
    monkeypatch.setattr(compiled_step, "compile_unavailable", lambda dev: None)
    # each compilation of the job gets the next backend; once they run out, dynamo's own (no failure)
    backends = iter([_failing_backend(n) for n in fails_at])
    monkeypatch.setattr(compiled_step, "compile_backend", lambda: next(backends, "eager"))
    torch._dynamo.reset()
    kw = {"compile_mode": mode, "max_train_steps": 4}
    if error is None:
        with pytest.raises(RuntimeError, match="recording failed at call 4"):
            _train(tiny_sd, images, tmp_path, "late", compile=True, **kw)
        return
    fell_back, s1 = _train(tiny_sd, images, tmp_path, "fell-back", compile=True, **kw)
    assert next(backends, None) is None  # every compilation asked for took place
    torch._dynamo.reset()
    eager, s2 = _train(tiny_sd, images, tmp_path, "eager", compile=False, **kw)
    assert s1["compile"] is (compiled_as is not None) and s1["compile_mode"] == compiled_as
    assert s1["compile_error"] == error and s2["compile_error"] is None
    # the failed micro-batch ran again from the gradients it started from: the same LoRA
    assert _max_diff(fell_back, eager) < 1e-6
    # checks before the failure stand in the summary; compiled on, the checks go on (the first
    # replay's check, at step 3, is then the new compile's); eager, none runs after the failure
    checks = [c["step"] for c in s1["compile_check"] or []]
    assert checks == ([1, 3] if compiled_as else [1] if fails_at[0] > 1 else [])


@pytest.mark.parametrize("mode, graphs", [("default", 1), ("reduce-overhead", 2)])
def test_cuda_graphs_are_freed_for_a_validation_and_recorded_again_after_it(
    mode, graphs, tiny_sd, images, tmp_path, monkeypatch
):
    from torch._dynamo.utils import counters

    from dermsynth.diffusion.finetune import compiled_step

    monkeypatch.setattr(compiled_step, "compiles_on", lambda device: True)
    monkeypatch.setattr(compiled_step, "compile_unavailable", lambda dev: None)
    monkeypatch.setattr(compiled_step, "compile_backend", lambda: "eager")
    torch._dynamo.reset()
    counters.clear()
    # 6 images at batch 2: a validation after step 3, mid-run, and one at the end
    kw = {"max_train_steps": 6, "validation_epochs": 1, "compile_check_tol": None}
    compiled, s1 = _train(tiny_sd, images, tmp_path, "compiled", compile=True, compile_mode=mode, **kw)
    # with CUDA graphs the mid-run validation dropped the compiled step, which compiled again after it
    assert counters["stats"]["unique_graphs"] == graphs
    assert s1["compile"] is True and s1["compile_mode"] == mode and s1["compile_error"] is None
    assert sorted(p.name for p in (tmp_path / "compiled" / "validation").iterdir()) == [
        "step-0000003",
        "step-0000006",
    ]
    torch._dynamo.reset()
    eager, _ = _train(tiny_sd, images, tmp_path, "eager", compile=False, **kw)
    assert _max_diff(compiled, eager) < 1e-6


def test_upsampling_without_scatter_keeps_values_and_layout_and_compiles_to_the_eager_gradient():
    import torch.nn.functional as F
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    from dermsynth.diffusion.finetune import compiled_step

    torch.manual_seed(0)
    ups = Upsample2D(8, use_conv=True)
    ref = Upsample2D(8, use_conv=True)
    ref.load_state_dict(ups.state_dict())
    holder = torch.nn.ModuleList([ups, torch.nn.Conv2d(8, 8, 1)])
    assert compiled_step.upsampling_without_scatter(holder) == 1
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 8, 5, 3).contiguous(memory_format=layout)
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x_up = torch.zeros_like(up)  # capture what the patched module feeds its conv
        h = ups.conv.register_forward_pre_hook(lambda m, a, out=x_up: out.copy_(a[0]))
        assert torch.equal(ups(x), ref(x))
        h.remove()
        assert torch.equal(x_up, up)
        assert ups(x).is_contiguous(memory_format=layout) == ref(x).is_contiguous(memory_format=layout)
    assert torch.equal(ups(x, output_size=(7, 5)), ref(x, output_size=(7, 5)))  # not 2x: diffusers' own

    fx.skip_without_cxx()
    # SD's up-block boundary: ResnetBlock2D (ends in "/ output_scale_factor") into Upsample2D, where
    # torch 2.13's Inductor (CPU) returned a zero input gradient with interpolate's scatter backward
    res = ResnetBlock2D(in_channels=64, out_channels=32, temb_channels=16, groups=16).requires_grad_(False)
    up2 = Upsample2D(32, use_conv=True).requires_grad_(False)
    compiled_step.upsampling_without_scatter(up2)
    x0, skip, temb = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4), torch.randn(2, 16)

    def block(x):
        return up2(res(torch.cat([x, skip], 1), temb))

    grads = []
    for fn in (block, torch.compile(block)):
        x = x0.clone().requires_grad_(True)
        fn(x).square().sum().backward()
        grads.append(x.grad)
    assert grads[0].norm() > 0
    assert compiled_step.grad_rel_error([grads[0]], [grads[1]]) < 1e-4
