"""Stable Diffusion side of the paper: model loading, DreamBooth-LoRA training, sampling.

Submodules import torch/diffusers lazily so that importing ``dermsynth.diffusion`` stays cheap.
"""
