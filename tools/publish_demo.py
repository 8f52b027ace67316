"""Copy a finished demo's report, tables and figures into docs/demo/, which RESULTS cites.

    python -m tools.publish_demo [--demo outputs/demo] [--out docs/demo]

Copies only the files listed in ``PUBLISHED`` (the report, its figures, the map's, the
evaluation's and the counterfactuals' tables and pictures), never the models or samples, and
refuses when one of them is missing: a partial demo is not published.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.cli import script_parser
from pipelines.errors import UserError, cli_entry

PUBLISHED = (
    "report.md", "timings.json", "real_vs_generated.png", "levels.png",
    "embedding/embedding.md", "embedding/embedding.json", "embedding/embedding.png",
    "embedding/embedding_levels.png",
    "embedding_judge/embedding.md", "embedding_judge/embedding.json",
    "embedding_judge/embedding.png", "embedding_judge/embedding_levels.png",
    "eval/metrics.md", "eval/closest_pairs.png", "eval/spectrum.png",
    "counterfactual/truth.md", "counterfactual/truth.json", "counterfactual/truth_panel.png",
)


def publish_demo(demo: Path, out: Path) -> list[Path]:
    """Copy ``PUBLISHED`` from ``demo`` to ``out``; returns the written paths."""
    if not demo.is_dir():
        raise UserError(f"{demo} does not exist: run `make demo` first, or pass --demo FOLDER")
    missing = [name for name in PUBLISHED if not (demo / name).is_file()]
    if missing:
        raise UserError(f"{demo} is not a finished demo: missing {', '.join(missing)}; "
                        "run `make demo` to the end first")
    written = []
    for name in PUBLISHED:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo / name, target)
        written.append(target)
    return written


@cli_entry
def main(argv=None) -> None:
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--demo", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--out", type=Path, default=Path("docs/demo"))
    args = parser.parse_args(argv)
    written = publish_demo(args.demo, args.out)
    print(f"copied {len(written)} files from {args.demo} to {args.out}")


if __name__ == "__main__":
    main()
