"""Slices from the lowest level to the highest, generated beside real ones at the same levels.

    python -m tools.level_figure --model outputs/demo/model --data data/phantom \
        --out docs/levels.png [--levels 7] [--seed 0]

Rows: real NC, generated NC, real AD, generated AD, all at the native 256x240. Columns: levels
evenly spaced from 0 (a patient's lowest slice number) to 1 (its highest). The real slices are one
test patient per label (the one with the longest stack), the slice nearest each level; every
generated slice of a row starts from the same noise, so only the level changes along it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.cli import script_parser
from pipelines.data import scan, slice_positions
from pipelines.errors import UserError, cli_entry
from pipelines.plots import grid, save_png
from pipelines.sampling import check_level_model, generate, load_pipeline, sampling_settings
from pipelines.slices import CLASS_NAMES, NATIVE_SIZE, pad_to_square, to_native


def real_row(data, label: int, levels: np.ndarray) -> np.ndarray:
    """The slices of the label's longest test stack nearest ``levels``, (K, H, W) uint8."""
    files = [f for f in scan(data, splits=("test",)).files if f.label == label]
    if not files:
        raise UserError(f"{data}/test/{CLASS_NAMES[label]} has no slices to show")
    positions = slice_positions([f.relpath for f in files], [f.patient for f in files])
    longest = max(sorted({f.patient for f in files}),
                  key=lambda p: sum(f.patient == p for f in files))
    mine = [i for i, f in enumerate(files) if f.patient == longest]
    picks = [mine[int(np.abs(positions[mine] - level).argmin())] for level in levels]
    # padded and cropped as the model's output is, so odd-sized files line up too
    return np.stack([to_native(pad_to_square(np.asarray(Image.open(files[i].path).convert("L"))),
                               NATIVE_SIZE) for i in picks])


def level_figure(model_dir, data, out, num_levels: int = 7, seed: int = 0) -> Path:
    pipe = load_pipeline(model_dir)
    check_level_model(pipe, model_dir)
    settings = sampling_settings(pipe)
    levels = np.linspace(0, 1, num_levels)
    rows = []
    for label, name in enumerate(CLASS_NAMES):
        rows.append(real_row(data, label, levels))
        # one image per call, so image 0's seed (the same noise) at every level
        rows.append(np.concatenate([generate(pipe, name, 1, seed=seed, batch_size=1,
                                             settings=settings, positions=level, progress=False)
                                    for level in levels]))
    return save_png(grid(np.concatenate(rows), nrow=num_levels, pad=4), out)


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--model", default="outputs/demo/model")
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--out", default="outputs/demo/levels.png")
    parser.add_argument("--levels", type=int, default=7, help="columns, from 2 to 20")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 2 <= args.levels <= 20:
        raise UserError(f"--levels must be from 2 to 20, got {args.levels}")
    print(f"wrote {level_figure(args.model, args.data, args.out, args.levels, args.seed)}")


if __name__ == "__main__":
    main()
