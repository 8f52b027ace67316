#!/bin/bash
# #17, 2026-12-01: the edit at 128 px with and without the patch-GAN decoder, on all pairs.
# usage: cf128.sh CLONE OUT -- CLONE: a checkout where `make demo128` has run (its model and
# data/phantom with the pairs); OUT: where the plain model and every result go.
# (Run on the day as two chained scripts that waited on the demo128 run; the same steps.)
set -e
cd "$1"
E=$2
mkdir -p "$E"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=.venv/bin/python
GAN=outputs/demo128/model
edit() { $PY edit.py --data data/phantom --evaluate "$@"; }

edit --model $GAN --out $E/edit_gan
$PY train_vae.py --config configs/demo128.yaml --vae.disc_weight 0 --data data/phantom \
    --output_dir $E/vae_run --resume_from_checkpoint latest
$PY train_unet.py --config configs/demo128.yaml --vae $E/vae_run/vae --data data/phantom \
    --output_dir $E/model --resume_from_checkpoint latest
cp -r $GAN/judge $E/model/judge    # one judge for both models
edit --model $E/model --out $E/edit_plain
$PY evaluate.py --model $E/model --data data/phantom --out $E/eval_plain
edit --model $E/model --strength 0.25 --out $E/edit_plain_s025
edit --model $GAN --strength 0.25 --out $E/edit_gan_s025
