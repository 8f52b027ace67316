"""Real slices beside generated ones from one or more models, at the native size and zoomed.

    python -m tools.detail_figure --data data/phantom --models outputs/demo/model \
        outputs/demo128/model --out docs/sharpness/detail.png [--n 4] [--label AD] [--seed 0]

One row per source (real test slices first, then each model in the order given), ``--n`` slices
at the native 256x240, then a 2x zoom (nearest neighbour, so no resampling hides or adds detail)
of the cortex and sulci of the row's first slice. The real slices are spread over the test split
of the label; each model samples with its own saved settings from the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.cli import script_parser
from pipelines.data import load_split
from pipelines.errors import UserError, cli_entry
from pipelines.plots import grid, save_png
from pipelines.sampling import generate, load_pipeline, sampling_settings
from pipelines.slices import CLASS_NAMES, NATIVE_SIZE, parse_label, to_native

ZOOM = (slice(40, 120), slice(60, 196))  # rows, columns of the native slice: frontal cortex


def zoomed(image: np.ndarray) -> np.ndarray:
    """The cortex window of a native slice, 2x by pixel repetition, padded to the slice height."""
    window = image[ZOOM].repeat(2, axis=0).repeat(2, axis=1)
    out = np.zeros((image.shape[0], window.shape[1]), dtype=np.uint8)
    top = (image.shape[0] - window.shape[0]) // 2
    out[top:top + window.shape[0]] = window
    return out


def detail_figure(data, models, out, n: int = 4, label: str = "AD", seed: int = 0) -> Path:
    label_id = parse_label(label)
    test = load_split(data, "test", max(NATIVE_SIZE), progress=False)
    picks = np.flatnonzero(test.labels.numpy() == label_id)
    if len(picks) == 0:
        raise UserError(f"{data}/test/{CLASS_NAMES[label_id]} has no slices to show")
    picks = picks[np.linspace(0, len(picks) - 1, n).round().astype(int)]
    rows = [np.stack([to_native(test.pixels[i, 0].numpy(), NATIVE_SIZE) for i in picks])]
    for model in models:
        pipe = load_pipeline(model)
        rows.append(generate(pipe, CLASS_NAMES[label_id], n, seed=seed, batch_size=n,
                             settings=sampling_settings(pipe), progress=False))
    strips = [np.concatenate([grid(r, nrow=n, pad=4), _pad_to(zoomed(r[0]), r.shape[1] + 8)],
                             axis=1) for r in rows]
    return save_png(np.concatenate(strips, axis=0), Path(out))


def _pad_to(image: np.ndarray, height: int) -> np.ndarray:
    out = np.zeros((height, image.shape[1] + 4), dtype=np.uint8)
    top = (height - image.shape[0]) // 2
    out[top:top + image.shape[0], 4:] = image
    return out


def main(argv=None) -> int:
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", required=True, help="model folders, one row each")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--label", default="AD")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = detail_figure(args.data, args.models, args.out, args.n, args.label, args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_entry(main)())
