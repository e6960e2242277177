#!/usr/bin/env bash
# One entry point that sets up everything on a fresh machine, then runs a job.
#   bash launch/run.sh train [--flags...]   short CPU pretraining on the built-in synthetic data
#   bash launch/run.sh test  [pytest args]  the whole test suite (TERRAFM_TEST_WORKERS=2 xdist workers)
# The virtual environment lives in $TERRAFM_VENV (default: .venv in the repository root) and is
# (re)installed whenever setup.py changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${TERRAFM_VENV:-$root/.venv}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[terrafm] creating virtual environment in $venv" >&2
  "$python_bin" -m venv "$venv"
fi
stamp="$venv/.terrafm-installed"
want="$(sha256sum setup.py | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[terrafm] installing terrafm-jax and its dependencies into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch first and exactly: the CPU wheel on this platform; anything looser pulls a CUDA build.
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  "$venv/bin/python" -m pip install --quiet -e ".[torch,test]"
  # The GEO-Bench tests write their fixtures with the real `geobench` package; its metadata pins
  # pandas<2 (a downgrade that breaks numpy 2), while the modules used need only h5py, numpy,
  # rasterio, scipy and tqdm, all installed above.
  "$venv/bin/python" -m pip install --quiet --no-deps "geobench==1.0.0"
  echo "$want" > "$stamp"
fi

job="${1:-}"
shift || true
case "$job" in
  train)
    exec "$venv/bin/python" -m terrafm_jax.train --config=configs/smoke.py \
      --workdir="${TERRAFM_WORKDIR:-$root/workdirs/smoke}" "$@"
    ;;
  test)
    set +e
    # Two xdist workers: most tests are bound by single-threaded XLA compilation. One test at a
    # time per worker, longest first (tests/conftest.py), so that both finish together.
    "$venv/bin/python" -m pytest -q -n "${TERRAFM_TEST_WORKERS:-2}" --maxschedchunk=1 "$@"
    rc=$?
    # pytest exits 5 when it collected no test (e.g. a -k filter); that is not a failure.
    if [ "$rc" -eq 5 ]; then rc=0; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash launch/run.sh {train|test} [args...]" >&2
    exit 2
    ;;
esac
