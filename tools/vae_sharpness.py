"""How much fine detail a VAE keeps: its reconstructions of real test slices against the files.

    python -m tools.vae_sharpness --vae outputs/demo/model/vae --data data/phantom [--n 100]

Prints (and with --json writes) PSNR/SSIM at the VAE's resolution and the band energy ratios and
log-spectrum distance of ``pipelines.sharpness`` at the native 256x240, beside the ceiling of the
resolution itself (the real slices resized to the VAE's resolution and back, no VAE). The first
stage bounds every generated slice's sharpness, so this is the quick measure of a first-stage
lever (resolution, depth, crops, the GAN term) before a UNet is trained on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipelines.cli import script_parser
from pipelines.data import load_split
from pipelines.errors import cli_entry
from pipelines.sharpness import band_names, compare_spectra
from pipelines.slices import NATIVE_SIZE, to_native
from pipelines.vae.model import load_vae
from pipelines.vae.trainer import reconstruct, reconstruction_metrics


def native(pixels: torch.Tensor) -> np.ndarray:
    """(N, 1, R, R) uint8 -> (N, 240, 256) uint8 through the pipelines' own native crop."""
    return np.stack([to_native(p[0].numpy(), NATIVE_SIZE) for p in pixels])


def measure(vae_dir, data_root, n: int = 100) -> dict:
    """The VAE's round trip and the resolution's ceiling, against the native test slices."""
    vae = load_vae(vae_dir).eval()
    resolution = vae.config.sample_size
    test = load_split(data_root, "test", resolution, max_images=n, progress=False)
    real = native(load_split(data_root, "test", max(NATIVE_SIZE), max_images=n,
                             progress=False).pixels)
    images = test.as_float()
    recon = ((reconstruct(vae, images) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return {"vae": str(vae_dir), "resolution": resolution, "images": len(test),
            **reconstruction_metrics(vae, images),
            "reconstruction": compare_spectra(native(recon), real),
            "resolution_ceiling": compare_spectra(native(test.pixels), real)}


def report(m: dict) -> str:
    lines = [f"{m['vae']}: {m['resolution']} px, {m['images']} test slices, PSNR "
             f"{m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}",
             "| | " + " | ".join(band_names()) + " | log-spectrum distance |",
             "|---" * (len(band_names()) + 2) + "|"]
    for key in ("reconstruction", "resolution_ceiling"):
        ratios = m[key]["band_energy_ratio"]
        lines.append(f"| {key.replace('_', ' ')} | "
                     + " | ".join(f"{ratios[b]:.3f}" for b in band_names())
                     + f" | {m[key]['log_spectrum_distance']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--vae", required=True, help="a VAE folder (OUT/vae of train_vae.py)")
    parser.add_argument("--data", required=True, help="the AD_NC folder (its test split)")
    parser.add_argument("--n", type=int, default=100, help="test slices, spread over the split")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    m = measure(args.vae, args.data, args.n)
    print(report(m))
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_entry(main)())
