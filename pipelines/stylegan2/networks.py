"""StyleGAN2 (Karras et al. 2020) with a label-conditioned mapping, the seed's baseline.

Follows NVlabs stylegan2-ada-pytorch (config F: skip generator, residual discriminator) in pure
PyTorch, so it runs on CPUs and any torch: equalised learning rate everywhere, an 8-layer mapping
network that concatenates the normalised z with an embedding of the one-hot label (as ada's
conditional mapping does), modulated convolutions with weight demodulation, per-layer noise,
a learned constant input, a projection discriminator with minibatch standard deviation, and
per-label running means of w for truncation. Two simplifications, both for speed on a CPU:
resampling is bilinear / 2x2 average pooling instead of the FIR ``upfirdn2d`` filters, and the
modulated convolution runs in ada's non-fused form (scale the input, shared conv, demodulate
the output) rather than as a grouped convolution.

No maintained PyPI package fits here: ``stylegan2-pytorch`` (lucidrains) and ``stylegan2-torch``
are unconditional, unmaintained since 2022 and bring their own trainers; NVlabs' code needs its
CUDA extensions and is not a package (docs/DESIGN.md, "The models").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

LRELU_GAIN = math.sqrt(2)
AUGMENTATIONS = ("color", "translation", "cutout")  # the DiffAugment policies diff_augment knows


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // resolution, channel_max)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time, not at init)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul, self.activation = lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate; optional 2x average-pool downsampling after it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activation, self.down, self.padding = activation, down, kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return lrelu(x) if self.activation else x


class MappingNetwork(nn.Module):
    """z (+ label) -> w: normalised z concatenated with a normalised label embedding, 8 FC."""

    def __init__(self, z_dim: int, w_dim: int, num_classes: int, num_layers: int,
                 lr_mul: float):
        super().__init__()
        self.num_classes = num_classes
        self.embed = EqualLinear(num_classes, w_dim)
        dims = [z_dim + w_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:], strict=True)])

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(onehot))], dim=1)
        return self.layers(x)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with weight demodulation (StyleGAN2 sec. 2.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate, self.up, self.padding = demodulate, up, kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # (N, in)
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x * styles[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:  # 1 / ||w'|| per output channel, with w' = w * style
            power = styles.square() @ self.weight.square().sum(dim=(2, 3)).t()  # (N, out)
            x = x * (power + 1e-8).rsqrt()[:, :, None, None]
        return x


class StyleLayer(nn.Module):
    """Modulated conv + per-pixel noise (learned strength) + bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, noise):
        x = self.conv(x, w)
        x = x + noise * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToGrey(nn.Module):
    """1x1 modulated conv (no demodulation) to the single image channel."""

    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 1, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x, w):
        return self.conv(x, w) + self.bias[None, :, None, None]


class StyleGAN2Generator(ModelMixin, ConfigMixin):
    """Label-conditioned StyleGAN2 generator (skip architecture), greyscale output in ~[-1, 1].

    Saved and loaded like any diffusers model (``save_pretrained`` / ``from_pretrained``).
    """

    @register_to_config
    def __init__(self, resolution: int = 64, num_classes: int = 2, z_dim: int = 128,
                 w_dim: int = 128, mapping_layers: int = 8, mapping_lr_mul: float = 0.01,
                 channel_base: int = 4096, channel_max: int = 256):
        super().__init__()
        log2 = int(math.log2(resolution))
        if 2**log2 != resolution or resolution < 8:
            raise ValueError(f"StyleGAN2 resolution must be a power of two >= 8, got {resolution}")
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        ch = [channels_at(r, channel_base, channel_max) for r in self.resolutions]
        self.num_ws = 2 * len(self.resolutions)
        self.mapping = MappingNetwork(z_dim, w_dim, num_classes, mapping_layers, mapping_lr_mul)
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.convs = nn.ModuleList([StyleLayer(ch[0], ch[0], w_dim)])
        self.to_grey = nn.ModuleList([ToGrey(ch[0], w_dim)])
        for prev, cur in zip(ch[:-1], ch[1:], strict=True):
            self.convs.append(StyleLayer(prev, cur, w_dim, up=True))
            self.convs.append(StyleLayer(cur, cur, w_dim))
            self.to_grey.append(ToGrey(cur, w_dim))
        self.register_buffer("w_avg", torch.zeros(num_classes, w_dim))

    def map(self, z: torch.Tensor, labels: torch.Tensor, truncation_psi: float = 1.0,
            update_w_avg: float = 0.0) -> torch.Tensor:
        """z, labels -> per-layer styles (N, num_ws, w_dim), truncated towards the label's mean."""
        w = self.mapping(z, labels)
        if update_w_avg > 0:  # running per-label mean of w (for truncation), during training
            with torch.no_grad():
                for label in labels.unique():
                    mean = w[labels == label].detach().mean(0)
                    self.w_avg[label].lerp_(mean, update_w_avg)
        if truncation_psi != 1:
            w = self.w_avg[labels].lerp(w, truncation_psi)
        return w[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws: torch.Tensor, noise_generator=None) -> torch.Tensor:
        """Styles -> images; ``noise_generator`` (one, or one per image) fixes the noise."""
        n = ws.shape[0]
        x = self.const[None].expand(n, -1, -1, -1)
        image = None
        for i, res in enumerate(self.resolutions):
            layers = self.convs[:1] if i == 0 else self.convs[2 * i - 1: 2 * i + 1]
            for j, layer in enumerate(layers):
                noise = randn_tensor((n, 1, res, res), generator=noise_generator,
                                     device=ws.device, dtype=ws.dtype)
                x = layer(x, ws[:, max(2 * i - 1 + j, 0)], noise)
            grey = self.to_grey[i](x, ws[:, 2 * i + 1])
            image = grey if image is None else grey + F.interpolate(
                image, scale_factor=2, mode="bilinear", align_corners=False)
        return image

    def forward(self, z: torch.Tensor, labels: torch.Tensor, truncation_psi: float = 1.0,
                noise_generator=None) -> torch.Tensor:
        return self.synthesis(self.map(z, labels, truncation_psi), noise_generator)


