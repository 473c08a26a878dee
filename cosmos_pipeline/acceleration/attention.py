"""Attention with the kernel the plan chose: dispatch over PyTorch's SDPA backends, FlashAttention-3 and
the project's Triton kernels (`cosmos_pipeline.acceleration.kernels`), and the attention processor that
plugs it into diffusers' Cosmos attention modules."""

import torch
import torch.nn.functional as F


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: str) -> torch.Tensor:
    """Softmax attention of (B, H, N, D) tensors with the named kernel; returns (B, N, H * D).

    The Triton kernels cover head sizes 64 and 128 (FP8 tensor cores need 32 or more), FlashAttention-3
    64 to 256; other shapes take PyTorch's SDPA.
    """
    if kernel in ("fa3", "fp8-fa3") and query.shape[-1] in (64, 96, 128, 192, 256) and query.is_cuda:
        import fa3_fwd_interface

        from cosmos_pipeline.acceleration import kernels

        if kernel == "fa3":
            out = fa3_fwd_interface.flash_attn_func(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
            )
        else:
            key, value, value_mean = kernels.smooth_kv(key, value)
            (q8, q_scale), (k8, k_scale), (v8, v_scale) = (
                kernels.quantize_per_head(x) for x in (query, key, value)
            )
            out = fa3_fwd_interface.flash_attn_func(
                q8.transpose(1, 2).contiguous(),
                k8.transpose(1, 2).contiguous(),
                v8.transpose(1, 2).contiguous(),
                q_descale=q_scale,
                k_descale=k_scale,
                v_descale=v_scale,
            )
            out = out + value_mean.transpose(1, 2).to(out.dtype)
        return out.flatten(2, 3)  # FlashAttention works in (B, N, H, D), the layout of the projections
    if kernel == "cudnn":
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(query, key, value, None, False)[0]
    elif kernel == "flash":
        out = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value)[0]
    elif kernel == "efficient":
        out = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, False)[0]
    elif kernel in ("triton", "fp8-triton") and query.shape[-1] in (64, 128) and query.is_cuda:
        from cosmos_pipeline.acceleration import kernels

        out = (kernels.fp8_attention if kernel == "fp8-triton" else kernels.triton_attention)(
            query, key, value
        )
    else:
        out = F.scaled_dot_product_attention(query, key, value)
    return out.transpose(1, 2).flatten(2, 3)


class CosmosAttnProcessor:
    """diffusers' `CosmosAttnProcessor2_0` with the attention kernel chosen by the plan.

    Same projections, QK norms and rotary embedding; the kernel reads the (B, H, N, D) views in place.
    """

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2))
        key = attn.norm_k(attn.to_k(context).unflatten(2, (attn.heads, -1)).transpose(1, 2))
        value = attn.to_v(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        if attention_mask is not None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
            out = out.transpose(1, 2).flatten(2, 3)
        else:
            out = attention(query, key, value, self.kernel)
        return attn.to_out[1](attn.to_out[0](out.type_as(query)))
