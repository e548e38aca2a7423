#!/usr/bin/env bash
# The test command: create/refresh .venv (scripts/setup_venv.sh), then run pytest. Extra arguments go to pytest;
# --fast (anywhere among them) becomes -m "not slow": everything but the tests marked slow (pytest.ini). The suite
# runs in two processes (pytest-xdist, -n 2: one per core of the reference machine) unless the arguments choose
# (-n N, or -p no:xdist for one process).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh"
cd "$root"
args=()
workers=(-n 2)
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m "not slow"); else args+=("$a"); fi
  case "$a" in -n|-n*|--numprocesses*|no:xdist) workers=() ;; esac
done
args=(${workers[@]+"${workers[@]}"} ${args[@]+"${args[@]}"})
# the project's own modules as bytecode too (only what changed since the last run is compiled: see setup_venv.sh)
"$root/.venv/bin/python" -m compileall -q -j 0 pipeline experts cache scripts tests train.py >/dev/null 2>&1 || true
start=$(date +%s)
set +e
"$root/.venv/bin/python" -m pytest ${args[@]+"${args[@]}"}
rc=$?
set -e
echo "test.sh: pytest finished in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
