"""The shortlist memorisation check against the exact search: same nearest training slice?

    python -m bench.bench_shortlist --data data/phantom --resolution 64 --k 8 16 32 64 \
        [--queries 100]

For every test slice (the real queries with no copy among the train slices, the hard case),
finds the train slice of highest SSIM exactly (every pair) and with the shortlist of the k
nearest by L2 on 32 px pooled images (``pipelines.metrics.nearest_ssim``). Prints, per k, the
share of queries with the same nearest neighbour, the largest SSIM shortfall and the seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipelines.data import load_split
from pipelines.metrics import nearest_ssim


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--queries", type=int, default=None,
                        help="test slices used, evenly spaced (default all)")
    args = parser.parse_args(argv)
    train = load_split(args.data, "train", args.resolution, progress=False)
    test = load_split(args.data, "test", args.resolution, progress=False)
    if args.queries is not None and args.queries < len(test):
        test = test.subset(torch.linspace(0, len(test) - 1, args.queries).round().long())
    start = time.perf_counter()
    exact_values, exact_index = nearest_ssim(test.pixels, train.pixels)
    exact_seconds = time.perf_counter() - start
    print(f"{len(test)} test slices against {len(train)} train slices at {args.resolution} px; "
          f"exact search {exact_seconds:.1f} s", flush=True)
    print("| k | same nearest neighbour | largest SSIM shortfall | seconds |")
    print("|---|---|---|---|")
    for k in args.k:
        start = time.perf_counter()
        values, index = nearest_ssim(test.pixels, train.pixels, candidates=k)
        seconds = time.perf_counter() - start
        same = float((index == exact_index).double().mean())
        shortfall = float((exact_values - values).max())
        print(f"| {k} | {same:.4f} ({int((index == exact_index).sum())}/{len(index)}) | "
              f"{shortfall:.4f} | {seconds:.1f} |", flush=True)
        if not torch.all(values <= exact_values + 1e-5):
            raise AssertionError("a shortlist value above the exact maximum")


if __name__ == "__main__":
    main()
