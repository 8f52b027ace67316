"""Split a batched computation across the processes of an ``accelerate launch``, gather in order.

With one process (or no accelerator) the function simply runs; with P processes each computes a
contiguous block of about N / P rows and every process gets all N rows back, in the input's
order, through ``Accelerator.gather_for_metrics``. Cost per process: O(N / P) of the function.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tuple(out) -> tuple[tuple[torch.Tensor, ...], bool, bool]:
    """(tensors, was a tuple, was numpy)."""
    single = not isinstance(out, tuple)
    parts = (out,) if single else out
    numpy = isinstance(parts[0], np.ndarray)
    return tuple(torch.as_tensor(p) for p in parts), not single, numpy


def sharded(fn, items, accelerator=None):
    """``fn(items)`` (rows in, rows out: a tensor, array, or tuple of them) computed in blocks
    of rows across ``accelerator``'s processes; every process returns the whole result."""
    if accelerator is None or accelerator.num_processes == 1:
        return fn(items)
    n, processes, rank = len(items), accelerator.num_processes, accelerator.process_index
    per = -(-n // processes)
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    # a process left without rows runs one row to learn the shapes, and sends padding
    parts, is_tuple, is_numpy = _as_tuple(fn(items[lo:hi] if hi > lo else items[:1]))
    mine = hi - lo
    padded = []
    for part in parts:
        part = part[:mine]
        fill = part.new_zeros((per - len(part), *part.shape[1:]))
        padded.append(torch.cat([part, fill]).to(accelerator.device))
    gathered = accelerator.gather_for_metrics(tuple(padded))
    # process r's block is rows r * per .. r * per + per of the gathered tensor, padding last
    keep = torch.cat([torch.arange(r * per, r * per + max(0, min(n, (r + 1) * per) - r * per))
                      for r in range(processes)])
    out = tuple(g.cpu()[keep] for g in gathered)
    if is_numpy:
        out = tuple(o.numpy() for o in out)
    return out if is_tuple else out[0]
