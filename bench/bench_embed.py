"""Time embed.py's stages on N slices: decode, latent encoding, PCA + UMAP/t-SNE, measures, plot.

    python bench/bench_embed.py --n 9000                       # stand-in slices, untrained demo VAE
    python bench/bench_embed.py --data AD_NC --model outputs/demo --n 2000 --method tsne

Without --data it writes N quick stand-in slices (an ellipse with two dark "ventricles", larger
for AD) in the AD_NC layout to a temporary folder; without --model it builds the `make demo`
VAE (configs/demo.yaml) untrained: encoding speed does not depend on the weights. Prints
images/s and seconds per stage and the peak resident memory (resource.getrusage).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.config import load_config
from pipelines.data import CLASS_NAMES, NATIVE_SIZE, load_split
from pipelines.embedding import (
    METHODS,
    embed_2d,
    encode_latents,
    plot_embedding,
    summarise,
)
from pipelines.vae.model import build_vae, load_vae

SLICES_PER_PATIENT = 20


def write_stand_in(root: Path, n: int, seed: int = 0) -> None:
    """n slices in ROOT/test/{NC,AD}: a bright ellipse, two dark ventricles, noise."""
    rng = np.random.default_rng(seed)
    w, h = NATIVE_SIZE
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        label = CLASS_NAMES[i % 2]
        patient, index = divmod(i // 2, SLICES_PER_PATIENT)
        brain = ((xx - w / 2) / (80 + rng.normal(0, 4))) ** 2 + ((yy - h / 2) / 100) ** 2 < 1
        size = (14 if label == "AD" else 8) + rng.normal(0, 2)
        vents = sum(((xx - w / 2 - dx) / size) ** 2 + ((yy - h / 2) / (2 * size)) ** 2 < 1
                    for dx in (-15, 15))
        img = 170 * brain - 120 * (vents > 0) + rng.normal(0, 12, (h, w))
        path = root / "test" / label / f"{label}{patient:04d}_{index}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(label: str, n: int, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    print(f"{label:<22s} {seconds:8.1f} s  {n / seconds:9.1f} img/s  peak RSS "
          f"{peak_rss_mib():7.0f} MiB", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="real slices")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--data", default=None, help="AD_NC folder (default: write a stand-in)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=None, help="pipeline or VAE folder (default: untrained "
                                                      "demo VAE)")
    parser.add_argument("--method", default="umap", choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.n} slices at {args.resolution} px, {args.method}, torch threads "
          f"{torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "AD_NC"
        if not args.data:
            timed("write stand-in", args.n, write_stand_in, root, args.n)
        real = timed("decode", args.n, load_split, root, args.split, args.resolution,
                     progress=False, max_images=args.n)
        vae = (load_vae(args.model) if args.model
               else build_vae(load_config("configs/demo.yaml").vae, args.resolution)).eval()
        n = len(real)
        feats = timed("encode latents", n, encode_latents, vae, real.pixels, progress=False)
        print(f"  features {feats.shape}")
        labels = real.labels.numpy()
        xy = timed(f"PCA-50 + {METHODS[args.method]}", n, embed_2d, feats, args.method)
        timed("k-NN + silhouette", n, summarise, feats, labels, xy)
        timed("plot", n, plot_embedding, Path(tmp) / "embedding.png", xy, labels,
              np.zeros(n, bool), "bench", METHODS[args.method])
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
