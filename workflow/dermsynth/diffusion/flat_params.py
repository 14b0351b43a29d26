"""Trainable parameters as views of a few flat buffers, so per-step bookkeeping is a call per buffer.

A LoRA on SD1.5's attention projections (rank 4) is 256 small matrices. The optimizer step, the
gradient clip, the fp16 scaler's unscale and zero_grad each loop over them: 256 Python calls and
kernel launches apiece, which the GPU waits for once the host is the limit.
With every matrix a view of one flat buffer, and its gradient a view of one flat gradient buffer
that autograd accumulates into in place, each of those is one call per buffer.

The values do not change. AdamW, the unscale and the clip's scaling are elementwise (the clip's norm
only sums in another order). bitsandbytes' 8-bit AdamW keeps its states in blocks of 256 elements,
quantized per block, and 32-bit states for tensors under 4096 elements: matrices of that size get
their own buffer, and every matrix of the other starts on a block boundary (zero padding between),
so each block holds the same elements as it would for the matrix alone.
"""

from __future__ import annotations

#: bitsandbytes' blockwise 8-bit optimizer state block, and the size under which it keeps 32-bit states
BNB_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096


class FlatParams:
    """Re-homes ``params`` (same dtype and device) into flat buffers; ``flat`` are what to optimize.

    ``split_at``: tensors with fewer elements go to a second buffer (``small`` flags it), whose
    optimizer group can then keep other settings. ``align``: each tensor of the first buffer starts
    at a multiple of it.
    """

    def __init__(self, params, split_at: int | None = None, align: int = 1):
        import torch

        self.params = list(params)
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError("flat parameters need one dtype and one device")
        large = [p for p in self.params if split_at is None or p.numel() >= split_at]
        small = [p for p in self.params if split_at is not None and p.numel() < split_at]
        self.flat, self.small = [], []
        for members, is_small in ((large, False), (small, True)):
            if not members:
                continue
            step = 1 if is_small else max(1, int(align))
            offsets, n = [], 0
            for p in members:
                offsets.append(n)
                n += -(-p.numel() // step) * step
            buf = torch.zeros(n, dtype=members[0].dtype, device=members[0].device)
            grad = torch.zeros_like(buf)
            with torch.no_grad():
                for p, o in zip(members, offsets, strict=True):
                    k = p.numel()
                    buf[o : o + k].copy_(p.reshape(-1))
                    p.data = buf[o : o + k].view_as(p)
                    # a defined grad makes autograd add into it in place instead of allocating one
                    p.grad = grad[o : o + k].view_as(p)
            flat = torch.nn.Parameter(buf)
            flat.grad = grad
            self.flat.append(flat)
            self.small.append(is_small)

    def verify(self) -> None:
        """Raises if a parameter or its gradient no longer lives in the buffers (something re-homed it,
        as DDP's start-up broadcast does): the optimizer would then update buffers nobody reads."""
        homes = {f.untyped_storage().data_ptr() for f in self.flat}
        homes |= {f.grad.untyped_storage().data_ptr() for f in self.flat}
        for p in self.params:
            if (
                p.grad is None
                or not {p.untyped_storage().data_ptr(), p.grad.untyped_storage().data_ptr()} <= homes
            ):
                raise RuntimeError(
                    "a trainable parameter left its flat buffer: the optimizer would not update it"
                )

    def zero_grad(self) -> None:
        for f in self.flat:
            f.grad.zero_()

    def release(self) -> None:
        """Gives every parameter its own storage again (safetensors refuses tensors sharing memory)."""
        for p in self.params:
            p.data = p.data.clone()
            p.grad = None
        self.flat = []
