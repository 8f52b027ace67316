#!/bin/bash
while [ "$(grep -c 'done rc' /work/exp/cf128/run.log)" -lt 4 ]; do sleep 20; done
cd /tmp/fresh_demo5
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=.venv/bin/python
E=/work/exp/cf128
log() { echo "$(date -u +%T) $*" >> $E/run.log; }
log "evaluate plain model"
$PY evaluate.py --model $E/model --data data/phantom --out $E/eval_plain > $E/eval_plain.out 2>&1
log "done5 rc=$?; edit plain 0.25"
$PY edit.py --model $E/model --data data/phantom --evaluate --strength 0.25 --out $E/edit_plain_s025 > $E/edit_plain_s025.out 2>&1
log "done6 rc=$?; edit gan 0.25"
$PY edit.py --model outputs/demo128/model --data data/phantom --evaluate --strength 0.25 --out $E/edit_gan_s025 > $E/edit_gan_s025.out 2>&1
log "done7 rc=$?"
