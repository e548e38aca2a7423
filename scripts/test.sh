#!/usr/bin/env bash
# The test command: create/refresh .venv (scripts/setup_venv.sh), then run pytest. Extra arguments go to pytest;
# --fast (anywhere among them) becomes -m "not slow": everything but the tests marked slow (pytest.ini).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh"
cd "$root"
args=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m "not slow"); else args+=("$a"); fi
done
start=$(date +%s)
set +e
"$root/.venv/bin/python" -m pytest ${args[@]+"${args[@]}"}
rc=$?
set -e
echo "test.sh: pytest finished in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
