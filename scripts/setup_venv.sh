#!/usr/bin/env bash
# Create .venv/ in the repository root with the pinned requirements.txt, or refresh it when it is stale
# (requirements.txt or pyproject.toml changed since the last install), or rebuild it when it was made for another
# folder: a checkout copied with `cp -a` (or moved) keeps a .venv whose editable install and script shebangs point at
# the original, so it would run the original's code, or nothing once that is moved away. Idempotent and quiet when
# up to date. Uses uv when it can (41 s for the whole stack with an empty package cache, 10-15 s with a warm one),
# plain pip otherwise.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
venv="$root/.venv"
stamp="$venv/.installed-requirements.sha256"
want=$(cat "$root/requirements.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)

# The folder the venv's `import pipeline` comes from (empty when it imports nothing), asked from outside the checkout
# (-I: neither the current folder nor PYTHONPATH on sys.path), without running the package.
installed_from() {
  (cd / && "$venv/bin/python" -I -c 'import importlib.util as u, os
s = u.find_spec("pipeline")
print(os.path.dirname(os.path.dirname(os.path.realpath(s.origin))) if s and s.origin else "")' 2>/dev/null) || true
}

# Byte-compile the installed packages once. Where PYTHONDONTWRITEBYTECODE=1 (this project's reference machine sets it)
# Python never writes .pyc files itself, so every process would compile torch, spandrel, diffusers ... from source
# again: ~5 s per start (measured: test collection 20.6 s -> 11.3 s, `scripts/test.sh --fast` 71 s -> 56 s).
# compileall writes them explicitly (~30 s, once per install); a few packages ship deliberately broken test files,
# hence the ignored exit status.
compiled="$venv/.compiled-bytecode.sha256"
compile_venv() {
  [ -f "$compiled" ] && [ "$(cat "$compiled")" = "$want" ] && return 0
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "setup_venv: byte-compiling $site (once per install) ..."
  "$venv/bin/python" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
  echo "$want" > "$compiled"
}

clear=""
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  from=$(installed_from)
  if [ "$from" = "$root" ]; then compile_venv; exit 0; fi
  echo "setup_venv: $venv imports the package from ${from:-nowhere} (a copied or moved checkout?);" \
    "rebuilding it for $root"
  clear=1
elif [ -e "$venv/pyvenv.cfg" ] && [ "$(installed_from)" != "$root" ]; then
  clear=1  # stale and made for another folder: its scripts' shebangs name the other venv, so start afresh
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py=$cand; break; fi
  done
fi
[ -n "$py" ] || { echo "setup_venv: no python3 found (Python >= 3.11 is required)" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup_venv: $py is $("$py" --version 2>&1); Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }

start=$(date +%s)
echo "setup_venv: installing the pinned requirements into $venv (first run takes a few minutes) ..."
if command -v uv >/dev/null 2>&1 || "$py" -m pip install --quiet uv >/dev/null 2>&1; then
  uv_cmd="uv"; command -v uv >/dev/null 2>&1 || uv_cmd="$py -m uv"
  keep=--allow-existing; [ -z "$clear" ] || keep=--clear
  $uv_cmd venv --quiet "$keep" --python "$py" "$venv"
  VIRTUAL_ENV="$venv" $uv_cmd pip install --quiet -r "$root/requirements.txt"
  VIRTUAL_ENV="$venv" $uv_cmd pip install --quiet --no-deps -e "$root"
else
  "$py" -m venv ${clear:+--clear} "$venv"
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt"
  "$venv/bin/python" -m pip install --quiet --no-deps -e "$root"
fi
echo "$want" > "$stamp"
rm -f "$compiled"
compile_venv
echo "setup_venv: done in $(( $(date +%s) - start )) s"
