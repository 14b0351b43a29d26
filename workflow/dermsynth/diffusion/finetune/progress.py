"""What a fine-tune reports as it goes and at its end: the loss history, memory peaks, the loss plot."""

from __future__ import annotations

import logging
import math
import resource
from pathlib import Path

import pandas as pd

from ... import io
from ...errors import TrainingError

log = logging.getLogger("dermsynth")


class LossLog:
    """The loss of every step, kept on the device until ``flush`` syncs them to the host in one transfer.

    ``history`` holds [step, epoch, loss, lr] rows (a resumed job starts from its checkpoint's);
    a NaN/inf found at a flush names its step and stops the job before anything is saved.
    """

    def __init__(
        self, accelerator, history: list, s: dict, mixed_precision: str, writer, total: int, start: int
    ):
        from ...progress import Bar

        self.accelerator, self.history, self.writer = accelerator, history, writer
        self.bar = Bar(
            total=total, initial=start, desc="finetune", unit="step", disable=not accelerator.is_main_process
        )
        self.lr = s["lora_learning_rate"]
        self.hint = " or use mixed_precision 'bf16'/'no'" if mixed_precision == "fp16" else ""
        self.pending: list = []  # (step, epoch, lr, loss tensor) not yet synced to the host

    def add(self, step: int, epoch: int, lr: float, loss) -> None:
        self.pending.append((step, epoch, lr, loss))
        self.bar.update(1)

    def flush(self) -> None:
        """Sync the pending losses to the host (one transfer), check them, append them to the history."""
        import torch

        if not self.pending:
            return
        values = self.accelerator.reduce(torch.stack([p[3] for p in self.pending]), reduction="mean")
        for (step, epoch, lr, _), v in zip(self.pending, values.float().cpu().tolist(), strict=True):
            if not math.isfinite(v):
                raise TrainingError(
                    f"loss became {v} at step {step} (epoch {epoch}): lower finetune.lora_learning_rate "
                    f"(now {self.lr}){self.hint}; no LoRA was written"
                )
            self.history.append([step, epoch, v, lr])
            if self.writer is not None:
                self.writer.add_scalar("loss", v, step)
                self.writer.add_scalar("lr", lr, step)
        self.bar.set_postfix(loss=f"{self.history[-1][2]:.4f}", refresh=False)
        self.pending.clear()

    def loss_at(self, step: int) -> float | None:
        """The loss of ``step`` where it is on the host already, else None."""
        return self.history[-1][2] if self.history and self.history[-1][0] == step else None

    def close(self) -> None:
        self.bar.close()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history, columns=["step", "epoch", "loss", "lr"])


class MemoryPeaks:
    """GPU memory peaks (allocated, reserved; GB) of training's and of validation's stretches apart."""

    def __init__(self, device: str):
        self.device = device
        self.peaks = {"train": [0.0, 0.0], "validation": [0.0, 0.0]}

    def note(self, kind: str) -> None:
        """Adds the GPU memory peaks since the last call to ``kind``'s, then restarts them: each figure
        is then of its own stretches only."""
        import torch

        if self.device.startswith("cuda"):
            # reserved is the figure to read under CUDA graphs: their memory pool stays reserved
            # between replays, which max_memory_allocated misses
            now = (torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9)
            self.peaks[kind] = [max(old, new) for old, new in zip(self.peaks[kind], now, strict=True)]
            torch.cuda.reset_peak_memory_stats()

    def figures(self) -> dict:
        """The summary's memory figures, in GB."""
        if not self.device.startswith("cuda"):
            rss = round(peak_mem_gb(self.device), 3)  # a process's RSS peak cannot be split by stretch
            return {
                "peak_mem_gb": rss,
                "peak_mem_with_validation_gb": rss,
                "peak_mem_reserved_gb": None,
                "peak_mem_reserved_with_validation_gb": None,
            }
        (alloc, reserved), (val_alloc, val_reserved) = self.peaks["train"], self.peaks["validation"]
        return {
            "peak_mem_gb": round(alloc, 3),
            "peak_mem_with_validation_gb": round(max(alloc, val_alloc), 3),
            "peak_mem_reserved_gb": round(reserved, 3),
            "peak_mem_reserved_with_validation_gb": round(max(reserved, val_reserved), 3),
        }


def peak_mem_gb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def tensorboard(s: dict, log_dir: Path, is_main: bool):
    """A SummaryWriter when ``tensorboard`` is installed and wanted; None otherwise (never required)."""
    if not (s["tensorboard"] and is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard not installed: no TensorBoard logs (loss.csv has the same numbers)")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def plot_loss(history: pd.DataFrame, path) -> None:
    """Loss per step and its moving average (the paper's Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, min(50, len(history) // 10))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(history["step"], history["loss"], lw=0.8, alpha=0.4, label="loss")
    ax.plot(
        history["step"],
        history["loss"].rolling(window, min_periods=1).mean(),
        lw=1.8,
        label=f"moving average ({window} steps)",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title("DreamBooth-LoRA training loss")
    ax.legend()
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
