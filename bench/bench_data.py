"""Data loader throughput: decoded, padded and resized slices per second, at 64 and 256 px.

    python bench/bench_data.py --data data/phantom [--split train] [--repeats 3]

Prints the median of --repeats runs of pipelines.data.load_split (JPEG decode through the
`datasets` Image column, greyscale conversion, pad to square, antialiased resize).
"""

import argparse
import statistics
import time

from pipelines.data import load_split


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--split", default="train")
    parser.add_argument("--resolutions", default="64,256")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for res in map(int, args.resolutions.split(",")):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            slices = load_split(args.data, args.split, res, progress=False)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"resolution {res:4d}: {len(slices)} slices in {med:.2f} s (median of "
              f"{args.repeats}) = {len(slices) / med:.0f} img/s")


if __name__ == "__main__":
    main()
