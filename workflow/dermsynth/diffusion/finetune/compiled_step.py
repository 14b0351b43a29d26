"""The compiled training step: torch.compile of the UNet, its CUDA graphs, its check against eager and
its fallbacks.

A miscompiled backward trains silently wrong, so the first step's gradients are compared with eager
ones, and with CUDA graphs those of their first replay too (a graph is recorded on the second call
and replayed from the third: its inputs and outputs live in other memory than the first's). A failure
in the calls where torch.compile builds its graphs (and, with CUDA graphs, records and first replays
them) trains on, without CUDA graphs where the compile itself went through, else eager, instead of
ending the job. The benchmarks read ``compiles_on`` and ``cuda_graphs_ran`` to say what a job does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math

from ...errors import one_line
from ..pipeline import compile_unavailable

log = logging.getLogger("dermsynth")


def compiles_on(device: str) -> bool:
    """torch.compile pays on CUDA only: on CPU its minutes of compilation outweigh the step it speeds."""
    return device.startswith("cuda")


def compile_backend() -> str:
    return "inductor"


def records_cuda_graphs(mode: str) -> bool:
    """Whether torch.compile's ``mode`` replays the step as CUDA graphs (where the device allows)."""
    return mode in ("reduce-overhead", "max-autotune")


def without_cuda_graphs(mode: str) -> str:
    """The compile mode that builds the same kernels as ``mode`` but records no CUDA graphs."""
    return "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"


def compile_checks(mode: str) -> int:
    """How many steps of a compiled job are checked against eager: 2 where the mode records CUDA
    graphs (the first run and the first replay), else 1."""
    return 2 if records_cuda_graphs(mode) else 1


def compile_trial_calls(mode: str) -> int:
    """The compiled calls in which torch.compile builds its graphs: the first; where the mode records
    CUDA graphs, up to the first replay (warm-up, record, replay)."""
    return 3 if records_cuda_graphs(mode) else 1


def cuda_graphs_ran(compiled: bool, mode: str, skips_before: int = 0) -> bool | None:
    """The summary's ``cuda_graphs``: null where the job records none, else whether Inductor has
    declined none since ``skips_before`` (it records no graph of a CPU step, and may decline a GPU
    one, e.g. for a CPU tensor in it)."""
    if not (compiled and records_cuda_graphs(mode) and compile_backend() == "inductor"):
        return None
    return cudagraph_skips() == skips_before


