#!/usr/bin/env bash
# Run the trainer as N local processes (one JAX "host" each) on this machine's CPUs: the same
# multi-host code path as a TPU pod or a GPU cluster, with gloo CPU collectives.
#   bash launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS -- --config=... --workdir=...
# Logs: $WORKDIR_LOGS (default ./multiprocess_logs)/process_<i>.log. Exits non-zero if any process
# fails.
set -euo pipefail
nproc_="${1:?usage: local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS -- ARGS...}"
ndev="${2:?usage: local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS -- ARGS...}"
shift 2
[ "${1:-}" = "--" ] && shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${PYTHON:-${TERRAFM_VENV:-$root/.venv}/bin/python}"
port="${TERRAFM_PORT:-$((20000 + RANDOM % 20000))}"
logs="${WORKDIR_LOGS:-$PWD/multiprocess_logs}"
mkdir -p "$logs"

pids=()
for ((i = 0; i < nproc_; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${ndev} ${XLA_FLAGS:-}" \
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
    "$python_bin" -m terrafm_jax.train --coordinator_address="127.0.0.1:${port}" \
      --num_processes="$nproc_" --process_id="$i" "$@" >"$logs/process_$i.log" 2>&1 &
  pids+=("$!")
done
# Stop all processes if this script is interrupted; a dead peer would leave the others hanging.
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
rc=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "[terrafm] process $i failed; log: $logs/process_$i.log" >&2
    tail -n 20 "$logs/process_$i.log" >&2 || true
    rc=1
  fi
done
exit "$rc"
