"""How much of the label can survive the VAE? The judge on real test slices vs on their VAE
reconstructions: the second is a ceiling on the LDM's label faithfulness, whatever the UNet does.

    python bench/judge_ceiling.py --model outputs/demo/model --data data/phantom [--vae DIR]

Needs MODEL/judge (written by evaluate.py). Prints the judge's accuracy per label on the real
test slices and on their posterior-mean reconstructions, and the Frechet distance (judge
features) of the reconstructions to the real test slices beside the real train-vs-test floor:
an LDM whose samples decode through this VAE starts from that distance. --vae measures another
VAE (same resolution) against the same judge.
"""

import argparse
from pathlib import Path

import numpy as np

from pipelines.data import CLASS_NAMES, load_split, spread_indices, to_pixels
from pipelines.errors import cli_entry
from pipelines.judge import Judge
from pipelines.metrics import frechet_distance
from pipelines.sampling import load_pipeline, saved_config
from pipelines.vae.model import load_vae
from pipelines.vae.trainer import reconstruct


@cli_entry
def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/model")
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--vae", help="a VAE folder to measure instead of the model's own")
    args = parser.parse_args()
    judge = Judge.load(Path(args.model) / "judge")
    vae = load_vae(args.vae) if args.vae else load_pipeline(args.model).vae
    resolution = saved_config(args.model).data.resolution
    test = load_split(args.data, "test", resolution)
    recon = to_pixels(reconstruct(vae, test.as_float()))
    labels = test.labels.numpy()
    predictions = {"real test": judge.predict(test.pixels),
                   "VAE reconstructions": judge.predict(recon)}
    for name, pred in predictions.items():
        per = ", ".join(f"{c} {(pred[labels == i] == i).mean():.3f}"
                        for i, c in enumerate(CLASS_NAMES))
        print(f"judge on {name:20s}: {(pred == labels).mean():.3f} ({per}; n={len(labels)})")
    print(f"predicted AD share: real {np.mean(predictions['real test'] == 1):.3f}, "
          f"reconstructed {np.mean(predictions['VAE reconstructions'] == 1):.3f}")
    train = load_split(args.data, "train", resolution)
    train = train.subset(spread_indices(len(train), len(test)))
    f_test = judge.features(test.pixels)
    print(f"Frechet distance to real test (judge features): real train "
          f"{frechet_distance(judge.features(train.pixels), f_test):.2f} (the floor), "
          f"VAE reconstructions {frechet_distance(judge.features(recon), f_test):.2f}")


if __name__ == "__main__":
    main()
