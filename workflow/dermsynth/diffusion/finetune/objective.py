"""The denoising objective: a micro-batch's noisy latents and target from its index, and its loss."""

from __future__ import annotations

from ...errors import ConfigError
from .data import Batches, LatentCache, Prefetcher, to_device
from .model import Models
from .settings import seed_int


class Objective:
    """Micro-batch ``m``'s inputs depend on (seed, m) only: a resumed run draws the same noise."""

    def __init__(self, models: Models, data: Batches, cache: LatentCache | None, s: dict, dev, dtype):
        self.models, self.data, self.cache, self.dev, self.dtype = models, data, cache, dev, dtype
        sched = models.noise_scheduler
        self.prediction_type = sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"scheduler prediction_type '{self.prediction_type}' is not supported")
        self.scaling = models.vae.config.scaling_factor
        self.n_train_t = sched.config.num_train_timesteps
        self.seed = int(s["seed"])
        self.snr_gamma = None if s["snr_gamma"] is None else float(s["snr_gamma"])
        self.noise_offset = float(s["noise_offset"])
        # without a cache each micro-batch's images are decoded on a thread while the one before trains
        self.loader = Prefetcher(data) if cache is None else None

    def inputs(self, m: int) -> tuple:
        """(noisy latents, timesteps, text conditioning, target) of micro-batch ``m``."""
        import torch

        g = torch.Generator().manual_seed(seed_int(self.seed, "noise", m))
        sched, dev = self.models.noise_scheduler, self.dev
        idx, flips, _ = self.data.indices(m)
        labels = [self.data.labels[i] for i in idx]
        if self.cache is not None:
            mean, std = self.cache.get(idx, flips)
        else:
            pixels, _ = self.loader.get(m)
            with torch.no_grad():
                dist = self.models.vae.encode(pixels.to(dev, dtype=self.dtype)).latent_dist
                mean, std = dist.mean, dist.std
        eps = to_device(torch.randn(mean.shape, generator=g), dev, mean.dtype)
        latents = (mean + std * eps) * self.scaling
        noise = to_device(torch.randn(latents.shape, generator=g), dev, latents.dtype)
        t = to_device(torch.randint(0, self.n_train_t, (latents.shape[0],), generator=g), dev)
        if self.noise_offset:
            # https://www.crosslabs.org/blog/diffusion-with-offset-noise
            offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=g)
            noise = noise + self.noise_offset * to_device(offset, dev, latents.dtype)
        noisy = sched.add_noise(latents, noise, t)
        cond = torch.cat([self.models.embeds[lb] for lb in labels])
        target = noise if self.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        return noisy, t, cond, target

    def loss(self, noisy, t, cond, target):
        """The UNet's MSE against ``target`` (min-SNR weighted with ``snr_gamma``)."""
        import torch
        import torch.nn.functional as F
        from diffusers.training_utils import compute_snr

        pred = self.models.unet(noisy, t, cond, return_dict=False)[0]
        if self.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        # min-SNR weighting (Hang et al. 2023), as diffusers' --snr_gamma
        snr = compute_snr(self.models.noise_scheduler, t)
        w = torch.clamp(snr, max=self.snr_gamma)
        w = w / (snr + 1) if self.prediction_type == "v_prediction" else w / snr
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        return (loss.mean(dim=list(range(1, loss.ndim))) * w).mean()

    def close(self):
        if self.loader is not None:
            self.loader.close()
