"""How much of the label can survive the VAE? The judge on real test slices vs on their VAE
reconstructions: the second is a ceiling on the LDM's label faithfulness, whatever the UNet does.

    python bench/judge_ceiling.py --model outputs/demo/model --data data/phantom

Needs MODEL/judge (written by evaluate.py). Prints the judge's accuracy per label on the real
test slices and on their posterior-mean reconstructions.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.autoencoder import reconstruct  # noqa: E402
from pipelines.data import CLASS_NAMES, load_split, to_pixels  # noqa: E402
from pipelines.judge import Judge  # noqa: E402
from pipelines.sampling import load_pipeline, saved_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/model")
    parser.add_argument("--data", default="data/phantom")
    args = parser.parse_args()
    judge = Judge.load(Path(args.model) / "judge")
    vae = load_pipeline(args.model).vae
    test = load_split(args.data, "test", saved_config(args.model).data.resolution)
    recon = to_pixels(reconstruct(vae, test.as_float()))
    labels = test.labels.numpy()
    for name, pixels in (("real test", test.pixels), ("VAE reconstructions", recon)):
        pred = judge.predict(pixels)
        per = ", ".join(f"{c} {(pred[labels == i] == i).mean():.3f}"
                        for i, c in enumerate(CLASS_NAMES))
        print(f"judge on {name:20s}: {(pred == labels).mean():.3f} ({per}; n={len(labels)})")
    print(f"predicted AD share: real {np.mean(judge.predict(test.pixels) == 1):.3f}, "
          f"reconstructed {np.mean(judge.predict(recon) == 1):.3f}")


if __name__ == "__main__":
    main()
