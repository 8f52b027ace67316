#!/bin/bash
# #17: a 128 px model whose VAE has no patch-GAN term, against demo128's (GAN) model, on all pairs.
while ! grep -q 'demo128 end' /work/demo128.log 2>/dev/null; do sleep 30; done
cd /tmp/fresh_demo5
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=.venv/bin/python
E=/work/exp/cf128
log() { echo "$(date -u +%T) $*" >> $E/run.log; }
log "edit eval: demo128 GAN model, all pairs"
$PY edit.py --model outputs/demo128/model --data data/phantom --evaluate --out $E/edit_gan > $E/edit_gan.out 2>&1
log "done rc=$?; train plain VAE"
$PY train_vae.py --config configs/demo128.yaml --vae.disc_weight 0 --data data/phantom --output_dir $E/vae_run --resume_from_checkpoint latest > $E/vae.out 2>&1
log "done rc=$?; train UNet"
$PY train_unet.py --config configs/demo128.yaml --vae $E/vae_run/vae --data data/phantom --output_dir $E/model --resume_from_checkpoint latest > $E/unet.out 2>&1
log "done rc=$?; edit eval plain"
cp -r outputs/demo128/model/judge $E/model/judge
$PY edit.py --model $E/model --data data/phantom --evaluate --out $E/edit_plain > $E/edit_plain.out 2>&1
log "done rc=$?"
