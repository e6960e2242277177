#!/usr/bin/env bash
# Run the same training command on every worker of a Cloud TPU VM pod slice.
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh --config=configs/terrafm_b.py \
#       --workdir=gs://my-bucket/terrafm_b --config.data.data_dir=gs://my-bucket/prepared
# Assumes the repository is cloned at $REMOTE_DIR (default ~/terrafm-jax) on every worker, e.g. with
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "git clone ..."
# The first run installs the package (launch/run.sh logic) into a venv on each worker.
# jax.distributed.initialize() auto-detects the pod (--multihost). The workdir must be shared by all
# workers (a GCS bucket). Re-running the same command resumes from the latest checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
remote_dir="${REMOTE_DIR:-~/terrafm-jax}"
project_flag=()
[ -n "${PROJECT:-}" ] && project_flag=(--project "$PROJECT")
args="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" --worker=all \
  --command "cd $remote_dir && \
    ( [ -x .venv/bin/python ] || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]') ) && \
    .venv/bin/python -m terrafm_jax.train --multihost $args 2>&1 | tee -a ~/terrafm_train.log"
