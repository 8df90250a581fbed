#!/usr/bin/env bash
# One ablate study on a Slurm cluster: a job array of workers, one GPU each, all running the
# same `ablate run` command against one PostgreSQL database (docs/distributed.md).
#
#   sbatch examples/slurm-array.sh studies/degradation-cifar10.toml
#
# Each array task is one worker; Slurm may start, preempt and requeue them in any order: every
# unit is trained exactly once, a killed worker's unit is retried by another from its last
# checkpoint (on the shared folder), and a requeued task picks up whatever is left.
#SBATCH --job-name=ablate
#SBATCH --array=0-7              # 8 workers
#SBATCH --gres=gpu:1             # one GPU each (or ask for one GPU and use --workers 4 to pack four)
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120      # SIGTERM two minutes before the limit: the worker stops at a safe point
#SBATCH --output=logs/ablate-%A_%a.out
set -euo pipefail

STUDY=${1:?usage: sbatch examples/slurm-array.sh STUDY.toml}
# The password comes from the environment (or ~/.pgpass), never from this file.
STORAGE=${ABLATE_STORAGE:-postgresql+psycopg://ablate@db.lab.example/ablate}
CHECKPOINTS=${ABLATE_CHECKPOINTS:-/shared/ablate/checkpoints}   # on a filesystem every node mounts

cd "${SLURM_SUBMIT_DIR}"
# exec: Slurm's SIGTERM reaches ablate itself.
exec uv run ablate run "${STUDY}" --storage "${STORAGE}" --checkpoint-dir "${CHECKPOINTS}" \
    --data-dir /shared/ablate/data --no-report
# Afterwards, from anywhere: uv run ablate report STUDY_NAME --storage "$STORAGE"
