#!/bin/bash
# The full release on a SLURM cluster: the VAE, then the UNet, on every GPU of every node.
#     sbatch --nodes 2 --gpus-per-node 8 examples/slurm_train.sh /path/to/AD_NC runs/adni256
# One task per node; each runs `accelerate launch`, which starts one process per GPU there.
# The run folders (and the UNet's latent cache inside them) must be on a file system every node
# sees. A job stopped by its time limit resumes where it was: submit it again.
#SBATCH --job-name=adni256
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.log
set -euo pipefail
DATA=${1:?usage: sbatch examples/slurm_train.sh AD_NC_FOLDER RUN_FOLDER}
RUNS=${2:?usage: sbatch examples/slurm_train.sh AD_NC_FOLDER RUN_FOLDER}
CONFIG=${CONFIG:-configs/adni256.yaml}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# shellcheck disable=SC2016  # expanded by each task's own shell, where SLURM_NODEID differs
LAUNCH='accelerate launch --config_file examples/accelerate/multi_node.yaml
  --num_machines '"$SLURM_NNODES"' --num_processes '"$((SLURM_NNODES * GPUS_PER_NODE))"'
  --machine_rank $SLURM_NODEID --main_process_ip '"$HEAD"' --main_process_port 29500'

srun bash -c "$LAUNCH train_vae.py --config $CONFIG --data $DATA --output_dir $RUNS/vae \
  --resume_from_checkpoint latest"
srun bash -c "$LAUNCH train_unet.py --config $CONFIG --data $DATA --vae $RUNS/vae/vae \
  --output_dir $RUNS/ldm --resume_from_checkpoint latest"
