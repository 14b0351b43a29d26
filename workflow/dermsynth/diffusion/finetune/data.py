"""The training images as deterministic batches, loaded ahead on a thread or encoded once by the VAE."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from ... import io


class Batches:
    """Deterministic batches: micro-batch ``m`` is batch ``m % nb`` of epoch ``m // nb``; an epoch
    shows every image once, and its last batch repeats up to ``bs - 1`` of them."""

    def __init__(self, images: pd.DataFrame, s: dict):
        self.paths = [str(p) for p in images["path"]]
        self.labels = [str(v) for v in images["label"]]
        self.n = len(self.paths)
        self.bs = int(s["train_batch_size"])
        self.nb = math.ceil(self.n / self.bs)
        self.res = int(s["resolution"])
        self.center_crop = bool(s["center_crop"])
        self.random_flip = bool(s["random_flip"])
        self.seed = int(s["seed"])
        self._plans: dict[int, tuple] = {}

    def _plan(self, epoch: int):
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.n)
            flips = rng.random(self.n) < 0.5
            crops = rng.random((self.n, 2))
            self._plans = {epoch: (perm, flips, crops)}  # only the current epoch is ever needed
        return self._plans[epoch]

    def epoch_of(self, m: int) -> int:
        return m // self.nb

    def indices(self, m: int):
        """(image indices, flip flags, crop fractions) of micro-batch ``m``: always ``bs`` images, the
        last batch of an epoch topped up with the epoch's first ones."""
        epoch, b = divmod(m, self.nb)
        perm, flips, crops = self._plan(epoch)
        # a smaller last batch would change the step's shapes: a compiled UNet would compile again
        # for it (minutes on a GPU), and under CUDA graphs record and keep a second graph
        idx = perm[np.arange(b * self.bs, (b + 1) * self.bs) % self.n]
        return idx, (flips[idx] & self.random_flip), crops[idx]

    def pixels(self, idx, flips, crops):
        import torch

        arrays = [self._load(i, bool(f), c) for i, f, c in zip(idx, flips, crops, strict=True)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def batch(self, m: int):
        idx, flips, crops = self.indices(m)
        return self.pixels(idx, flips, crops), [self.labels[i] for i in idx]

    def _load(self, i: int, flip: bool, crop_frac) -> np.ndarray:
        from PIL import Image

        im = io.load_rgb(self.paths[i])
        w, h = im.size
        scale = self.res / min(w, h)
        if (w, h) != (self.res, self.res):
            im = im.resize(
                (max(self.res, round(w * scale)), max(self.res, round(h * scale))), Image.Resampling.BILINEAR
            )
        w, h = im.size
        if self.center_crop:
            left, top = (w - self.res) // 2, (h - self.res) // 2
        else:
            left, top = int(crop_frac[0] * (w - self.res + 1)), int(crop_frac[1] * (h - self.res + 1))
        im = im.crop((left, top, left + self.res, top + self.res))
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(im, dtype=np.uint8)


class Stream:
    """The micro-batches of the optimizer steps: step ``k`` takes micro-batches ``k * accum * n_proc``
    onwards, and each process every ``n_proc``-th of them, so the union over processes is the one-GPU
    stream and the data seen per optimizer step does not depend on the GPU count."""

    def __init__(self, data: Batches, accum: int, n_proc: int, rank: int):
        self.data, self.accum, self.n_proc, self.rank = data, accum, n_proc, rank

    def total_steps(self, s: dict) -> int:
        """``max_train_steps``, else ``num_train_epochs`` worth of steps (the last may end mid-epoch)."""
        per_epoch = math.ceil(self.data.nb / (self.accum * self.n_proc))
        return int(s["max_train_steps"] or int(s["num_train_epochs"]) * per_epoch)

    def micro_batch(self, step: int, a: int) -> int:
        """This process's ``a``-th micro-batch of optimizer step ``step`` (0-based)."""
        return (step * self.accum + a) * self.n_proc + self.rank

    def epoch_of_step(self, step: int) -> int:
        """The epoch (0-based) in which step ``step`` (0-based) starts."""
        return self.data.epoch_of(step * self.accum * self.n_proc)

    def epochs_after(self, steps: int) -> int:
        """The epochs that the first ``steps`` steps reach into."""
        return self.data.epoch_of(steps * self.accum * self.n_proc - 1) + 1

    def ends_epoch(self, steps: int) -> bool:
        """Whether the first ``steps`` steps end exactly at an epoch's end."""
        last = steps * self.accum * self.n_proc - 1
        return self.data.epoch_of(last + 1) > self.data.epoch_of(last)


class Prefetcher:
    """Loads micro-batch m+1 on a thread while m trains (image decoding is off the GPU's path)."""

    def __init__(self, data: Batches):
        self.data = data
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[int, object] = {}

    def get(self, m: int):
        fut = self.pending.pop(m, None) or self.pool.submit(self.data.batch, m)
        self.pending = {m + 1: self.pool.submit(self.data.batch, m + 1)}
        return fut.result()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def to_device(t, device, dtype=None):
    """A small host tensor onto the device without a stream sync.

    A blocking host-to-device copy waits for every kernel already queued, and a training step makes
    several (noise, timesteps, cache indices); from pageable memory the non-blocking copy still stages
    the data before returning, so the host tensor may go at once.
    """
    return t.to(device=device, dtype=dtype, non_blocking=True)


class LatentCache:
    """The VAE's latent distribution (mean, std) of every image, and of its mirror when flipping is on."""

    def __init__(self, vae, data: Batches, dev, dtype, batch: int):
        import torch

        flips = (False, True) if data.random_flip else (False,)
        means, stds = {}, {}
        with torch.no_grad():
            for flip in flips:
                mu, sd = [], []
                for lo in range(0, data.n, batch):
                    idx = np.arange(lo, min(lo + batch, data.n))
                    pixels = data.pixels(idx, np.full(len(idx), flip), np.zeros((len(idx), 2)))
                    dist = vae.encode(pixels.to(dev, dtype=dtype)).latent_dist
                    mu.append(dist.mean)
                    sd.append(dist.std)
                means[flip], stds[flip] = torch.cat(mu), torch.cat(sd)
        self.means, self.stds = means, stds
        self.nbytes = sum(t.numel() * t.element_size() for t in (*means.values(), *stds.values()))

    def get(self, idx, flips):
        import torch

        dev = self.means[False].device
        idx_t = to_device(torch.as_tensor(np.asarray(idx)), dev)
        flip_t = to_device(torch.as_tensor(np.asarray(flips, dtype=bool)), dev)
        if True not in self.means:
            return self.means[False][idx_t], self.stds[False][idx_t]
        f = flip_t.view(-1, 1, 1, 1)
        mean = torch.where(f, self.means[True][idx_t], self.means[False][idx_t])
        std = torch.where(f, self.stds[True][idx_t], self.stds[False][idx_t])
        return mean, std
