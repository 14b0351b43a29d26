"""Fewer kernel launches per LoRA attention: q, k and v projected by one matrix product each way.

The paper-flag fine-tune step is host-bound (docs/scaling.md): most of its ~4,800 kernels are the small
products of 128 LoRA layers. In self-attention to_q, to_k and to_v read the same input, and in
cross-attention to_k and to_v do, so their frozen weights can be one (3d, d) matrix, their LoRA
down-projections one (3r, d) matrix and their up-projections one block-diagonal (3d, 3r) matrix:
a third of the products, and one scale-and-add instead of three. The LoRA parameters stay peft's own
tensors (the concatenation is part of the graph), so gradients, the optimizer, checkpoints and the
saved LoRA are unchanged; only the frozen concatenated weights are new memory (about 74 MB at
SD1.5 in fp16).

``finetune.fuse_qkv_lora`` switches it on. Where a projection is not a plain single-adapter peft LoRA
layer (merged, disabled, dropout, a variant such as DoRA, different scales) the processor computes
that attention the unfused way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _lora_parts(layer) -> tuple | None:
    """(frozen weight, frozen bias, lora A weight, lora B weight, scale) of a plain peft LoRA Linear."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(layer, LoraLinear) or layer.merged or layer.disable_adapters:
        return None
    active = list(layer.active_adapters)
    if len(active) != 1 or active[0] not in layer.lora_A or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    base = layer.base_layer
    return base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]


def _fusable(layers) -> list | None:
    parts = [_lora_parts(m) for m in layers]
    if any(p is None for p in parts):
        return None
    if len({p[4] for p in parts}) != 1 or len({p[1] is None for p in parts}) != 1:
        return None
    return parts


class FusedQKV:
    """One attention module's fused projections; the frozen concatenation is built once."""

    def __init__(self, attn):
        self.attn = attn
        self._frozen: dict[tuple, tuple] = {}

    def _base(self, key: tuple, parts: list) -> tuple:
        # the frozen weights never change during a fine-tune: concatenate them once per dtype/device
        cache_key = (key, parts[0][0].dtype, parts[0][0].device)
        if cache_key not in self._frozen:
            with torch.no_grad():
                w = torch.cat([p[0] for p in parts]).contiguous()
                b = torch.cat([p[1] for p in parts]).contiguous() if parts[0][1] is not None else None
            self._frozen[cache_key] = (w, b)
        return self._frozen[cache_key]

    def project(self, x: torch.Tensor, layers, key: tuple) -> list[torch.Tensor] | None:
        """The outputs of ``layers`` (each a LoRA Linear reading ``x``), or None when not fusable."""
        parts = _fusable(layers)
        if parts is None:
            return None
        w, b = self._base(key, parts)
        a = torch.cat([p[2] for p in parts])
        up = torch.block_diag(*[p[3] for p in parts])
        out = F.linear(x, w, b) + F.linear(F.linear(x.to(a.dtype), a), up) * parts[0][4]
        return list(out.split([p[0].shape[0] for p in parts], dim=-1))


class FusedLoraAttnProcessor:
    """diffusers' AttnProcessor2_0 (SDPA) with fused q/k/v LoRA projections."""

    def __init__(self, attn):
        self.fused = FusedQKV(attn)

    def _qkv(self, attn, hidden_states, encoder_hidden_states):
        if encoder_hidden_states is None:  # self-attention: q, k and v read the same input
            out = self.fused.project(hidden_states, (attn.to_q, attn.to_k, attn.to_v), ("qkv",))
            if out is not None:
                return out
            return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        out = self.fused.project(encoder_hidden_states, (attn.to_k, attn.to_v), ("kv",))
        if out is None:
            out = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        return query, *out

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = self._qkv(attn, hidden_states, encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def fuse_qkv_lora(unet) -> int:
    """Give every attention module of the LoRA-adapted ``unet`` the fused processor; returns how many."""
    procs = {
        key: FusedLoraAttnProcessor(unet.get_submodule(key.removesuffix(".processor")))
        for key in unet.attn_processors
    }
    n = len(procs)
    if n:
        unet.set_attn_processor(procs)  # it empties the dict as it goes
    return n
