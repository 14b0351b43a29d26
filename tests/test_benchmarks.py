"""The benchmarks' own measuring code: step profiler, variant parsing, step-rate arithmetic."""

import importlib.util
from pathlib import Path

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
