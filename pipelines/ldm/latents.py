"""The latent cache: the frozen VAE encodes the training slices once, never per training step.

The cache key hashes the VAE's config and weights and the decoded slices themselves
(``SliceSet.fingerprint``), so a changed VAE or data set is never served stale latents. It
stores the posterior mean and std (training samples ``mean + std * eps``), and the encodings of the
mirrored slices when flip augmentation is on. The slice levels are not stored: they come from
the file names, which the trainer reads anyway, so caches written before levels existed stay
valid and a renamed file can never be served a stale level. Files are safetensors (no pickle);
the main process writes them to a temporary name and renames, the others wait and read.

Memory: the latents are stored in half precision and read through a read-only memory map, so
every process on a node shares one copy in the page cache and a batch is converted to fp32 as
it is drawn. Cost: encoding is linear in the slices, loading is constant (the map), a batch is
O(batch). The fp16 rounding is relative 2**-11 of each value.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data import SliceSet
from ..files import atomic_path
from ..slices import to_unit_range


def vae_fingerprint(vae) -> str:
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class LatentCache:
    mean: torch.Tensor  # (N, C, h, w) unscaled posterior means
    std: torch.Tensor  # (N, C, h, w)
    labels: torch.Tensor  # (N,)
    flip_mean: torch.Tensor | None = None
    flip_std: torch.Tensor | None = None
    key: str = ""
    positions: torch.Tensor | None = None  # (N,) levels in [0, 1], from the slice set
    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, indices: torch.Tensor, scaling_factor: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent samples; a random half of them from the mirrored slices when cached."""
        mean, std = self.mean[indices].float(), self.std[indices].float()
        if self.flip_mean is not None:
            flip = (torch.rand(len(indices), generator=generator) < 0.5)[:, None, None, None]
            mean = torch.where(flip, self.flip_mean[indices].float(), mean)
            std = torch.where(flip, self.flip_std[indices].float(), std)
        eps = torch.randn(mean.shape, generator=generator)
        return (mean + std * eps) * scaling_factor


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor, batch_size: int = 32, desc: str = "encode",
                     progress: bool = True,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, R, R) uint8 -> the VAE posterior's unscaled (mean, std) as ``dtype``, in batches.

    Puts the VAE's weights in channels-last layout (in place; same results to 1e-6), faster on
    CPUs, where small batches beat large ones.
    """
    vae = vae.to(memory_format=torch.channels_last)
    means, stds = [], []
    for chunk in tqdm(pixels.split(batch_size), desc=desc, disable=not progress, leave=False):
        dist = vae.encode(to_unit_range(chunk).to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float().cpu().to(dtype))
        stds.append(dist.std.float().cpu().to(dtype))
    return torch.cat(means), torch.cat(stds)


CACHE_DTYPE = torch.float16  # the stored latents; a batch is converted to fp32 when drawn
_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}


def _header(path: Path) -> tuple[int, dict]:
    """(bytes before the data, the tensors' entries) of a safetensors file."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def _readable(path: Path) -> bool:
    """Whether the header parses and the file holds every byte it announces (not truncated)."""
    try:
        start, header = _header(path)
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        return all(info["dtype"] in _NUMPY_DTYPES for info in header.values()) \
            and path.stat().st_size == start + end
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return False


def load_mapped(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as read-only memory maps (no copy in this process:
    processes on one node share the page cache). Do not write to them."""
    path = Path(path)
    start, header = _header(path)
    tensors = {}
    for name, info in header.items():
        dtype, shape = _NUMPY_DTYPES[info["dtype"]], tuple(info["shape"])
        if int(np.prod(shape)) == 0:
            array = np.empty(shape, dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="r", offset=start + info["data_offsets"][0],
                              shape=shape)
        with warnings.catch_warnings():  # read-only on purpose: torch warns about that
            warnings.simplefilter("ignore", UserWarning)
            tensors[name] = torch.from_numpy(array)
    return tensors


def build_latent_cache(vae, slices: SliceSet, cache_dir: str | Path, flip: bool,
                       accelerator=None, batch_size: int = 32) -> LatentCache:
    """Load the cache for (VAE, data, flip) or encode and write it (main process only)."""
    key = f"{vae_fingerprint(vae)}-{slices.fingerprint()[:16]}-{'flip' if flip else 'noflip'}" \
        "-fp16"
    path = Path(cache_dir) / f"latents-{key}.safetensors"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main and path.is_file() and not _readable(path):
        print(f"note: latent cache {path} is damaged (truncated?); encoding it again",
              file=sys.stderr)
        path.unlink()
    if is_main and not path.is_file():
        vae.eval()
        tensors = {"labels": slices.labels.clone()}
        tensors["mean"], tensors["std"] = encode_posterior(vae, slices.pixels, batch_size,
                                                           "encode latents", dtype=CACHE_DTYPE)
        if flip:
            tensors["flip_mean"], tensors["flip_std"] = encode_posterior(
                vae, slices.pixels.flip(-1), batch_size, "encode mirrored", dtype=CACHE_DTYPE)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"key": key, "files": str(len(slices))})
    if accelerator is not None:
        accelerator.wait_for_everyone()
    tensors = load_mapped(path)
    return LatentCache(tensors["mean"], tensors["std"], tensors["labels"],
                       tensors.get("flip_mean"), tensors.get("flip_std"), key,
                       slices.positions.clone())