class StyleGAN2Discriminator(nn.Module):
    """Residual discriminator with minibatch-stddev and label projection (ada's cmap)."""

    def __init__(self, resolution: int = 64, num_classes: int = 2, channel_base: int = 4096,
                 channel_max: int = 256, mbstd_group: int = 4):
        super().__init__()
        resolutions = [2**i for i in range(int(math.log2(resolution)), 2, -1)]  # R .. 8
        ch = {r: channels_at(r, channel_base, channel_max) for r in resolutions + [4]}
        self.from_grey = EqualConv2d(1, ch[resolution], 1)
        self.blocks = nn.ModuleList()
        for res in resolutions:
            self.blocks.append(nn.ModuleDict({
                "conv0": EqualConv2d(ch[res], ch[res], 3),
                "conv1": EqualConv2d(ch[res], ch[res // 2], 3, down=True),
                "skip": EqualConv2d(ch[res], ch[res // 2], 1, bias=False, activation=False,
                                    down=True),
            }))
        c4 = ch[4]
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, c4)
        self.embed = EqualLinear(num_classes, c4)
        self.num_classes = num_classes

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = math.gcd(self.mbstd_group, n)
        y = x.reshape(g, -1, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n / g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.from_grey(images)
        for block in self.blocks:
            skip = block["skip"](x)
            x = (skip + block["conv1"](block["conv0"](x))) * math.sqrt(0.5)
        x = self.conv(self.minibatch_std(x))
        x = self.out(self.fc(x.flatten(1)))
        cmap = self.embed(F.one_hot(labels, self.num_classes).to(x.dtype))
        return (x * cmap).sum(dim=1) / math.sqrt(x.shape[1])


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None):
    """DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake.

    ``policy``: comma-separated subset of ``color`` (brightness, contrast), ``translation``
    (up to 1/8 of the side, zero padded) and ``cutout`` (a square of half the side zeroed).
    """
    if not policy:
        return x
    n, _, h, w = x.shape

    def rand(*shape):
        return torch.rand(shape, generator=generator).to(x.device, x.dtype)

    for name in policy.split(","):
        if name == "color":
            x = x + (rand(n, 1, 1, 1) - 0.5)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean
        elif name == "translation":
            shift = (torch.stack([rand(n) * 2 - 1, rand(n) * 2 - 1], 1) * 0.125)  # (n, 2)
            theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, :, 2] = shift * 2
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x + 1, grid, mode="nearest", padding_mode="zeros",
                              align_corners=False) - 1  # pad with black (-1)
        elif name == "cutout":
            size = (h // 2, w // 2)
            cy = (rand(n) * (h - size[0] + 1)).long()[:, None, None]
            cx = (rand(n) * (w - size[1] + 1)).long()[:, None, None]
            ys = torch.arange(h, device=x.device)[None, :, None]
            xs = torch.arange(w, device=x.device)[None, None, :]
            inside = (ys >= cy) & (ys < cy + size[0]) & (xs >= cx) & (xs < cx + size[1])
            x = torch.where(inside[:, None], torch.full_like(x, -1), x)
        elif name:
            raise ValueError(f"unknown DiffAugment policy {name!r}; use {','.join(AUGMENTATIONS)}")
    return x
