"""Fine-tune speed and memory: our DreamBooth-LoRA step against diffusers' own train_dreambooth_lora.py.

Both trainers run in their own process, at identical settings (model, images, resolution, batch, rank,
alpha = rank, lr, constant schedule, precision, optimizer, gradient checkpointing, TF32, seed, same
prompt for every image), and are timed the same way: the wall-clock time between optimizer steps,
after ``--warmup`` steps (model loading, latent caching and the first CUDA kernels are excluded on
both sides). Peak memory is taken at the last timed step (CUDA: max_memory_allocated, and
max_memory_reserved, the memory the process holds, which is the figure to compare under CUDA graphs:
their pool stays reserved between replays, where allocated does not count it; CPU: max RSS).

    bash benchmarks/setup_peer.sh /path/to/diffusers-mirror      # once: .peer-venv/ + the script
    python benchmarks/finetune.py --quick                        # CPU, tiny SD, 64 px, < 2 min
    python benchmarks/finetune.py --device cuda                  # SD1.5-size random weights, 512 px
    python benchmarks/finetune.py --device cuda --variant eager:compile=false  # + ours, one setting changed
    python benchmarks/finetune.py --device cuda --profile 5      # + where 5 more steps spend their time
    python benchmarks/finetune.py --device cuda --set compile_mode=reduce-overhead  # ours changed

The last line printed is one JSON object: ours_it_s, peer_it_s, speed_ratio, ours_peak_mem_gb,
peer_peak_mem_gb, device, resolution, batch (and the settings, the extrapolated paper fine-tune, the
graphs torch.compile built and, with --profile, the GPU busy fraction and the top operators).
The peer fields are null, with ``peer_error``, when the peer venv or script is missing or fails;
ours are null, with ``ours_error``, when ours fails (a ``--set`` on trial), and the rest still runs;
a worker that dies in its profiled steps keeps its timed figures (``profile`` then holds the error).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a dermoscopic image of a benign skin lesion"
PAPER_STEPS = 2800 * 120 // 2  # the paper's fine-tune: 2800 images x 120 epochs at batch 2


# ---------------------------------------------------------------------------------------------
# workers: each runs one trainer in its own process and prints {"times": [...], "peak_mem_gb": x}


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _peak_mem_gb() -> tuple[float, float | None]:
    """(allocated or, on CPU, RSS; reserved, None on CPU), each the peak so far in GB."""
    import torch

    if _cuda_in_use():
        return torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, None


class _StepProfiler:
    """torch.profiler over the ``n`` optimizer steps after step ``first``: where a step's time goes.

    Reports per step: wall time, the time the GPU spent in kernels (busy fraction: the rest is the
    GPU waiting on Python, launches or syncs), the operators run outside compiled graphs, and the top
    operators by GPU and by host self time.
    """

    def __init__(self, first: int, n: int):
        self.first, self.last = first, first + n
        self.prof, self.t0, self.result = None, None, None

    def on_step(self, step: int) -> None:
        try:
            self._on_step(step)
        except Exception as e:  # a profiler failure (CUPTI under CUDA graphs) must not cost the timing
            self.result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}

    def _on_step(self, step: int) -> None:
        import torch

        if self.prof is None and step == self.first and self.last > self.first:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if _cuda_in_use():
                torch.cuda.synchronize()
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.start()
            self.t0 = time.perf_counter()
        elif self.prof is not None and self.result is None and step == self.last:
            if _cuda_in_use():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.stop()
            self.result = self._summarise(wall, self.last - self.first)

    def _summarise(self, wall: float, n: int) -> dict:
        events = self.prof.key_averages()

        def dev(e):
            return getattr(e, "self_device_time_total", 0) or 0

        kernel_us = sum(dev(e) for e in events)  # each kernel is the self time of exactly one op

        def top(key, k=12):
            rows = sorted(events, key=key, reverse=True)[:k]
            return [
                {
                    "op": e.key[:80],
                    "calls_per_step": round(e.count / n, 1),
                    "ms_per_step": round(key(e) / n / 1e3, 3),
                }
                for e in rows
                if key(e) > 0
            ]

        return {
            "steps": n,
            "wall_ms_per_step": round(wall / n * 1e3, 2),
            "gpu_kernel_ms_per_step": round(kernel_us / n / 1e3, 2),
            "gpu_busy_fraction": round(kernel_us / 1e6 / wall, 3) if kernel_us else None,
            "eager_ops_per_step": round(_eager_ops(self.prof.events()) / n, 1),
            "top_gpu_ops": top(dev),
            "top_host_ops": top(lambda e: e.self_cpu_time_total),
        }


#: profiler events of torch.compile's code: what runs under them is compiled (or a CUDA-graph replay)
_COMPILED_EVENTS = ("Torch-Compiled Region", "CompiledFunction", "CompiledFunctionBackward")


def _eager_ops(events) -> int:
    """Operators called outside torch.compile's graphs (not counting those they call): on a GPU each
    launches its kernels one by one, CUDA graphs or not (autograd adding each LoRA gradient into its
    buffer, the loss, the optimizer, the noise)."""
    n = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::") and not p.name.startswith(_COMPILED_EVENTS):
            p = p.cpu_parent
        n += p is None
    return n


def _write_json(path, obj) -> None:
    """Atomically: the parent never reads half a result, even from a worker that dies mid-write.
    (Not dermsynth.io.write_json: the peer worker runs in diffusers' venv, which has no pandas.)"""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


def _ours_compile(cfg: dict, device: str) -> tuple[bool, str]:
    """(whether train_lora compiles the UNet with these finetune settings on ``device``, its mode)."""
    from dermsynth.diffusion.finetune import compiled_step, settings

    s = settings.resolve(cfg)
    return bool(s["compile"]) and compiled_step.compiles_on(device), s["compile_mode"]


def _cuda_graphs_so_far(cfg: dict, device: str) -> bool | None:
    """train_lora's summary field ``cuda_graphs``, read before the job ends (in a fresh worker
    process, whose Inductor has declined nothing before the job)."""
    from dermsynth.diffusion.finetune import compiled_step

    return compiled_step.cuda_graphs_ran(*_ours_compile(cfg, device))


def _dynamo_counts() -> dict:
    """Graphs torch.compile built and where it broke them: many small graphs cost launches and guards."""
    from torch._dynamo.utils import counters

    breaks = counters.get("graph_break", {})
    return {
        "unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
        "graph_breaks": int(sum(breaks.values())),
        "break_reasons": [f"{n}x {r[:160]}" for r, n in sorted(breaks.items(), key=lambda x: -x[1])[:5]],
    }


def _without_the_compile_probe(settings: dict, device: str) -> None:
    """Where the UNet compiles, runs train_lora's compile probe once first and clears dynamo's
    counters: the probe's second run hits dynamo's cache, so the counts are the UNet's alone
    (unique_graphs 1 unless it recompiled; an H100 run read 2, the probe's graph and the UNet's)."""
    from torch._dynamo.utils import counters

    from dermsynth.diffusion.pipeline import compile_unavailable

    if _ours_compile(settings, device)[0]:
        compile_unavailable(device)
        counters.clear()


def _worker_ours(a) -> dict:
    import pandas as pd

    from dermsynth.diffusion.finetune import train_lora

    images = pd.DataFrame({"path": sorted(str(p) for p in Path(a.images).glob("*.png"))})
    images["label"] = "benign"  # one prompt for every image, as the peer's --instance_prompt
    times, mem = [], []
    # the profiled steps come after the timed ones, so profiling does not slow the figure
    profiler = _StepProfiler(a.steps, a.profile)

    def timed() -> dict:
        return {
            "times": times[: a.steps],
            "peak_mem_gb": mem[a.steps - 1][0],
            "peak_reserved_gb": mem[a.steps - 1][1],
            "dynamo": _dynamo_counts(),
        }

    def on_step(step, loss):
        times.append(time.perf_counter())
        mem.append(_peak_mem_gb())
        if step == a.steps and a.profile:
            # the timed figures before the profiled steps: a profiler that kills the process (CUPTI
            # under CUDA graphs has, in some CUDA versions) then costs the profile only
            partial = {"summary": {"cuda_graphs": _cuda_graphs_so_far(cfg, a.device)}, "partial": True}
            _write_json(a.result, {**timed(), **partial})
        profiler.on_step(step)

    cfg = {
        "resolution": a.resolution,
        "train_batch_size": a.batch,
        "max_train_steps": a.steps + a.profile,
        "lora_learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "rank": a.rank,
        "alpha": a.rank,
        "optimizer": "adamw8bit" if a.adam8bit else "adamw",
        "mixed_precision": a.precision,
        "gradient_checkpointing": a.gradient_checkpointing,
        "allow_tf32": True,
        "center_crop": True,
        "random_flip": False,
        "checkpointing_steps": 10**9,
        "seed": 0,
        "validation_epochs": 0,
        "num_validation_images": 1,
        "validation_inference_steps": 1,
        "tensorboard": False,
        "instance_prompt": "a dermoscopic image of a {label} skin lesion",
        **a.overrides,  # a --variant's settings
    }
    _without_the_compile_probe(cfg, a.device)  # the settings the mid-run cuda_graphs reading takes too
    out = Path(a.out)
    summary = train_lora(
        a.model,
        images,
        out / "lora",
        cfg,
        out / "lora.ckpt",
        threads=a.threads,
        device=a.device,
        on_step=on_step,
    )
    return {**timed(), "summary": summary, "profile": profiler.result}


def _worker_peer(a) -> dict:
    """Runs diffusers' script unchanged (runpy), with tqdm patched to timestamp each optimizer step."""
    import runpy

    import tqdm.auto

    times, mem = [], []

    class TimedTqdm(tqdm.auto.tqdm):
        def update(self, n=1):
            r = super().update(n)
            times.append(time.perf_counter())
            mem.append(_peak_mem_gb())
            return r

    tqdm.auto.tqdm = TimedTqdm  # the script does `from tqdm.auto import tqdm` when it runs
    args = [
        "--pretrained_model_name_or_path",
        a.model,
        "--instance_data_dir",
        a.images,
        "--instance_prompt",
        PROMPT,
        "--output_dir",
        str(Path(a.out) / "lora"),
        "--resolution",
        str(a.resolution),
        "--train_batch_size",
        str(a.batch),
        "--max_train_steps",
        str(a.steps),
        "--learning_rate",
        "1e-4",
        "--lr_scheduler",
        "constant",
        "--lr_warmup_steps",
        "0",
        "--rank",
        str(a.rank),
        "--seed",
        "0",
        "--checkpointing_steps",
        str(10**9),
        "--mixed_precision",
        a.precision,
        "--center_crop",
        "--allow_tf32",
        "--report_to",
        "tensorboard",
    ]
    if a.adam8bit:
        args.append("--use_8bit_adam")
    if a.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    sys.argv = [a.script, *args]
    import torch

    torch.set_num_threads(a.threads)
    runpy.run_path(a.script, run_name="__main__")
    return {
        "times": times,
        "peak_mem_gb": mem[-1][0] if mem else None,
        "peak_reserved_gb": mem[-1][1] if mem else None,
    }


# ---------------------------------------------------------------------------------------------
# driver


def _paper_hours(it_s: float) -> float:
    """The paper's fine-tune (PAPER_STEPS steps) at this step rate, in hours."""
    return round(PAPER_STEPS / it_s / 3600, 2)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _figures(r: dict, warmup: int) -> tuple[float, dict]:
    """A worker's result as (step rate, the figures reported for ours and for each variant)."""
    it_s = _it_s(r["times"], warmup)
    return it_s, {
        "it_s": round(it_s, 3),
        "peak_mem_gb": round(r["peak_mem_gb"], 3),
        "peak_reserved_gb": _round(r.get("peak_reserved_gb")),
        # the job ends with one validation image: does it push memory above training's?
        "peak_mem_with_validation_gb": r["summary"].get("peak_mem_with_validation_gb"),
        "peak_reserved_with_validation_gb": r["summary"].get("peak_mem_reserved_with_validation_gb"),
        "paper_finetune_h_extrapolated": _paper_hours(it_s),
        "dynamo": r.get("dynamo"),
        "compiled": r["summary"].get("compile"),
        "compile_check": r["summary"].get("compile_check"),
        # compiling failed (the rest ran eager) or recording CUDA graphs did (compile_mode: what ran)
        "compile_error": r["summary"].get("compile_error"),
        "compile_mode": r["summary"].get("compile_mode"),
        "cuda_graphs": r["summary"].get("cuda_graphs"),  # null where the mode records none
        "process_s": round(r["process_s"], 1),  # the whole job: load, compilation, steps, save
        "profile": r.get("profile"),
    }


def _it_s(times: list, warmup: int) -> float:
    t = times[warmup:]
    return (len(t) - 1) / (t[-1] - t[0])


def _run_worker(
    python: str, kind: str, a, out: Path, script: str | None = None, name: str | None = None, overrides=None
) -> dict:
    name = name or kind
    result = out / f"{name}.json"
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--_worker",
        kind,
        "--_result",
        str(result),
        "--_model",
        a.model,
        "--_images",
        a.images,
        "--_out",
        str(out / name),
        "--_set",
        json.dumps(overrides or {}),
        "--resolution",
        str(a.resolution),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--rank",
        str(a.rank),
        "--threads",
        str(a.threads),
        "--device",
        a.device,
        "--_precision",
        a.precision,
        "--profile",
        str(a.profile if kind == "ours" else 0),
    ]
    if script:
        cmd += ["--peer-script", script]
    if a.adam8bit:
        cmd.append("--_adam8bit")
    if a.gradient_checkpointing:
        cmd.append("--_gradient_checkpointing")
    env = {
        **os.environ,
        # keep the caller's PYTHONPATH: packages may come from a --target folder (the GPU machine)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "workflow"), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(a.threads),
    }
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        rc, err = proc.returncode, proc.stderr or proc.stdout
    except subprocess.TimeoutExpired as e:
        rc, err = f"no end within {a.timeout} s", e.stderr or e.stdout  # bytes, even with text=True
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    tail = " | ".join((err or "").strip().splitlines()[-3:])
    r = json.loads(result.read_text()) if result.exists() else {}
    if rc != 0 and r.get("partial"):
        # it died in the profiled steps, after the timed ones: the timing stands, the profile is lost
        r["profile"] = {"error": f"{name} exited with {rc} while profiling: {tail}"[:500]}
    elif rc != 0 or not r:
        raise RuntimeError(f"{name} exited with {rc}: {tail}")
    r["process_s"] = time.perf_counter() - t0
    return r


