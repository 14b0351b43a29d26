"""bitsandbytes' 8-bit AdamW made for a LoRA in flat buffers (flat_params.py) on a busy GPU.

Two host waits per step are gone, with the same updates as bitsandbytes' own step:

- bitsandbytes' ``step`` calls ``torch.cuda.synchronize()`` once per tensor, which only its paged
  optimizers need; this step runs the same kernels (its own ``update_step``) in the same order, on
  the default stream where the forward and backward run, so they follow the backward without a wait.
- Under fp16, ``GradScaler.step`` reads the overflow flag on the host (``.item()``) to decide whether
  to call ``step`` at all: the host then waits for the whole backward before it can queue anything of
  the next step. Like torch's fused optimizers, this one says it handles the flag itself
  (``_step_supports_amp_scaling``): it always updates, and where the gradients overflowed it puts
  the parameters and states back on the device. bitsandbytes counts steps on the host (bias
  correction reads the count), so the count learns of an overflow one step late, before the next
  update reads it (``_settle``); by then the flag's copy has long arrived. As with torch's fused
  AdamW under Accelerate, a skipped step still advances the learning-rate schedule.
"""

from __future__ import annotations

import functools


@functools.cache
def adamw8bit_class():
    import bitsandbytes as bnb
    import torch

    class AdamW8bit(bnb.optim.AdamW8bit):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # GradScaler then hands the step its overflow flag and scale as tensors (found_inf,
            # grad_scale) instead of reading the flag on the host; paged optimizers keep
            # bitsandbytes' own step, which knows nothing of them
            self._step_supports_amp_scaling = not self.is_paged
            self._pending_skip = None  # (host flag, copy event, parameters stepped) of the last step
            self._flag = None

        def get_config(self, gindex, pindex, group):
            config = super().get_config(gindex, pindex, group)
            # a flat buffer of small tensors asks for bitsandbytes' 32-bit states (flat_params.py)
            config["optim_bits"] = group.get("optim_bits", config["optim_bits"])
            return config

        def _settle(self) -> None:
            """Takes the last step off the step counts if its gradients overflowed."""
            pending, self._pending_skip = self._pending_skip, None
            if pending is None:
                return
            flag, event, stepped = pending
            if event is not None:
                event.synchronize()  # the flag's copy only, queued right after that step's update
            if bool(flag):
                for p in stepped:
                    self.state[p]["step"] -= 1

        def state_dict(self):
            self._settle()
            return super().state_dict()

        def load_state_dict(self, state_dict, *args, **kwargs):
            self._pending_skip = None
            return super().load_state_dict(state_dict, *args, **kwargs)

        @torch.no_grad()
        def step(self, closure=None):
            if self.is_paged:
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            found_inf = getattr(self, "found_inf", None)  # set by GradScaler.step for this call only
            grad_scale = getattr(self, "grad_scale", None)
            self._settle()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            work = []
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if len(self.state[p]) == 0:
                        self.init_state(group, p, gindex, pindex)
                    work.append((group, p, gindex, pindex))
            if grad_scale is not None:
                # not unscaled yet (GradScaler's READY stage): as GradScaler.unscale_ would
                inv = grad_scale.double().reciprocal().float()
                torch._foreach_mul_([w[1].grad for w in work], inv)
            undo = []
            if found_inf is not None:
                for _, p, _, _ in work:
                    undo += [(t, t.clone()) for t in (p, *self.state[p].values()) if torch.is_tensor(t)]
            for w in work:
                self.update_step(*w)
            if found_inf is not None:
                skip = found_inf > 0
                for t, before in undo:
                    torch.where(skip, before, t, out=t)
                on_cuda = skip.device.type == "cuda"
                if self._flag is None:
                    self._flag = torch.zeros((), dtype=torch.bool, pin_memory=on_cuda)
                self._flag.copy_(skip, non_blocking=on_cuda)
                event = None
                if on_cuda:
                    event = torch.cuda.Event()
                    event.record()
                self._pending_skip = (self._flag, event, [w[1] for w in work])
            return loss

    return AdamW8bit
