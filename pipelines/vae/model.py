"""The VAE's networks: the greyscale AutoencoderKL (built, or loaded from a local pretrained one and
adapted to one channel) and the patch discriminator of its optional GAN term.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..errors import UserError


def build_vae(cfg, resolution: int) -> AutoencoderKL:
    """A 1-channel AutoencoderKL; downsampling factor 2**(len(block_out_channels) - 1)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=resolution,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def vae_downsample_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _read_model_config(path: Path) -> dict:
    for candidate in (path / "config.json", path / "vae" / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text()) | {"_dir": str(candidate.parent)}
            except json.JSONDecodeError:
                break
    raise UserError(f"{path} is not a diffusers AutoencoderKL folder (no readable config.json); "
                    "pass a folder written by save_pretrained, e.g. OUT/vae")


def load_vae(path: str | Path) -> AutoencoderKL:
    """Load a local diffusers AutoencoderKL (a vae folder, or a pipeline folder holding vae/)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"VAE folder {path} does not exist; train one with train_vae.py "
                        "(it writes OUTPUT_DIR/vae)")
    config = _read_model_config(path)
    if config.get("_class_name") != "AutoencoderKL":
        raise UserError(f"{config['_dir']} holds a {config.get('_class_name')!r}, not an "
                        "AutoencoderKL; point at a VAE folder")
    try:
        return AutoencoderKL.from_pretrained(config["_dir"])
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"the VAE in {config['_dir']} cannot be loaded ({str(err)[:160]}): its "
                        "weights are damaged or incomplete; copy the folder again or train it "
                        "again with train_vae.py") from None


@torch.no_grad()
def adapt_to_greyscale(vae: AutoencoderKL) -> AutoencoderKL:
    """Make an RGB AutoencoderKL take and give one channel, without changing what it computes.

    The input convolution's RGB kernels are summed, so a grey image gives the latent its RGB copy
    would; the output convolution's RGB rows are averaged, so the output is the grey mean.
    """
    if vae.config.in_channels == 1 and vae.config.out_channels == 1:
        return vae
    if vae.config.in_channels != 3 or vae.config.out_channels != 3:
        raise UserError(f"cannot adapt a VAE with {vae.config.in_channels} input and "
                        f"{vae.config.out_channels} output channels to greyscale (need 3 or 1)")
    conv_in, conv_out = vae.encoder.conv_in, vae.decoder.conv_out
    new_in = nn.Conv2d(1, conv_in.out_channels, conv_in.kernel_size, conv_in.stride,
                       conv_in.padding)
    new_in.weight.copy_(conv_in.weight.sum(dim=1, keepdim=True))
    new_in.bias.copy_(conv_in.bias)
    new_out = nn.Conv2d(conv_out.in_channels, 1, conv_out.kernel_size, conv_out.stride,
                        conv_out.padding)
    new_out.weight.copy_(conv_out.weight.mean(dim=0, keepdim=True))
    new_out.bias.copy_(conv_out.bias.mean(dim=0, keepdim=True))
    vae.encoder.conv_in, vae.decoder.conv_out = new_in, new_out
    vae.register_to_config(in_channels=1, out_channels=1)
    return vae


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / MONAI style): a logit per overlapping patch, for the VAE's GAN term."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers):
            nxt = channels * min(2**i, 8)
            blocks += [nn.Conv2d(ch, nxt, 4, 2, 1), nn.GroupNorm(8, nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        blocks.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 1, h, w)
        return self.net(images)
