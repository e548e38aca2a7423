#!/usr/bin/env bash
# The test command: create/refresh .venv (scripts/setup_venv.sh), then run pytest. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh"
cd "$root"
start=$(date +%s)
set +e
"$root/.venv/bin/python" -m pytest "$@"
rc=$?
set -e
echo "test.sh: pytest finished in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