def _write_images(d: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.new("RGB", (size, size), (228, 196, 178))
        c, r = size / 2 + rng.uniform(-size / 16, size / 16, 2), rng.uniform(size / 6, size / 3)
        ImageDraw.Draw(im).ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(120, 80, 60))
        im.save(d / f"img_{i:03d}.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU, tiny SD at 64 px, fp32, torch AdamW (< 2 min)")
    p.add_argument("--device", default="auto")
    p.add_argument("--peer-python", default=str(ROOT / ".peer-venv" / "bin" / "python"))
    p.add_argument("--peer-script", default=str(ROOT / ".peer-venv" / "train_dreambooth_lora.py"))
    p.add_argument(
        "--model", default=None, help="SD directory (default: built: tiny for --quick, sd15 on GPU)"
    )
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each trainer (same for both)")
    p.add_argument("--n-images", type=int, default=8, help="fine-tune images written for both trainers")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also time ours with these finetune settings changed (YAML values), e.g. "
        "compiled:compile=true, or 'paper' for config/config.yaml's own step settings (its "
        "extrapolated time is the paper fine-tune as the workflow runs it); repeatable; reported "
        "under 'variants' with their ratio to the peer",
    )
    p.add_argument(
        "--set",
        default="",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="ours (not the variants) with these finetune settings changed, e.g. "
        "compile_mode=reduce-overhead; reported as 'ours_settings'",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile N more steps of ours (and each variant) after the timed ones: GPU busy fraction, "
        "top operators by GPU and host time (under 'profile' in the JSON)",
    )
    for hidden in ("--_worker", "--_result", "--_model", "--_images", "--_out", "--_precision", "--_set"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    for flag in ("--_adam8bit", "--_gradient_checkpointing"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._worker:
        w = argparse.Namespace(
            model=a._model,
            images=a._images,
            out=a._out,
            resolution=a.resolution,
            batch=a.batch,
            steps=a.steps,
            rank=a.rank,
            threads=a.threads,
            device=a.device,
            script=a.peer_script,
            precision=a._precision,
            adam8bit=a._adam8bit,
            gradient_checkpointing=a._gradient_checkpointing,
            overrides=json.loads(a._set or "{}"),
            profile=a.profile,
            result=a._result,
        )
        r = _worker_ours(w) if a._worker == "ours" else _worker_peer(w)
        _write_json(a._result, r)
        return

    import torch

    if a.device == "auto":
        a.device = "cpu" if a.quick or not torch.cuda.is_available() else "cuda"
    gpu = a.device.startswith("cuda")
    a.resolution = a.resolution or (512 if gpu else 64)
    a.steps = a.steps or (60 if gpu else 30)
    a.warmup = a.warmup if a.warmup is not None else (10 if gpu else 5)
    # the GPU settings (paper: fp16, 8-bit AdamW) + gradient checkpointing; CPU: fp32, torch AdamW
    a.precision = "fp16" if gpu else "no"
    a.adam8bit = gpu
    a.gradient_checkpointing = gpu

    work = Path(tempfile.mkdtemp(prefix="dermsynth-bench-finetune-"))
    if a.model is None:
        from dermsynth import tiny

        kind = "sd15" if gpu and not a.quick else "sd"
        kw = {} if kind == "sd15" else {"image_size": a.resolution}
        a.model = str(tiny.build(kind, work / kind, seed=0, **kw))
    a.images = str(work / "images")
    _write_images(Path(a.images), a.n_images, a.resolution)
    try:
        result = _compare(a, work, gpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the sd15 model is 1 GB
    print(json.dumps(result))


def _compare(a, work: Path, gpu: bool) -> dict:
    import torch

    ours_settings = _parse_variant(f"ours:{a.set}")[1] if a.set else {}
    ours_it_s, ours, ours_error = None, {}, None
    try:
        ours_it_s, ours = _figures(
            _run_worker(sys.executable, "ours", a, work, overrides=ours_settings), a.warmup
        )
        print(f"ours: {ours_it_s:.3f} it/s, peak {ours['peak_mem_gb']:.2f} GB", file=sys.stderr, flush=True)
        # the rest of ours' figures too, so a run cut short by a time limit still has them in its log
        keys = ("peak_reserved_gb", "peak_mem_with_validation_gb", "peak_reserved_with_validation_gb")
        keys += ("cuda_graphs", "compile_error", "compile_mode", "dynamo", "profile", "compile_check")
        extra = {k: ours[k] for k in keys}
        print(f"ours: {json.dumps(extra)}", file=sys.stderr, flush=True)
    except Exception as e:  # a setting under trial (--set) that fails must not cost the peer and variants
        ours_error = str(e)[:500]
        print(f"ours failed: {ours_error}", file=sys.stderr, flush=True)
    peer_it_s = peer_mem = peer_reserved = peer_error = None
    peer_lora_loads = None
    try:
        # --peer-python may be a command on PATH (python3 on a machine that has torchvision)
        a.peer_python = shutil.which(a.peer_python) or a.peer_python
        if not Path(a.peer_python).exists() or not Path(a.peer_script).exists():
            raise RuntimeError(
                f"peer not set up ({a.peer_python}, {a.peer_script}): run benchmarks/setup_peer.sh"
            )
        peer = _run_worker(a.peer_python, "peer", a, work, script=a.peer_script)
        peer_it_s, peer_mem = _it_s(peer["times"], a.warmup), peer["peak_mem_gb"]
        peer_reserved = peer.get("peak_reserved_gb")
        held = "" if peer_reserved is None else f" (reserved {peer_reserved:.2f} GB)"
        print(f"peer: {peer_it_s:.3f} it/s, peak {peer_mem:.2f} GB{held}", file=sys.stderr, flush=True)
        # the peer's LoRA file loads in our generate stage
        from dermsynth.diffusion.pipeline import load_pipeline

        load_pipeline(a.model, str(work / "peer" / "lora"), device=a.device)
        peer_lora_loads = True
    except Exception as e:  # the benchmark still reports our figures
        peer_error = str(e)[:500]
        print(f"peer failed: {peer_error}", file=sys.stderr)

    # after the peer, so a run cut short still has the main comparison in its log
    variants = []
    for spec in a.variant:
        name, settings = _parse_variant(spec)
        v = {"name": name, "settings": settings}
        try:
            r = _run_worker(sys.executable, "ours", a, work, name=f"ours-{name}", overrides=settings)
            v.update(_figures(r, a.warmup)[1])
        except Exception as e:  # one failing variant (a compiler error) must not cost the others
            v["error"] = str(e)[:300]
        print(f"variant {v}", file=sys.stderr, flush=True)
        variants.append(v)

    ref = Path(a.peer_script).with_name("peer-ref.txt")  # written by setup_peer.sh beside the script
    return {
        "ours_it_s": _round(ours_it_s),
        "peer_it_s": _round(peer_it_s),
        "speed_ratio": None if peer_it_s is None or ours_it_s is None else round(ours_it_s / peer_it_s, 3),
        "ours_peak_mem_gb": ours.get("peak_mem_gb"),
        "ours_settings": ours_settings,  # finetune settings --set changed from the benchmark's
        "peer_peak_mem_gb": _round(peer_mem),
        "ours_peak_reserved_gb": ours.get("peak_reserved_gb"),
        "peer_peak_reserved_gb": _round(peer_reserved),
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "resolution": a.resolution,
        "batch": a.batch,
        "steps": a.steps,
        "warmup_steps": a.warmup,
        "precision": a.precision,
        "optimizer": "adamw8bit" if a.adam8bit else "adamw",
        "gradient_checkpointing": a.gradient_checkpointing,
        "rank": a.rank,
        "model": "sd15 (random weights)" if gpu and not a.quick else "tiny sd",
        "peer_script_ref": ref.read_text().strip() if ref.exists() else None,
        "peer_lora_loads_in_generate": peer_lora_loads,
        "paper_finetune_h_extrapolated": ours.get("paper_finetune_h_extrapolated"),
        "ours_error": ours_error,
        "peer_error": peer_error,
        "dynamo": ours.get("dynamo"),
        # compiled runs: the checked steps' gradients against eager ones (finetune.compile_check_tol)
        "compile_check": ours.get("compile_check"),
        "compile_error": ours.get("compile_error"),
        "compile_mode": ours.get("compile_mode"),
        "ours_process_s": ours.get("process_s"),  # load, compilation, steps and save of ours
        "profile": ours.get("profile"),
        "variants": [
            {**v, "speed_ratio": round(v["it_s"] / peer_it_s, 3) if peer_it_s and "it_s" in v else None}
            for v in variants
        ],
    }


#: the paper config's settings that decide a step's speed (the rest is the benchmark's: steps, data)
PAPER_SPEED_KEYS = (
    "mixed_precision",
    "optimizer",
    "gradient_checkpointing",
    "attention",
    "fuse_qkv_lora",
    "cache_latents",
    "channels_last",
    "compile",
    "compile_mode",
    "allow_tf32",
    "rank",
    "alpha",
    "target_modules",
    "snr_gamma",
    "noise_offset",
)


def _parse_variant(spec: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, {key: YAML value}); ``paper``: config/config.yaml's step,
    alone or as an item (``name:paper,key=value``: the paper's step with that change).

    ``--set``'s value is parsed as the body of a variant named ``ours``."""
    import yaml

    ft = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["finetune"]
    paper = {k: ft[k] for k in PAPER_SPEED_KEYS if k in ft}
    if spec == "paper":
        return "paper", paper
    name, _, body = spec.partition(":")
    if not name or not body:
        raise SystemExit(f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    settings = {}
    for item in body.split(","):
        if item.strip() == "paper":  # the paper's step settings, then the changes after it
            settings.update(paper)
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {spec!r}: {item!r} is not KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return name, settings


if __name__ == "__main__":
    main()
