#!/usr/bin/env bash
# The main job: create/refresh .venv (pinned requirements.txt), then run the pipeline end to end on natural photos
# shipped inside scikit-image (no downloads). Options go to scripts/quickstart.py (--out DIR, --hr DIR, ...).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh"
cd "$root"
exec "$root/.venv/bin/python" scripts/quickstart.py "$@"
