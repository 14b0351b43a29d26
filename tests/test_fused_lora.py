"""finetune.fuse_qkv_lora: the fused q/k/v LoRA projections give the unfused forward and gradients."""

import copy

import _diffusion_fixtures as fx
import pytest
import torch

from dermsynth.diffusion.finetune.fused_lora import FusedLoraAttnProcessor, fuse_qkv_lora


@pytest.fixture(scope="module")
def lora_unet(tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(fx.tiny_sd(tmp_path_factory), subfolder="unet")
    unet.requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=8,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    with torch.no_grad():  # B starts at zero: give it values, or the LoRA adds nothing to compare
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    return unet


def _step(unet):
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    ctx = torch.randn(2, 7, cfg.cross_attention_dim, generator=g)
    unet.zero_grad(set_to_none=True)
    out = unet(x, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample
    out.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}
    return out.detach(), grads


def test_fused_projections_give_the_unfused_output_and_lora_gradients(lora_unet):
    plain = _step(lora_unet)
    fused_unet = copy.deepcopy(lora_unet)
    n = fuse_qkv_lora(fused_unet)
    assert n == len(lora_unet.attn_processors) and n > 0
    assert all(isinstance(p, FusedLoraAttnProcessor) for p in fused_unet.attn_processors.values())
    fused = _step(fused_unet)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
    assert set(fused[1]) == set(plain[1]) and any("to_q.lora_A" in k for k in fused[1])
    for name, grad in plain[1].items():
        assert grad.abs().sum() > 0, name  # every LoRA tensor is reached, so the comparison means something
        torch.testing.assert_close(fused[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the LoRA is still peft's: the same parameters, saved under the same names
    assert {n for n, _ in fused_unet.named_parameters()} == {n for n, _ in lora_unet.named_parameters()}


def test_an_unfusable_projection_falls_back_to_the_plain_layers(lora_unet):
    # a disabled adapter is not fusable: the processor must take each layer's own forward
    plain, fused = copy.deepcopy(lora_unet), copy.deepcopy(lora_unet)
    fuse_qkv_lora(fused)
    cfg = plain.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    ctx = torch.randn(2, 7, cfg.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        with_lora = fused(x, t, encoder_hidden_states=ctx).sample
        plain.disable_adapters()
        fused.disable_adapters()
        base = plain(x, t, encoder_hidden_states=ctx).sample
        torch.testing.assert_close(fused(x, t, encoder_hidden_states=ctx).sample, base, rtol=1e-5, atol=1e-5)
    assert (with_lora - base).abs().max() > 1e-3  # the LoRA did change the output while enabled
