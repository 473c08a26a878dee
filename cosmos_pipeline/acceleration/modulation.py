"""Per-frame adaLN modulation: `CosmosTransformer3DModel.forward` with the timestep embeddings kept per
latent frame instead of broadcast to every token (same math per element, far fewer rows through the
modulation MLPs). Mirrors diffusers 0.42's forward, hence the pin in pyproject.toml."""

import torch
from torch import nn


def _modulated(
    norm, hidden_states: torch.Tensor, embedded_timestep: torch.Tensor, temb: torch.Tensor | None, parts: int
):
    """`CosmosAdaLayerNorm(Zero)` with (B, T, C) embeddings: the modulation is computed per latent frame.

    diffusers broadcasts the timestep embedding to every token first (84,480 rows at 720p) and runs the
    modulation MLP on each; here it runs on T rows and broadcasts the result. Same math per element.
    """
    emb = norm.linear_2(norm.linear_1(norm.activation(embedded_timestep)))
    if temb is not None:
        emb = emb + temb[..., : emb.shape[-1]]
    chunks = emb.unsqueeze(2).chunk(parts, dim=-1)  # each (B, T, 1, C)
    batch, tokens, channels = hidden_states.shape
    frames = emb.shape[1]
    normed = norm.norm(hidden_states).view(batch, frames, tokens // frames, channels)
    out = (normed * (1 + chunks[1]) + chunks[0]).view(batch, tokens, channels)
    return out, (chunks[2] if parts == 3 else None)


def _gated(hidden_states: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    batch, tokens, channels = hidden_states.shape
    return hidden_states + (gate * update.view(batch, gate.shape[1], -1, channels)).view(
        batch, tokens, channels
    )


class FrameModulatedBlock(nn.Module):
    """A `CosmosTransformerBlock` run with per-frame modulation; shares the block's weights."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(
        self,
        hidden_states: torch.Tensor,
        text_context: torch.Tensor,
        embedded_timestep: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        extra_pos_emb: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        block = self.block
        if extra_pos_emb is not None:
            hidden_states = hidden_states + extra_pos_emb
        normed, gate = _modulated(block.norm1, hidden_states, embedded_timestep, temb, 3)
        hidden_states = _gated(hidden_states, gate, block.attn1(normed, image_rotary_emb=image_rotary_emb))
        normed, gate = _modulated(block.norm2, hidden_states, embedded_timestep, temb, 3)
        update = block.attn2(normed, encoder_hidden_states=text_context, attention_mask=attention_mask)
        hidden_states = _gated(hidden_states, gate, update)
        normed, gate = _modulated(block.norm3, hidden_states, embedded_timestep, temb, 3)
        return _gated(hidden_states, gate, block.ff(normed))


def frame_modulation_hook(blocks: list[FrameModulatedBlock]):
    """A diffusers `ModelHook` replacing `CosmosTransformer3DModel.forward` by the per-frame version.

    Falls back to the original forward for inputs it does not cover (ControlNet residuals, image
    context, one timestep per sample, temporal patches).
    """
    from diffusers.hooks import ModelHook

    class FrameModulation(ModelHook):
        def new_forward(
            self,
            module,
            hidden_states: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            block_controlnet_hidden_states: list[torch.Tensor] | None = None,
            attention_mask: torch.Tensor | None = None,
            fps: int | None = None,
            condition_mask: torch.Tensor | None = None,
            padding_mask: torch.Tensor | None = None,
            return_dict: bool = True,
        ):
            config = module.config
            if (
                block_controlnet_hidden_states is not None
                or isinstance(encoder_hidden_states, tuple)
                or timestep.ndim != 5
                or config.patch_size[0] != 1
            ):
                return self.fn_ref.original_forward(
                    hidden_states, timestep, encoder_hidden_states, block_controlnet_hidden_states,
                    attention_mask, fps, condition_mask, padding_mask, return_dict,
                )  # fmt: skip
            return frame_modulated_forward(
                module, blocks, hidden_states, timestep, encoder_hidden_states, attention_mask, fps,
                condition_mask, padding_mask, return_dict,
            )  # fmt: skip

    return FrameModulation()


def frame_modulated_forward(
    module,
    blocks,
    hidden_states,
    timestep,
    encoder_hidden_states,
    attention_mask,
    fps,
    condition_mask,
    padding_mask,
    return_dict,
):
    """`CosmosTransformer3DModel.forward` (diffusers 0.42) with the timestep embeddings kept per frame."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from torchvision import transforms

    config = module.config
    batch_size, _, num_frames, height, width = hidden_states.shape

    # 1. Condition and padding masks as extra channels
    if condition_mask is not None:
        hidden_states = torch.cat([hidden_states, condition_mask], dim=1)
    if config.concat_padding_mask:
        padding_mask = transforms.functional.resize(
            padding_mask, list(hidden_states.shape[-2:]), interpolation=transforms.InterpolationMode.NEAREST
        )
        hidden_states = torch.cat(
            [hidden_states, padding_mask.unsqueeze(2).repeat(batch_size, 1, num_frames, 1, 1)], dim=1
        )
    if attention_mask is not None:
        attention_mask = attention_mask.unsqueeze(1).unsqueeze(1)

    # 2-3. Positional embeddings and patches
    image_rotary_emb = module.rope(hidden_states, fps=fps)
    extra_pos_emb = module.learnable_pos_embed(hidden_states) if config.extra_pos_embed_type else None
    _, p_h, p_w = config.patch_size
    rows, cols = height // p_h, width // p_w
    hidden_states = module.patch_embed(hidden_states).flatten(1, 3)

    # 4. Timestep embeddings, one per latent frame: (B, T, C)
    temb, embedded_timestep = module.time_embed(hidden_states, timestep.flatten())
    temb, embedded_timestep = (
        temb.view(batch_size, num_frames, -1),
        embedded_timestep.view(batch_size, num_frames, -1),
    )

    # 5. Text context
    text_context = (
        module.crossattn_proj(encoder_hidden_states)
        if config.use_crossattn_projection
        else encoder_hidden_states
    )

    # 6. Blocks
    for block in blocks:
        hidden_states = block(
            hidden_states,
            text_context,
            embedded_timestep,
            temb,
            image_rotary_emb,
            extra_pos_emb,
            attention_mask,
        )

    # 7. Output norm, projection and unpatchify (diffusers' permutation, which is correct as written)
    hidden_states, _ = _modulated(module.norm_out, hidden_states, embedded_timestep, temb, 2)
    hidden_states = module.proj_out(hidden_states)
    hidden_states = hidden_states.unflatten(2, (p_h, p_w, 1, -1)).unflatten(1, (num_frames, rows, cols))
    hidden_states = hidden_states.permute(0, 7, 1, 6, 2, 4, 3, 5).flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)
