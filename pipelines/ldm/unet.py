"""The denoiser: a stock diffusers UNet conditioned on the AD/NC label (or the null label), and
optionally on the slice's level in its patient's stack."""

from __future__ import annotations

from diffusers import UNet2DConditionModel, UNet2DModel

from ..errors import UserError
from ..slices import NULL_LABEL
from .pipeline_adni import POSITION_FEATURES

CONDITIONINGS = ("class_embed", "cross_attention")  # how the UNet reads the label
LABEL_IDS = NULL_LABEL + 1  # the classes, then the null label of classifier-free guidance


def build_unet(cfg, latent_channels: int, latent_size: int) -> UNet2DModel | UNet2DConditionModel:
    """The denoiser, conditioned on the label id (NC, AD or null) one of two ways.

    ``class_embed``: UNet2DModel whose label embedding is added to the time embedding.
    ``cross_attention``: UNet2DConditionModel reading the label as one context token: the
    one-hot id through its ``encoder_hid_proj`` (a Linear, i.e. a learned token table), then
    cross-attention where ``attention_levels`` put attention. A stock diffusers model either way.

    ``level_conditioning`` (with ``class_embed``, a rule of the config schema): a
    UNet2DConditionModel that is the label-only UNet2DModel plus one level path, so the level
    costs the label nothing (feeding the label only through the level's MLP lost the mid block's
    attention and followed the AD label less):

    - the label: ``num_class_embeds`` (``class_embed_type`` None), the same learned table
      UNet2DModel adds to the time embedding;
    - the level: ``addition_embed_type="text_time"`` (SDXL's micro-conditioning path): the
      level x 1000 as ``time_ids`` through ``add_time_proj`` (the timestep's sinusoids, 64 of
      them) and, beside them as ``text_embeds``, the one-hot label, into the ``add_embedding``
      MLP, added to the time embedding (``pipeline_adni.condition_inputs``), so that the
      level's embedding can depend on the label (the level error was lower with the label
      beside it than with the level alone);
    - the mid block: "UNetMidBlock2DSimpleCrossAttn" with ``mid_block_only_cross_attention``
      and no context: given no ``encoder_hidden_states`` its attention reads the feature map
      itself, so it is self-attention between two ResNets with UNet2DModel's mid block's
      parameter count (its keys and values skip the group norm the queries get). diffusers'
      "UNetMidBlock2D" for this class has one ResNet and no attention.

    Down and up blocks are the label-only model's; only the level MLP (83K at the demo size) is
    extra. A stock diffusers model: the saved folder loads in plain diffusers.

    ``stack_conditioning`` (on the level-conditioned model): the input also holds the next-lower
    slice's latent and a "neighbour present" channel (``pipeline_adni.neighbour_channels``), so
    the UNet reads 2C + 1 channels and predicts C (cDPM-style, Peng et al. 2023).
    """
    levels = len(cfg.block_out_channels)
    attention = list(cfg.attention_levels)
    if len(attention) != levels:
        raise UserError(f"unet.attention_levels needs {levels} entries (one per block), "
                        f"got {attention}")
    widths = tuple(cfg.block_out_channels)
    stacked = cfg.level_conditioning and getattr(cfg, "stack_conditioning", False)
    common = dict(sample_size=latent_size,
                  in_channels=2 * latent_channels + 1 if stacked else latent_channels,
                  out_channels=latent_channels, block_out_channels=widths,
                  layers_per_block=cfg.layers_per_block, norm_num_groups=min(32, min(widths)))
    if cfg.conditioning == "class_embed" and cfg.level_conditioning:
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
        return UNet2DConditionModel(**common, down_block_types=down, up_block_types=up,
                                    attention_head_dim=cfg.attention_head_dim,
                                    num_class_embeds=LABEL_IDS,
                                    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
                                    mid_block_only_cross_attention=True,
                                    cross_attention_dim=widths[-1],
                                    addition_embed_type="text_time",
                                    addition_time_embed_dim=POSITION_FEATURES,
                                    projection_class_embeddings_input_dim=LABEL_IDS
                                    + POSITION_FEATURES)
    if cfg.conditioning == "class_embed":
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
        return UNet2DModel(**common, down_block_types=down, up_block_types=up,
                           attention_head_dim=cfg.attention_head_dim, num_class_embeds=LABEL_IDS)
    if cfg.conditioning == "cross_attention":
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
        # UNet2DConditionModel's legacy `attention_head_dim` is the number of heads per block.
        heads = tuple(max(1, w // cfg.attention_head_dim) for w in widths)
        return UNet2DConditionModel(**common, down_block_types=down, up_block_types=up,
                                    attention_head_dim=heads, cross_attention_dim=widths[-1],
                                    encoder_hid_dim=LABEL_IDS, encoder_hid_dim_type="text_proj")
    raise UserError(f"unet.conditioning must be one of {', '.join(CONDITIONINGS)}, "
                    f"got {cfg.conditioning!r}")
