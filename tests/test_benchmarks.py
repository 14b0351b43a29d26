"""The benchmarks' own measuring code: step profiler, variant parsing, step-rate arithmetic."""

import argparse
import importlib.util
import json
from pathlib import Path

import _diffusion_fixtures as fx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str):
    """A benchmarks/*.py script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def finetune_bench():
    return _load_benchmark("finetune")


def test_step_profiler_counts_the_ops_of_the_profiled_steps_only(finetune_bench):
    prof = finetune_bench._StepProfiler(first=2, n=3)
    a = torch.randn(64, 64)
    for step in range(1, 8):
        for _ in range(step):  # step k runs k matmuls: only steps 3, 4 and 5 may be counted
            a = torch.mm(a, a).tanh()
        prof.on_step(step)
    r = prof.result
    assert r["steps"] == 3 and r["wall_ms_per_step"] > 0
    mm = [o for o in r["top_host_ops"] if o["op"] == "aten::mm"]
    assert mm and mm[0]["calls_per_step"] == pytest.approx((3 + 4 + 5) / 3, abs=0.05)
    assert r["gpu_busy_fraction"] is None and r["top_gpu_ops"] == []  # CPU only: no kernels


def test_step_profiler_counts_the_ops_outside_compiled_graphs(finetune_bench):
    fx.skip_without_cxx()
    w = torch.randn(8, 8, requires_grad=True)
    f = torch.compile(lambda x: (x @ w).tanh().sum())
    x = torch.randn(4, 8)
    prof = finetune_bench._StepProfiler(first=1, n=2)
    for step in range(1, 4):
        # compiled: the forward and backward (mm, tanh, sum); eager: ones_like (the seed gradient),
        # autograd's add into w.grad (from step 2 on) and the two ops after it
        f(x).backward()
        w.grad.mul_(0.5)
        w.grad.sub_(1)
        prof.on_step(step)
    assert prof.result["eager_ops_per_step"] == 4


def test_no_profile_asked_is_no_profile(finetune_bench):
    prof = finetune_bench._StepProfiler(first=2, n=0)
    for step in range(1, 5):
        prof.on_step(step)
    assert prof.result is None and prof.prof is None


def test_a_failing_profiler_reports_its_error_and_the_steps_go_on(finetune_bench, monkeypatch):
    class Broken:
        def __init__(self, **kw):
            pass

        def start(self):
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    monkeypatch.setattr(torch.profiler, "profile", Broken)
    prof = finetune_bench._StepProfiler(first=2, n=3)
    for step in range(1, 8):  # raises nothing: the timing of the steps around it is kept
        prof.on_step(step)
    assert prof.result == {"error": "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED"}


def test_a_worker_dying_while_profiling_keeps_its_timed_steps(
    finetune_bench, tmp_path, tmp_path_factory, monkeypatch
):
    class Died(BaseException):  # as a segfault would, it gets past every `except Exception`
        pass

    def die(self, step):
        if step >= self.first:  # the profiled steps start
            raise Died

    monkeypatch.setattr(finetune_bench._StepProfiler, "_on_step", die)
    images = tmp_path / "images"
    finetune_bench._write_images(images, 4, 64)
    w = argparse.Namespace(
        model=str(fx.tiny_sd(tmp_path_factory)),
        images=str(images),
        out=str(tmp_path / "ours"),
        resolution=64,
        batch=2,
        steps=3,
        rank=4,
        threads=1,
        device="cpu",
        precision="no",
        adam8bit=False,
        gradient_checkpointing=False,
        overrides={"compile": False},
        profile=2,
        result=str(tmp_path / "ours.json"),
    )
    with pytest.raises(Died):
        finetune_bench._worker_ours(w)
    r = json.loads((tmp_path / "ours.json").read_text())
    assert r["partial"] is True and len(r["times"]) == 3 and r["times"] == sorted(r["times"])
    assert r["peak_mem_gb"] > 0 and r["summary"] == {"cuda_graphs": None}  # CPU: no CUDA graphs


_TIMED = """echo '{"partial": true, "times": [1, 2]}'"""


def _fake_worker(tmp_path, body: str) -> str:
    """An 'interpreter' that writes its --_result as a worker would, then runs ``body``."""
    script = tmp_path / "fake-python"
    script.write_text(
        f'#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --_result ] && R=$2; shift; done\n{body}\n'
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    "body, kept, error",
    [
        # died after the timed steps: the partial result stands, the profile names the death
        (f"{_TIMED} > $R; echo CUPTI fault >&2; kill -SEGV $$", True, "-11"),
        (f"{_TIMED} > $R; exec sleep 30", True, "no end within 2 s"),
        # died before: nothing to keep
        ("echo out of memory >&2; exit 1", False, "exited with 1: out of memory"),
        ("echo '{\"partial\": true}' > $R.tmp; kill -SEGV $$", False, "exited with -11"),
    ],
)
def test_the_parent_keeps_a_dead_workers_timed_steps_only(finetune_bench, tmp_path, body, kept, error):
    a = argparse.Namespace(
        model="m", images="i", resolution=64, batch=2, steps=2, rank=4, threads=1, device="cpu",
        precision="no", profile=1, adam8bit=False, gradient_checkpointing=False, timeout=2,
    )  # fmt: skip
    python = _fake_worker(tmp_path, body)
    if kept:
        r = finetune_bench._run_worker(python, "ours", a, tmp_path, name="paper")
        assert r["times"] == [1, 2] and error in r["profile"]["error"]
        assert r["profile"]["error"].startswith("paper exited with")
    else:
        with pytest.raises(RuntimeError, match=error):
            finetune_bench._run_worker(python, "ours", a, tmp_path)


def test_variant_specs_and_step_rate(finetune_bench):
    name, settings = finetune_bench._parse_variant(
        "cg:compile_mode=reduce-overhead,gradient_checkpointing=false"
    )
    assert name == "cg" and settings == {"compile_mode": "reduce-overhead", "gradient_checkpointing": False}
    with pytest.raises(SystemExit):
        finetune_bench._parse_variant("nosettings")
    # 4 timed steps after 1 warmup step, 0.5 s apart -> 2 it/s
    assert finetune_bench._it_s([0.0, 10.0, 10.5, 11.0, 11.5], warmup=1) == pytest.approx(2.0)


def test_paper_variant_takes_the_step_settings_of_the_paper_config(finetune_bench):
    import yaml

    ft = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["finetune"]
    name, settings = finetune_bench._parse_variant("paper")
    assert name == "paper" and settings
    assert settings == {k: ft[k] for k in settings}  # the config's values, not defaults
    assert {"gradient_checkpointing", "compile", "optimizer", "mixed_precision"} <= settings.keys()
    assert "max_train_steps" not in settings and "num_train_epochs" not in settings
    # the paper's step with one change: the fused q/k/v LoRA variant of benchmarks/gpu.sh
    name, fused = finetune_bench._parse_variant("paper_fused:paper,fuse_qkv_lora=true")
    assert name == "paper_fused" and fused == {**settings, "fuse_qkv_lora": True}
    assert "fuse_qkv_lora" in finetune_bench.PAPER_SPEED_KEYS


@pytest.fixture(scope="module")
def optimizer_bench():
    return _load_benchmark("lora_optimizer")


def test_lora_optimizer_benchmark_times_sd15_lora_shapes_and_both_sides_end_identical(optimizer_bench):
    pytest.importorskip("bitsandbytes")
    shapes = optimizer_bench.sd15_lora_shapes(4, ["to_k", "to_q", "to_v", "to_out.0"])
    # 16 transformer blocks x 2 attentions x 4 projections x (A, B)
    assert len(shapes) == 256 and sum(a * b for a, b in shapes) == 797_184
    assert (4, 768) in shapes and (1280, 4) in shapes  # cross-attention k/v read the 768-d text states
    r = optimizer_bench.run("cpu", rank=4, steps=2, warmup=1)
    assert r["bit_identical"] is True and r["n_flat_buffers"] == 2 and r["n_tensors"] == 256
    assert r["speed_ratio"] == pytest.approx(r["peer_ms_per_step"] / r["ours_ms_per_step"], rel=1e-2)


def test_the_dynamo_counts_leave_out_the_compile_probe(finetune_bench, monkeypatch):
    from torch._dynamo.utils import counters

    from dermsynth.diffusion.finetune import compiled_step
    from dermsynth.diffusion.pipeline import compile_unavailable

    fx.skip_without_cxx()
    counters.clear()
    counters["stats"]["unique_graphs"] = 5  # earlier work of this process
    finetune_bench._without_the_compile_probe({"compile": False}, "cpu")
    assert counters["stats"]["unique_graphs"] == 5  # nothing compiles: nothing is touched
    monkeypatch.setattr(compiled_step, "compiles_on", lambda device: True)
    finetune_bench._without_the_compile_probe({}, "cpu")
    assert compile_unavailable("cpu") is None  # train_lora's own probe, after the benchmark's
    assert finetune_bench._dynamo_counts()["unique_graphs"] == 0
    torch.compile(lambda x: x * 3)(torch.ones(2))  # what the UNet's compilation adds is counted
    assert finetune_bench._dynamo_counts()["unique_graphs"] == 1


def test_evaluation_benchmark_checks_each_target_it_has_a_figure_for():
    bench = _load_benchmark("evaluation")
    assert bench.ece_case()["ece_error"] <= 1e-9  # the metric agrees with the case worked by hand
    met = bench.check({"ece_error": 0.0, "same_lesion_recall": 0.79, "c2st_auroc_shifted": float("nan")})
    assert met == {"ece_error": True, "same_lesion_recall": False}  # NaN and missing figures: not judged
    assert bench.check({"ita_modifier_effect_hi": 0.0}) == {"ita_modifier_effect_hi": False}  # CI touches 0
    covers = bench.check(bench.with_bounds({"c2st_auroc_same_ci": [0.51, 0.6]}))
    assert covers == {"c2st_auroc_same_lo": False, "c2st_auroc_same_hi": True}  # 0.5 below the CI
    part = {"c2st_auroc_same": 0.55, "c2st_auroc_same_ci": [0.51, 0.6], "threshold": 15.0}
    assert bench.headline(part) == {
        "c2st_auroc_same": 0.55, "c2st_auroc_same_ci": [0.51, 0.6], "c2st_auroc_same_lo": 0.51,
        "c2st_auroc_same_hi": 0.6,
    }  # fmt: skip