def cudagraph_skips() -> int:
    """How many times Inductor declined CUDA graphs in this process (it logs each reason on CUDA)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def grad_rel_error(ref: list, got: list) -> float:
    """||got - ref|| / ||ref|| over all tensors: nan where ``ref`` is not finite (no reference),
    inf where only ``got`` is not, 0 where both are 0."""
    den = sum(float(r.float().square().sum()) for r in ref)
    if not math.isfinite(den):
        return math.nan
    num = sum(float((g.float() - r.float()).square().sum()) for r, g in zip(ref, got, strict=True))
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def eager():
    """Context in which compiled modules run their eager code (torch >= 2.6), else no-op."""
    import torch

    if hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()


def upsample2x_nearest(m, hidden_states, output_size=None, *args, **kwargs):
    """diffusers' Upsample2D at its SD settings, the 2x nearest copy written as broadcast + reshape.

    Same values as ``F.interpolate(scale_factor=2.0, mode="nearest")``, same memory format; its
    backward is a sum over each 2x2 block where interpolate's is a scatter-add (index_put).
    """
    import torch

    n, c, h, w = hidden_states.shape
    if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
        return type(m).forward(m, hidden_states, output_size, *args, **kwargs)
    if hidden_states.is_contiguous(memory_format=torch.channels_last) and c > 1:
        # NHWC: copy in that order, so the result stays channels-last with a single copy
        x = hidden_states.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c)
        x = x.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    else:
        x = hidden_states[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
    return m.conv(x)


def upsampling_without_scatter(unet) -> int:
    """Routes the UNet's 2x nearest upsamplers through ``upsample2x_nearest``; returns how many.

    Inductor (torch 2.13, CPU) can order the scatter-add of interpolate's backward after a kernel
    that already reads its result when a division follows it, as ResnetBlock2D's
    ``/ output_scale_factor`` does before every SD up-block's Upsample2D: the gradient into the up
    block comes back zero. Which shapes it hits depends on its fusion choices (the test UNet's, not
    SD1.5's at 16x16 latents; the CPU repro's shapes came out right with torch 2.11's Triton on an
    H100); a block sum has no scatter to misorder.
    """
    from diffusers.models.upsampling import Upsample2D

    n = 0
    for m in unet.modules():
        if (
            type(m) is Upsample2D
            and m.interpolate
            and m.use_conv
            and not m.use_conv_transpose
            and m.norm is None
            and m.name == "conv"
        ):
            m.forward = functools.partial(upsample2x_nearest, m)
            n += 1
    return n


class CompiledStep:
    """A micro-batch's forward and backward through the UNet, compiled where the settings and the
    device allow, checked against eager, and falling back (without CUDA graphs, then eager) where
    compiling fails; eager throughout where the UNet is not compiled.

    ``mode`` is what the job compiles with now: a failed CUDA-graph recording drops the graphs.
    """

    def __init__(self, accelerator, unet, flat, s: dict, device: str, dev):
        self.accelerator, self.unet, self.flat, self.device = accelerator, unet, flat, device
        self.requested_mode = self.mode = s["compile_mode"]
        self.tol = s["compile_check_tol"]
        self.compiled = bool(s["compile"]) and compiles_on(device)
        if self.compiled and (why := compile_unavailable(dev)) is not None:
            log.warning(
                "torch.compile cannot build kernels here (%s): training eager, about 2.4x slower per step; "
                "finetune.compile: false skips this check",
                why,
            )
            self.compiled = False
        if self.compiled:
            upsampling_without_scatter(accelerator.unwrap_model(unet))
            self._compile(self.mode)
        self.checks: list = []  # the summary's compile_check: {step, grad_rel_error} per check
        self.error = None  # the summary's compile_error: why compiling or recording failed
        self.cuda_graphs = None  # the summary's cuda_graphs, once finished
        self._stance = contextlib.ExitStack()  # holds the eager fallback until the loop ends

    def _compile(self, mode: str) -> None:
        # in place (Module.compile), so parameter names and the saved LoRA keys stay as they are;
        # the first step pays the compilation (minutes for SD1.5 forward + backward, once per job)
        self.accelerator.unwrap_model(self.unet).compile(
            mode=None if mode == "default" else mode, backend=compile_backend()
        )

    def begin(self, start: int) -> None:
        """Arms the checks and the trial calls for a loop that starts at step ``start``."""
        self.checks_left = 0 if not self.compiled or self.tol is None else compile_checks(self.mode)
        self.next_check = start
        self.trial_calls = compile_trial_calls(self.mode) if self.compiled else 0
        self.skips_before = cudagraph_skips()

    def mark_step_begin(self) -> None:
        if self.compiled:
            # with CUDA graphs (compile_mode reduce-overhead) each micro-batch replays one graph
            # over the last one's outputs; nothing of those is read again (the loss is computed
            # outside the graph, the grads are added into the flat buffers)
            import torch

            torch.compiler.cudagraph_mark_step_begin()

    def backward(self, step: int, first_micro_batch: bool, loss_fn, inputs: tuple):
        """``loss_fn(*inputs)`` and its backward into the flat gradient buffers; returns the loss.

        The micro-batch whose compiled gradient is checked (a step's first: its buffers are zero) runs
        eager first as the reference; one whose compiled call fails runs again, from the gradients it
        started from, without CUDA graphs or eager.
        """
        flat = self.flat
        check_now = self.checks_left > 0 and step >= self.next_check and first_micro_batch
        if check_now:
            with eager():
                self.accelerator.backward(loss_fn(*inputs))
            eager_grads = [f.grad.clone() for f in flat.flat]
            flat.zero_grad()
        before = [f.grad.clone() for f in flat.flat] if self.trial_calls > 0 else None
        while True:
            loss, failed = None, None
            try:
                loss = loss_fn(*inputs)
                self.accelerator.backward(loss)
            except Exception as e:
                if before is None:
                    raise
                # dynamo's wrapper names the backend; the cause names what failed
                failed = one_line(getattr(e, "inner_exception", None) or e, limit=300)
            if failed is None:
                break
            # out of the except block, so the failed call's traceback no longer holds its
            # activations: the micro-batch again, from the gradients it started from
            self.error, loss = failed, None
            for f, b in zip(flat.flat, before, strict=True):
                f.grad.copy_(b)
            if not self._fall_back(step):
                check_now, before = False, None
        self.trial_calls = max(0, self.trial_calls - 1)
        del before
        if check_now:
            self._check(step, eager_grads)
        return loss

    def _fall_back(self, step: int) -> bool:
        """After a failed compiled call: compiled without CUDA graphs (True) or eager (False)."""
        # a compiled call went through (only CUDA-graph modes try more than one), so the kernels
        # built and recording or replaying the graphs failed
        if self.trial_calls < compile_trial_calls(self.mode):
            log.warning(
                "torch.compile's CUDA graphs failed at step %d (%s): training compiled "
                "without them (compile_mode %s)",
                step + 1,
                self.error,
                without_cuda_graphs(self.mode),
            )
            # the same kernels launched one by one still beat eager by 2.4x on an H100
            self.drop(without_cuda_graphs(self.mode))
            return True
        log.warning(
            "torch.compile failed at step %d (%s): training eager, about 2.4x slower; "
            "finetune.compile: false skips compiling",
            step + 1,
            self.error,
        )
        self._train_eager_from_now()
        return False

    def _check(self, step: int, eager_grads: list) -> None:
        err = grad_rel_error(eager_grads, [f.grad for f in self.flat.flat])
        if math.isnan(err):  # fp16: the scaler's first scales may overflow; the next step checks
            return
        self.checks_left -= 1
        self.next_check = step + 2  # this step's call is the warm-up; +2 is the replay
        self.checks.append({"step": step + 1, "grad_rel_error": err})
        if err > float(self.tol):
            log.warning(
                "torch.compile's gradients differ from eager ones (relative error %.3g > "
                "finetune.compile_check_tol %s): training eager, about 2.4x slower",
                err,
                self.tol,
            )
            for f, e in zip(self.flat.flat, eager_grads, strict=True):
                f.grad.copy_(e)
            self._train_eager_from_now()
        else:
            log.info("compiled gradients match eager ones (relative error %.3g)", err)

    def _train_eager_from_now(self) -> None:
        self._stance.enter_context(eager())
        self.compiled, self.checks_left, self.trial_calls = False, 0, 0

    def drop(self, mode: str) -> None:
        """Drops the compiled step and its CUDA graphs (dynamo's reset frees their memory pool): the next
        call compiles ``mode`` again, from Inductor's caches (20 s against 3 min cold for SD1.5's step
        on CPU), and records anew, with the compile's trial calls again."""
        import torch

        torch._dynamo.reset()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if mode != self.mode:
            self.mode = mode
            self._compile(mode)
        self.trial_calls = compile_trial_calls(mode)

    def before_validation(self) -> None:
        """Frees the CUDA graphs' memory pool, which validation's eager allocations cannot use, so
        validation needs no memory beyond training's; the next step records them again."""
        if self.compiled and records_cuda_graphs(self.mode):
            self.drop(self.mode)

    def close(self) -> None:
        """Ends the eager fallback, if any (the loop's end)."""
        self._stance.close()

    def finish(self) -> None:
        """Settles ``cuda_graphs`` once the loop has run: whether Inductor recorded what the mode asks."""
        self.cuda_graphs = cuda_graphs_ran(self.compiled, self.requested_mode, self.skips_before)
        if self.mode != self.requested_mode:
            # recording failed: compile_error says why
            self.cuda_graphs = None if self.cuda_graphs is None else False
        elif self.cuda_graphs is False and self.device.startswith("cuda"):
            log.warning(
                "compile_mode %s: torch.compile replayed no CUDA graphs for %d graph(s) (the "
                "torch._inductor.cudagraph warnings above say why): the step ran as in mode default",
                self.mode,
                cudagraph_skips() - self.skips_before,
            )

    def summary(self) -> dict:
        return {
            "compile": self.compiled,
            "compile_mode": self.mode if self.compiled else None,
            "compile_check": self.checks or None,
            "compile_error": self.error,
            "cuda_graphs": self.cuda_graphs,
        }
