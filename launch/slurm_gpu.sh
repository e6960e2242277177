#!/usr/bin/env bash
# SLURM batch script for multi-node GPU pretraining: one process per GPU.
#   sbatch --nodes=8 launch/slurm_gpu.sh --config=configs/terrafm_b.py --workdir=/shared/terrafm_b \
#       --config.data.data_dir=/shared/prepared
# jax.distributed.initialize() reads the SLURM environment (--multihost). The workdir must be on a
# shared filesystem. On preemption/timeout SLURM sends SIGTERM (see --signal below): the trainer
# saves a checkpoint and exits; `--requeue` restarts the job, which resumes from that checkpoint.
#SBATCH --job-name=terrafm
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=terrafm-%j.out
set -euo pipefail
root="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
python_bin="${PYTHON:-${TERRAFM_VENV:-$root/.venv}/bin/python}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
cd "$root"
srun --kill-on-bad-exit=1 "$python_bin" -m terrafm_jax.train --multihost "$@"
